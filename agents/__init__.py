"""Agents for matchenv: the recurrent search agent, its training pieces and the baseline matchers.

- :mod:`matchenv.agents.siamese`: the siamese CNN and its SB3 features extractor (similarity map with an overview);
- :mod:`matchenv.agents.policy`: ``SearchLstmPolicy`` (LSTM actor-critic, contrastive match head, optional ``PointerHead``);
- :mod:`matchenv.agents.ppo`: ``SearchRecurrentPPO`` (RecurrentPPO with the contrastive loss in the same step);
- :mod:`matchenv.agents.imitation`, :mod:`matchenv.agents.teacher`, :mod:`matchenv.agents.rollout`: the DAgger warm start;
- :mod:`matchenv.agents.searcher`, :mod:`matchenv.agents.search_step`, :mod:`matchenv.agents.policy_runtime`,
  :mod:`matchenv.agents.exported_module`, :mod:`matchenv.agents.onnx_export`, :mod:`matchenv.agents.cnn_runtime`,
  :mod:`matchenv.agents.fused_search`:
  ``TemplateSearcher``, the inference API, and its CPU fast path;
- :mod:`matchenv.agents.coarse_to_fine`: ``CoarseToFineSearcher``, a trained coarse look then the agent on a crop
  (large references);
- :mod:`matchenv.agents.multiscale_look`: ``LookSearcher``, a learned multi-scale look for photographs (SiamFC-style
  correlation over a scale pyramid; not a sequential search);
- :mod:`matchenv.agents.look_agent`: ``LookAgentSearcher``, the photograph agent: the look's first look, then a
  recurrent policy places a few windows, each compared with the query, and answers with the last;
- :mod:`matchenv.agents.photo_search`, :mod:`matchenv.agents.photo_search_net`, :mod:`matchenv.agents.efficientnet_lite`:
  ``PhotoSearcher``, the photograph search for real pairs: a first look with ImageNet-initialised
  features, then windows compared by a verifier, chosen by a recurrent policy;
- :mod:`matchenv.agents.pretrained`: the shipped agents (``TemplateSearcher.from_pretrained(name)``), proposers, looks
  and photograph agents;
- :mod:`matchenv.agents.baselines`: classic matchers (NCC/SSD, MTM, BBS, DDIS, QATM, exhaustive embedding);
- :mod:`matchenv.agents.rllib_agent`: the agent as a Ray RLlib module and learner (the ``rllib`` extra;
  ``train/rllib_ppo.py``).
"""

from matchenv.agents.policy import PointerHead, SearchLstmPolicy
from matchenv.agents.ppo import SearchRecurrentPPO
from matchenv.agents.look_agent import LookAgentSearcher
from matchenv.agents.multiscale_look import LookSearcher
from matchenv.agents.photo_search import PhotoSearcher
from matchenv.agents.searcher import SearchResult, TemplateSearcher
from matchenv.agents.siamese import SearchFeaturesExtractor, SiameseCNN

__all__ = [
    "LookAgentSearcher",
    "LookSearcher",
    "PhotoSearcher",
    "PointerHead",
    "SearchFeaturesExtractor",
    "SearchLstmPolicy",
    "SearchRecurrentPPO",
    "SearchResult",
    "SiameseCNN",
    "TemplateSearcher",
]

"""Agents for matchenv: the recurrent search agent, its training pieces and the baseline matchers.

- :mod:`agents.siamese`: the siamese CNN and its SB3 features extractor (similarity map with an overview);
- :mod:`agents.policy`: ``SearchLstmPolicy`` (LSTM actor-critic, contrastive match head, optional ``PointerHead``);
- :mod:`agents.ppo`: ``SearchRecurrentPPO`` (RecurrentPPO with the contrastive loss in the same step);
- :mod:`agents.imitation`, :mod:`agents.teacher`, :mod:`agents.rollout`: the DAgger warm start;
- :mod:`agents.searcher`, :mod:`agents.numpy_step`, :mod:`agents.cnn_runtime`, :mod:`agents.fused_search`:
  ``TemplateSearcher``, the inference API, and its CPU fast path;
- :mod:`agents.coarse_to_fine`: ``CoarseToFineSearcher``, a trained coarse look then the agent on a crop
  (large references);
- :mod:`agents.multiscale_look`: ``LookSearcher``, a learned multi-scale look for photographs (SiamFC-style
  correlation over a scale pyramid; not a sequential search);
- :mod:`agents.look_agent`: ``LookAgentSearcher``, the photograph agent: the look's first look, then a
  recurrent policy places a few windows, each compared with the query, and answers with the last;
- :mod:`agents.photo_search`, :mod:`agents.photo_search_net`, :mod:`agents.efficientnet_lite`:
  ``PhotoSearcher``, the photograph search for real pairs: a first look with ImageNet-initialised
  features, then windows compared by a verifier, chosen by a recurrent policy;
- :mod:`agents.pretrained`: the shipped agents (``TemplateSearcher.from_pretrained(name)``), proposers, looks
  and photograph agents;
- :mod:`agents.baselines`: classic matchers (NCC/SSD, MTM, BBS, DDIS, QATM, exhaustive embedding).
"""

from agents.policy import PointerHead, SearchLstmPolicy
from agents.ppo import SearchRecurrentPPO
from agents.look_agent import LookAgentSearcher
from agents.multiscale_look import LookSearcher
from agents.photo_search import PhotoSearcher
from agents.searcher import SearchResult, TemplateSearcher
from agents.siamese import SearchFeaturesExtractor, SiameseCNN

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

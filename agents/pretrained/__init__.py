"""Agents shipped with matchenv (small files in this folder) and how each was made.

    from matchenv.agents.searcher import TemplateSearcher

    searcher = TemplateSearcher.from_pretrained("flickrlogos27")

Each entry names the file, what the agent was trained on, and the command that reproduces it;
a photograph agent may also name a box refiner file (``agents/box_refiner.py``) and its command,
which ``from_pretrained`` applies to the agent's answers unless ``refine=False``.
The files are inference exports of ``train/ppo_lstm.py`` checkpoints (:func:`export_for_inference`:
the optimizer state is dropped, which makes them ~4x smaller; they load like any checkpoint).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class PretrainedAgent:
    """A shipped agent: its file in this folder, what it is for, how it was trained, and the dataset
    (name and keyword arguments) whose fixed test split ``train/evaluate_agents.py`` scores it on;
    for photograph agents, optionally the box refiner (``agents/box_refiner.py``) that
    ``TemplateSearcher.from_pretrained`` applies to its answers by default, and how it was trained."""

    filename: str
    description: str
    command: str
    dataset: str
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    refiner: Optional[str] = None
    refiner_command: Optional[str] = None


#: Name -> shipped agent. ``TemplateSearcher.from_pretrained(name)`` loads one.
PRETRAINED: dict[str, PretrainedAgent] = {
    "translated-mnist": PretrainedAgent(
        "translated_mnist.zip",
        "Noisy MNIST digits (28x28 queries, grayscale), trained on Translated MNIST (60x60 canvases, bundled subset)",
        "python train/ppo_lstm.py --env-id TemplateSearch-TranslatedMNIST-v0 --threads 1",
        "TranslatedMNIST",
    ),
    "cluttered-mnist": PretrainedAgent(
        "cluttered_mnist.zip",
        "Noisy MNIST digits (28x28 queries, grayscale), trained on Cluttered MNIST with full MNIST "
        "(the default recipe: imitation + PPO, contrastive head; made by train/ablation.py's imitation+RL row)",
        "MATCHENV_DATA=<folder with the MNIST IDX files> python train/ppo_lstm.py --env-id TemplateSearch-ClutteredMNIST-v0 "
        "--threads 1 --eval-every 200000",
        "ClutteredMNIST",
    ),
    "mixed-mnist": PretrainedAgent(
        "mixed_mnist.zip",
        "Noisy MNIST digits among digits of other classes (28x28 queries, 100x100 references, grayscale): "
        "overview + pointer head, trained on Mixed MNIST with full MNIST (imitation only: PPO did not help here)",
        "MATCHENV_DATA=<folder with the MNIST IDX files> python train/ppo_lstm.py --env-id TemplateSearch-MixedMNIST-v0 "
        "--overview-size 100 --pointer --imitation-steps 2000000 --imitation-lr-final 0.1 --no-ppo --threads 1 "
        "--eval-every 250000",
        "MixedMNIST",
    ),
    "flickrlogos27": PretrainedAgent(
        "flickrlogos27.zip",
        "logos in photographs (colour, any query size), trained on FlickrLogos-27's training split",
        "python train/ppo_lstm.py --dataset FlickrLogos27 --imitation-lr-final 0.1 "
        "--ppo-timesteps 100000",
        "FlickrLogos27",
        refiner="flickrlogos27_refiner.pt",
        refiner_command="python train/box_refiner.py",
    ),
}


@dataclass(frozen=True)
class PretrainedProposer:
    """A shipped coarse look for :class:`~matchenv.agents.coarse_to_fine.CoarseToFineSearcher`: its file
    in this folder (which names the shipped agent it feeds), what it is for, how it was trained,
    and how the searcher uses it by default: how many of its best cells the agent searches
    (``candidates``), the similarity at which the first search's answer is accepted without
    searching the others (``accept``) and the agent whose CNN measures it (``verifier``, a
    ``TemplateSearcher.from_spec`` spec; ``None``: the proposer's own agent); chosen on test
    pairs the benchmark does not use (README "References with look-alikes")."""

    filename: str
    description: str
    command: str
    candidates: int = 1
    accept: Optional[float] = None
    verifier: Optional[str] = None


#: Name -> shipped proposer. ``CoarseToFineSearcher.from_pretrained(name)`` loads it with its agent.
PROPOSERS: dict[str, PretrainedProposer] = {
    "cluttered-mnist": PretrainedProposer(
        "cluttered_mnist_proposer.pt",
        "Cluttered MNIST references of any size (clutter at the training density, 8 fragments per "
        "100x100 px): the coarse look for the shipped 'cluttered-mnist' agent, which searches a 100x100 crop",
        "MATCHENV_DATA=<folder with the MNIST IDX files> python train/coarse_proposer.py",
        # Chosen on Cluttered MNIST canvases 1000-1299 of the test split (the benchmark uses the
        # first 200): at 1000x1000, 0.83 with 1 candidate, 0.92 with 4, 0.93 accepting a first
        # answer of similarity >= 0.8 (73% of the queries stop there); 0.82 at 2000x2000 (0.67).
        # The Cluttered agent's own features barely tell digits apart (two candidates ranked by
        # them: 0.64 at 1000x1000), the Mixed MNIST agent's do.
        candidates=4,
        accept=0.8,
        verifier="pretrained:mixed-mnist",
    ),
    "mixed-mnist": PretrainedProposer(
        "mixed_mnist_proposer.pt",
        "Mixed MNIST references of any size with look-alikes (a whole digit of every other class, clutter at "
        "4 fragments per 100x100 px): a query-aware coarse look (32 channels) for the shipped 'mixed-mnist' "
        "agent, which searches a 100x100 crop",
        "MATCHENV_DATA=<folder with the MNIST IDX files> python train/coarse_proposer.py --dataset MixedMNIST "
        "--clutter-density 4 --dataset-kwargs '{\"n_distractors\": [9, 9]}' --query-side 14 --width 32 "
        "--fine pretrained:mixed-mnist --threads 1",
        # Chosen on Mixed MNIST canvases 1000-1299 of the test split (the benchmark uses the first
        # 200): at 1000x1000, success 0.82 with 1 candidate, 0.94 with 4 (+0.01 more for 5 or 6);
        # accepting a first answer of similarity >= 0.9 skips the other three searches for 71% of
        # the queries at 0.933 (0.937 searching all four).
        candidates=4,
        accept=0.9,
    ),
}


@dataclass(frozen=True)
class PretrainedLook:
    """A shipped learned multi-scale look (:class:`~matchenv.agents.multiscale_look.LookSearcher`) or
    photograph agent (:class:`~matchenv.agents.look_agent.LookAgentSearcher`): its file in this folder,
    what it is for, how it was trained."""

    filename: str
    description: str
    command: str


#: Name -> shipped look. ``LookSearcher.from_pretrained(name)`` loads one.
LOOKS: dict[str, PretrainedLook] = {
    "photo": PretrainedLook(
        "photo_look.pt",
        "any query crop in any photograph (colour; targets 0.125-0.8 of the reference's shorter side): "
        "trained without labels on self-supervised pairs of FlickrLogos-27's training photographs",
        "python train/multiscale_look.py",
    ),
}


#: Name -> shipped photograph agent (a sequential search on a learned look, agents/look_agent.py).
#: ``LookAgentSearcher.from_pretrained(name)`` loads one; the file holds its look too.
LOOK_AGENTS: dict[str, PretrainedLook] = {
    "photo": PretrainedLook(
        "photo_agent.pt",
        "any query crop in any photograph (colour; targets 0.125-0.8 of the reference's shorter side): the "
        "'photo' look's first look, then up to 6 windows chosen by a recurrent policy trained on self-supervised "
        "pairs of FlickrLogos-27's training photographs (imitation, then policy gradient on the success reward)",
        "python train/look_agent.py",
    ),
}


#: Name -> shipped photograph searcher (agents/photo_search.py: a first look with ImageNet-initialised
#: features, then windows compared by a verifier). ``PhotoSearcher.from_pretrained(name)`` loads one.
PHOTO_SEARCHERS: dict[str, PretrainedLook] = {
    "photo": PretrainedLook(
        "photo_search.pt",
        "a template cut from one photograph found in another photograph of the same scene (colour; the "
        "target about the template's size): trained without labels on two-view pairs of BSDS500's and "
        "FlickrLogos-27's training photographs, checkpoints chosen on KTM's real pairs",
        "python train/photo_search.py --images <BSDS500 folder>/images --seed 1",
    ),
}


#: Agent names users may expect from ``TemplateSearcher.from_pretrained`` but that live elsewhere, and why.
NOT_SHIPPED: dict[str, str] = {
    "photo": "the photograph searcher is not a TemplateSearcher agent: it compares windows with ImageNet-initialised "
    "features (a pixel-level siamese CNN trained from scratch by self-supervised reinforcement learning did not learn "
    "to localise, about 0.01 test success). Load it with matchenv.agents.photo_search.PhotoSearcher.from_pretrained('photo'); "
    "for logos use 'flickrlogos27'",
}


def _shipped_file(kind: str, name: str, registry: dict) -> Path:
    """The file of the shipped ``kind`` ("agent", "proposer", "look") ``name`` from ``registry``, with the
    errors both lookups share."""
    if name not in registry:
        raise ValueError(f"no pretrained {kind} {name!r}; shipped: {', '.join(sorted(registry)) or 'none'}")
    path = HERE / registry[name].filename
    if not path.is_file():
        raise FileNotFoundError(f"the pretrained {kind} file {path} is missing: reinstall matchenv, or retrain with "
                                f"`{registry[name].command}`")
    return path


def pretrained_path(name: str) -> Path:
    """The checkpoint file of the shipped agent ``name``.

    :raises ValueError: for an unknown name (the message lists the shipped ones).
    :raises FileNotFoundError: if the file is missing from this installation.
    """
    if name in NOT_SHIPPED:
        raise ValueError(NOT_SHIPPED[name])
    return _shipped_file("agent", name, PRETRAINED)


def refiner_path(name: str) -> Optional[Path]:
    """The box refiner file shipped with the agent ``name``, or ``None`` if it has none.

    :raises ValueError: for an unknown name. :raises FileNotFoundError: if the file is missing.
    """
    pretrained_path(name)  # the errors for unknown names
    agent = PRETRAINED[name]
    if agent.refiner is None:
        return None
    path = HERE / agent.refiner
    if not path.is_file():
        raise FileNotFoundError(f"the box refiner file {path} of the pretrained agent {name!r} is missing: reinstall "
                                f"matchenv, retrain it with `{agent.refiner_command}`, or pass refine=False")
    return path


def proposer_path(name: str) -> Path:
    """The file of the shipped proposer ``name`` (see :data:`PROPOSERS`).

    :raises ValueError: for an unknown name (the message lists the shipped ones).
    :raises FileNotFoundError: if the file is missing from this installation.
    """
    return _shipped_file("proposer", name, PROPOSERS)


def look_path(name: str) -> Path:
    """The file of the shipped look ``name`` (see :data:`LOOKS`).

    :raises ValueError: for an unknown name (the message lists the shipped ones).
    :raises FileNotFoundError: if the file is missing from this installation.
    """
    return _shipped_file("look", name, LOOKS)


def look_agent_path(name: str) -> Path:
    """The file of the shipped photograph agent ``name`` (see :data:`LOOK_AGENTS`).

    :raises ValueError: for an unknown name (the message lists the shipped ones).
    :raises FileNotFoundError: if the file is missing from this installation.
    """
    return _shipped_file("photograph agent", name, LOOK_AGENTS)


def photo_search_path(name: str) -> Path:
    """The file of the shipped photograph searcher ``name`` (see :data:`PHOTO_SEARCHERS`).

    :raises ValueError: for an unknown name (the message lists the shipped ones).
    :raises FileNotFoundError: if the file is missing from this installation.
    """
    return _shipped_file("photograph searcher", name, PHOTO_SEARCHERS)


def export_for_inference(checkpoint: Union[str, "os.PathLike[str]"], out: Union[str, "os.PathLike[str]"]) -> Path:
    """Write ``checkpoint`` without its optimizer state (what inference and fine-tuning do not need).

    The result loads with ``SearchRecurrentPPO.load`` / ``TemplateSearcher.load`` as usual; training
    it further starts the optimizer afresh.
    """
    from matchenv.agents.ppo import load_trained_model

    model = load_trained_model(checkpoint)
    policy = model.policy
    # A fresh optimizer has no moment buffers: only the hyperparameters are saved.
    policy.optimizer = policy.optimizer_class(policy.parameters(), lr=model.lr_schedule(1), **policy.optimizer_kwargs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    return out

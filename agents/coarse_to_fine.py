"""Search references much larger than an agent was trained on: a coarse first look, then the agent.

    searcher = CoarseToFineSearcher.from_pretrained("cluttered-mnist")
    result = searcher.locate(query, reference)     # e.g. a 2000x2000 reference, a 28x28 query
    x0, y0, x1, y1 = result.box                    # pixels of the reference as given

A fixed-size agent looks at the whole reference shrunk to its 28x28 global view: on a 100x100
canvas a digit is still 8 pixels there, on a 1000x1000 one less than a pixel, and the search has
nothing to go on. The coarse-to-fine searcher splits the work:

1. **coarse look** (:class:`CoarseProposer`): the reference shrunk ``shrink`` times (the
   shipped one: 4x, a 28x28 digit becomes 7 pixels) goes through a small fully convolutional
   network that gives one logit per cell of ``shrink * stride`` reference pixels (16): where the
   target most probably is. Its cost grows with the reference's area, but the network is
   evaluated once per cell, 256x fewer times than there are reference pixels;
2. **fine search**: a crop of the agent's training canvas size (``crop_size``), centred on the
   best cell, searched by the trained agent exactly as on its training data; the answer is mapped
   back to reference pixels. With ``candidates=k`` the agent searches crops around the look's
   ``k`` best cells (at least half a crop apart; one batched search) and the searcher answers with
   the search whose final window a CNN finds most like the query (cosine similarity of their
   embeddings, :meth:`~matchenv.agents.searcher.TemplateSearcher.window_similarity`; the agent's own CNN,
   or a ``verifier`` agent's where the agent's features do not tell targets apart): the look's
   second or third guess is often right where its first is a look-alike.

A reference no larger than ``crop_size`` goes straight to the agent: on its own canvases the
searcher is the agent. The proposer is trained by supervised learning on shrunk large canvases
(``train/coarse_proposer.py``). The shipped Cluttered MNIST one does not see the query: it finds
*target-like* objects (there: the one whole digit among fragments) and leaves matching to the
agent. A **query-aware** proposer (``query_side > 0``) also reads the
query, shrunk, and prefers the cells that look like it, for references with look-alikes (on
Mixed MNIST: a whole digit of every other class besides the target). Both shipped searchers try
four candidates by default (:data:`matchenv.agents.pretrained.PROPOSERS` has the choices): the Cluttered
one ranks them with the Mixed MNIST agent's CNN, since its own agent's features barely tell a
digit from a clump of fragments.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from matchenv.agents.model_files import read_model_file, write_model_file
from matchenv.agents.searcher import MIN_QUERY_SIDE, SearchResult, TemplateSearcher
from matchenv.geometry import resize_image


class CoarseProposer(nn.Module):
    """Where in a large reference the target probably is.

    Convolutions on the reference shrunk ``shrink`` times -- ``kernel`` x ``kernel`` with stride
    ``stride``, then ``depth`` 3x3, then 1x1 to one channel, ReLU between -- give one logit per
    output cell, each cell ``shrink * stride`` reference pixels wide. The strided first layer
    reads the shrunk image at full resolution but is evaluated only once per cell, which is what
    keeps the look cheap.

    :param channels: image channels (1 grayscale, 3 colour).
    :param width: channels of the hidden layers.
    :param shrink: how many times smaller than the reference the network's input is.
    :param depth: 3x3 layers after the first convolution.
    :param kernel: side of the first convolution's kernel (input pixels).
    :param stride: its stride (input pixels per cell).
    :param separable: each 3x3 layer as a depthwise 3x3 then a 1x1 (about 1/4 of its
        multiply-adds at 8 channels).
    :param query_side: ``0``: the look does not see the query (it finds *target-like* objects).
        Otherwise it is **query-aware**: the query, shrunk to ``query_side`` x ``query_side``,
        goes through a small MLP (:attr:`query_net`) that gives one weight per hidden channel,
        and each cell's logit gains the dot product of its hidden features with those weights
        (a 1x1 convolution whose weights the query chooses), so that among several
        target-like objects it can prefer the one that looks like the query.
    """

    def __init__(self, channels: int = 1, width: int = 8, shrink: int = 4, depth: int = 1, kernel: int = 8,
                 stride: int = 4, separable: bool = False, query_side: int = 0) -> None:
        super().__init__()
        if (channels not in (1, 3) or width < 1 or shrink < 1 or depth < 0 or stride < 1 or kernel < stride
                or query_side < 0):
            raise ValueError("CoarseProposer needs channels 1 or 3, width >= 1, shrink >= 1, depth >= 0, stride >= 1, "
                             f"kernel >= stride and query_side >= 0; got {channels}, {width}, {shrink}, {depth}, "
                             f"{kernel}, {stride}, {query_side}")
        self.channels, self.width, self.shrink, self.depth = int(channels), int(width), int(shrink), int(depth)
        self.kernel, self.stride, self.padding = int(kernel), int(stride), (int(kernel) - 1) // 2
        self.separable = bool(separable)
        self.query_side = int(query_side)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, kernel, stride=stride, padding=self.padding), nn.ReLU()]
        for _ in range(depth):
            if self.separable:
                layers += [nn.Conv2d(width, width, 3, padding=1, groups=width), nn.Conv2d(width, width, 1), nn.ReLU()]
            else:
                layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Conv2d(width, 1, 1))
        self.query_net: Optional[nn.Module] = None
        if self.query_side:
            self.query_net = nn.Sequential(nn.Flatten(), nn.Linear(channels * self.query_side ** 2, 64), nn.ReLU(),
                                           nn.Linear(64, width))

    @property
    def query_aware(self) -> bool:
        """Whether the look takes the query (``query_side > 0``)."""
        return self.query_net is not None

    def forward(self, images: torch.Tensor, queries: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:param images: ``(N, C, h, w)`` float pixels in [0, 1], the shrunk references.
        :param queries: ``(N, C, query_side, query_side)`` float pixels in [0, 1], the shrunk
            queries (:meth:`shrunk_query_pixels` in [0, 1]); only for a query-aware look, which needs them.
        :return: ``(N, h', w')`` logits, one per cell: ``h' = (h + 2 p - kernel) // stride + 1``
            with ``p = (kernel - 1) // 2``."""
        hidden = self.net[:-1](images)
        logits = self.net[-1](hidden)[:, 0]
        if self.query_net is None:
            return logits
        if queries is None:
            raise ValueError("this coarse look is query-aware: pass the shrunk queries too")
        weights = self.query_net(queries)  # (N, width): the query's 1x1 convolution
        return logits + (hidden * weights[:, :, None, None]).sum(1)

    @property
    def config(self) -> dict[str, int]:
        return {"channels": self.channels, "width": self.width, "shrink": self.shrink, "depth": self.depth,
                "kernel": self.kernel, "stride": self.stride, "separable": self.separable, "query_side": self.query_side}

    def input_size(self, image_shape: Sequence[int]) -> tuple[int, int]:
        """``(h, w)`` of the network's input for a reference of ``image_shape`` ``(H, W, ...)``."""
        return max(1, round(image_shape[0] / self.shrink)), max(1, round(image_shape[1] / self.shrink))

    def shrunk_pixels(self, reference: np.ndarray) -> np.ndarray:
        """``(C, h, w)`` uint8: ``reference`` ``(H, W, C)`` uint8 shrunk to the network's input size."""
        small = resize_image(reference, self.input_size(reference.shape))
        if small.ndim == 2:
            small = small[:, :, None]
        return small.transpose(2, 0, 1)

    def shrunk(self, reference: np.ndarray) -> np.ndarray:
        """``(C, h, w)`` float32 in [0, 1]: ``reference`` ``(H, W, C)`` uint8 as the network sees it."""
        return to_unit_range(self.shrunk_pixels(reference))

    def shrunk_query_pixels(self, query: np.ndarray) -> np.ndarray:
        """``(C, s, s)`` uint8: ``query`` ``(h, w, C)`` uint8 shrunk to ``query_side`` (a query-aware look)."""
        small = resize_image(query, (self.query_side, self.query_side))
        if small.ndim == 2:
            small = small[:, :, None]
        return small.transpose(2, 0, 1)

    def cell_centres(self, logit_shape: Sequence[int], input_size: Sequence[int],
                     image_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Reference-pixel centres ``(ys, xs)`` of the cells of a ``logit_shape`` ``(h', w')`` map
        computed on an ``input_size`` ``(h, w)`` shrunk image of a reference of ``image_shape``.

        Cell ``j``'s first convolution covers input pixels ``[j s - p, j s - p + k)`` (stride
        ``s``, padding ``p``, kernel ``k``), centred at ``j s - p + k / 2`` input pixels, i.e.
        that times ``W / w`` reference pixels.
        """
        offset = self.kernel / 2.0 - self.padding
        ys = (self.stride * np.arange(logit_shape[0]) + offset) * (image_shape[0] / input_size[0])
        xs = (self.stride * np.arange(logit_shape[1]) + offset) * (image_shape[1] / input_size[1])
        return ys, xs


def to_unit_range(pixels: Union[np.ndarray, torch.Tensor]) -> Union[np.ndarray, torch.Tensor]:
    """uint8 pixels as float32 in [0, 1] (numpy or torch, the same float32 values either way)."""
    if isinstance(pixels, torch.Tensor):
        return pixels.to(torch.float32) * (1.0 / 255.0)
    return pixels.astype(np.float32) * np.float32(1.0 / 255.0)


def target_cell(proposer: CoarseProposer, box: np.ndarray, logit_shape: Sequence[int], input_size: Sequence[int],
                image_shape: Sequence[int]) -> int:
    """Flat index of ``proposer``'s cell whose centre is nearest the centre of ``box``
    ``(x0, y0, x1, y1)`` (its training label)."""
    ys, xs = proposer.cell_centres(logit_shape, input_size, image_shape)
    cy, cx = (box[1] + box[3]) / 2.0, (box[0] + box[2]) / 2.0
    return int(np.argmin(np.abs(ys - cy))) * len(xs) + int(np.argmin(np.abs(xs - cx)))


class _ProposerRuntime:
    """The proposer for inference: ONNX Runtime when installed (image size left free), else PyTorch."""

    def __init__(self, proposer: CoarseProposer, threads: int) -> None:
        self.proposer = proposer.eval()
        self.session = None
        try:
            from matchenv.agents.onnx_export import onnx_session, onnxruntime_available

            if onnxruntime_available():
                example = (torch.zeros(1, proposer.channels, 32, 32),)
                names, axes = ["images"], {"images": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 1: "gh", 2: "gw"}}
                if proposer.query_aware:
                    side = proposer.query_side
                    example, names = example + (torch.zeros(1, proposer.channels, side, side),), names + ["queries"]
                    axes["queries"] = {0: "n"}
                self.session = onnx_session(proposer, example, names, ["logits"], axes, threads)
        except Exception as err:  # noqa: BLE001  (a speed-up only: PyTorch gives the same logits)
            warnings.warn(f"could not run the coarse look in ONNX Runtime ({err}); using PyTorch", RuntimeWarning,
                          stacklevel=3)
            self.session = None
        self.name = "onnxruntime" if self.session is not None else "torch"

    def __call__(self, images: np.ndarray, queries: Optional[np.ndarray] = None) -> np.ndarray:
        """``(N, C, h, w)`` float32 (and, for a query-aware look, ``(N, C, s, s)`` float32
        queries) -> ``(N, h', w')`` logits."""
        if self.session is not None:
            feed = {"images": images} if queries is None else {"images": images, "queries": queries}
            return self.session.run(None, feed)[0]
        with torch.inference_mode():
            return self.proposer(torch.from_numpy(images), None if queries is None else torch.from_numpy(queries)).numpy()


@dataclass(frozen=True)
class Proposal:
    """The coarse look's answer for one reference.

    :param centre: ``(x, y)`` reference pixels: the best cell's centre.
    :param crop: ``(x0, y0, x1, y1)`` whole-pixel box of the crop the agent searched:
        ``crop_size`` around :attr:`centre`, moved inside the reference.
    """

    centre: tuple[float, float]
    crop: tuple[int, int, int, int]


@dataclass
class CoarseToFineResult(SearchResult):
    """A :class:`~matchenv.agents.searcher.SearchResult` (box, path and scores in reference pixels: those of
    the search that answered) and the coarse look's proposals.

    :param proposal: the crop whose search answered (``None`` when the reference went straight
        to the agent).
    :param proposals: every crop searched, the look's best first (one unless ``candidates > 1``).
    :param similarities: ``(len(proposals),)`` the CNN's cosine similarity of the query and each
        search's final window, what the answer was chosen by; empty where the look had only one
        candidate (``candidates=1``, or no other cell far enough from the best).
    :param windows: windows the agent placed over all its searches of this query.
    """

    proposal: Optional[Proposal] = field(default=None)
    proposals: tuple[Proposal, ...] = field(default=())
    similarities: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    windows: int = 0


def crop_around(centre: tuple[float, float], crop_size: tuple[int, int], image_shape: Sequence[int]) -> tuple[int, int, int, int]:
    """The ``crop_size`` ``(h, w)`` box centred on ``centre`` ``(x, y)``, moved inside the image
    (and cut to it where the image is smaller): whole pixels ``(x0, y0, x1, y1)``."""
    height, width = int(image_shape[0]), int(image_shape[1])
    crop_h, crop_w = min(crop_size[0], height), min(crop_size[1], width)
    # plain Python: np.clip on scalars costs ~10 us a call, a noticeable part of a 1 ms search
    x0 = min(max(int(round(centre[0] - crop_w / 2)), 0), width - crop_w)
    y0 = min(max(int(round(centre[1] - crop_h / 2)), 0), height - crop_h)
    return x0, y0, x0 + crop_w, y0 + crop_h


class CoarseToFineSearcher:
    """A trained agent (:class:`~matchenv.agents.searcher.TemplateSearcher`) on references of any size.

    :param fine: the agent that searches a ``crop_size`` crop.
    :param proposer: the trained coarse look.
    :param crop_size: ``(h, w)`` of the crop the agent searches: the canvas it was trained on.
    :param candidates: how many of the look's best cells the agent searches (crops at least half
        a crop apart); the answer is the search whose final window the agent's CNN finds most like
        the query. 1: the best cell only. More costs one agent search per candidate (batched).
    :param accept: with ``candidates > 1``, the other candidates are searched only where the
        first search's final window has a similarity to the query (cosine of the CNN's
        embeddings) below this; ``None``: always search them all.
    :param verifier: the agent whose CNN compares the candidates' final windows with the query
        (same channels and query size as ``fine``); ``None``: ``fine`` itself. The Cluttered
        MNIST agent, for one, finds *the digit* and its features barely tell digits apart; the
        Mixed MNIST agent's do.
    """

    def __init__(self, fine: TemplateSearcher, proposer: CoarseProposer, crop_size: tuple[int, int],
                 candidates: int = 1, accept: Optional[float] = None, verifier: Optional[TemplateSearcher] = None) -> None:
        if isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)) or candidates < 1:
            raise ValueError(f"candidates must be a whole number >= 1 (1: search the look's best cell only), got {candidates!r}")
        if accept is not None and not -1.0 <= accept <= 1.0:
            raise ValueError(f"accept must be a cosine similarity in [-1, 1] or None (search every candidate), got {accept!r}")
        if proposer.channels != fine.channels:
            raise ValueError(f"the proposer takes {proposer.channels}-channel images but the agent {fine.channels}-channel ones")
        if verifier is not None and (verifier.channels, verifier.query_size) != (fine.channels, fine.query_size):
            raise ValueError(f"the verifier sees {verifier.channels}-channel {verifier.query_size} windows but the agent "
                             f"{fine.channels}-channel {fine.query_size} ones: use a verifier trained on the same kind of images")
        if min(crop_size) < max(fine.query_size):
            raise ValueError(f"crop_size {tuple(crop_size)} is smaller than the agent's query size {fine.query_size}")
        self.fine = fine
        self.proposer = proposer.eval()
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        #: how many of the look's best cells the agent searches
        self.candidates = int(candidates)
        #: the first search's similarity at which the other candidates are not searched (None: never)
        self.accept = None if accept is None else float(accept)
        #: the agent whose CNN ranks the candidates' answers
        self.verifier = fine if verifier is None else verifier
        self._run = _ProposerRuntime(proposer, threads=torch.get_num_threads())
        #: where the proposer runs: "onnxruntime" or "torch"
        self.runtime: str = self._run.name

    @classmethod
    def load(cls, path: Union[str, Path], fine: Optional[TemplateSearcher] = None, candidates: int = 1,
             accept: Optional[float] = None, verifier: Union[TemplateSearcher, str, None] = None,
             **searcher_kwargs) -> "CoarseToFineSearcher":
        """Load a proposer file written by ``train/coarse_proposer.py``; the agent is the one it
        names (a shipped agent's name or a checkpoint path) unless ``fine`` is given.
        ``searcher_kwargs`` go to that agent's :class:`TemplateSearcher`. ``verifier`` may be a
        searcher or a spec (``"pretrained:mixed-mnist"`` or a checkpoint path)."""
        saved = load_proposer_file(path)
        if fine is None:
            fine = TemplateSearcher.from_spec(saved["fine"], **searcher_kwargs)
        proposer = CoarseProposer(**saved["config"])
        proposer.load_state_dict(saved["state_dict"])
        if isinstance(verifier, str):
            verifier = TemplateSearcher.from_spec(verifier)
        return cls(fine, proposer, tuple(saved["crop_size"]), candidates=candidates, accept=accept, verifier=verifier)

    @classmethod
    def from_pretrained(cls, name: str, candidates: Optional[int] = None, accept: Union[float, None, str] = "default",
                        verifier: Union[TemplateSearcher, str, None] = "default", **searcher_kwargs) -> "CoarseToFineSearcher":
        """A shipped proposer and the shipped agent it was trained for: see
        :data:`matchenv.agents.pretrained.PROPOSERS`. ``candidates=None``, ``accept="default"`` and
        ``verifier="default"``: the choices made for that proposer (its entry's ``candidates``,
        ``accept`` and ``verifier``)."""
        from matchenv.agents.pretrained import PROPOSERS, proposer_path

        path = proposer_path(name)  # a clear error for an unknown name
        entry = PROPOSERS[name]
        candidates = entry.candidates if candidates is None else candidates
        if verifier == "default":  # only built where it will be used
            verifier = entry.verifier if candidates > 1 else None
        return cls.load(path, candidates=candidates, accept=entry.accept if accept == "default" else accept,
                        verifier=verifier, **searcher_kwargs)

    # ------------------------------------------------------------------ public API
    def locate(self, query: np.ndarray, reference: np.ndarray) -> CoarseToFineResult:
        """Find ``query`` in ``reference`` (images as for :meth:`TemplateSearcher.locate`).

        :raises ValueError: besides bad images: a query under
            :data:`~matchenv.agents.searcher.MIN_QUERY_SIDE` (4) px a side, a reference smaller than the
            query, or a reference larger than ``crop_size`` but too thin for the coarse look (the
            message says how many pixels a side it needs: 6 for the shipped proposers).
        """
        return self.locate_batch([query], [reference])[0]

    @property
    def query_aware(self) -> bool:
        """Whether the coarse look compares the reference with the query (else it finds target-like objects)."""
        return self.proposer.query_aware

    def propose(self, reference: np.ndarray, query: Optional[np.ndarray] = None) -> Optional[Proposal]:
        """The coarse look alone: where the agent will search in ``reference`` (``(H, W)`` or
        ``(H, W, C)`` uint8, as for :meth:`locate`); ``None`` if the reference is no larger than
        ``crop_size`` (the agent searches all of it). A query-aware look needs the ``query``."""
        reference = self.fine.prepare(reference, "reference")
        proposals = self._proposals(reference, self._query(query), 1)
        return proposals[0] if proposals else None

    def locate_batch(self, queries: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> list[CoarseToFineResult]:
        """:meth:`locate` for many pairs: one coarse look per reference, then batched agent
        searches: of every pair's best crop, then (``candidates > 1``) of the other candidate
        crops of the pairs whose first answer :attr:`accept` did not accept."""
        if len(queries) != len(references):
            raise ValueError(f"got {len(queries)} queries but {len(references)} references: pass one reference per query")
        # Checked here, before the coarse look: a query the agent cannot search for would otherwise
        # fail inside the look's network, or in the agent with the sizes of a crop, not the reference's.
        prepared = [(self.fine.prepare(q, f"query[{i}]", MIN_QUERY_SIDE), self.fine.prepare(r, f"reference[{i}]"))
                    for i, (q, r) in enumerate(zip(queries, references))]
        for i, (query, reference) in enumerate(prepared):
            (qh, qw), (rh, rw) = query.shape[:2], reference.shape[:2]
            if qh > rh or qw > rw:
                raise ValueError(f"pair {i}: the reference ({rw}x{rh} px) is smaller than the query ({qw}x{qh} px); the agent "
                                 "searches for the query at its own size, so it must fit inside the reference: pass a "
                                 "larger reference (or shrink the query and the reference together)")
            if (rh > self.crop_size[0] or rw > self.crop_size[1]) and (qh > self.crop_size[0] or qw > self.crop_size[1]):
                raise ValueError(f"pair {i}: the query ({qw}x{qh} px) is larger than the {self.crop_size[1]}x"
                                 f"{self.crop_size[0]} crop the agent searches; this searcher is for queries of the "
                                 "agent's training size (use the agent alone, or shrink both images)")
        proposals = [self._proposals(reference, self._look_query(query), self.candidates) for query, reference in prepared]
        # searched[i]: (proposal, search, similarity) of every crop searched for pair i
        searched: list[list[tuple]] = [[] for _ in queries]
        first = [(i, found[0] if found else None) for i, found in enumerate(proposals)]
        self._search_crops(first, queries, references, searched, rank=[len(found) > 1 for found in proposals])
        if self.candidates > 1:
            rest = [(i, p) for i, found in enumerate(proposals) if len(found) > 1
                    and (self.accept is None or searched[i][0][2] < self.accept) for p in found[1:]]
            self._search_crops(rest, queries, references, searched, rank=[True] * len(rest))
        results = []
        for i, tried in enumerate(searched):
            similarities = np.array([sim for _, _, sim in tried if sim is not None], dtype=np.float32)
            proposal, answer, _ = tried[int(np.argmax(similarities)) if len(similarities) else 0]
            shift = np.zeros(4) if proposal is None else np.array(proposal.crop[:2] * 2, dtype=np.float64)
            results.append(CoarseToFineResult(box=answer.box + shift, path=answer.path + shift, scores=answer.scores,
                                              proposal=proposal, proposals=tuple(p for p, _, _ in tried if p is not None),
                                              similarities=similarities, windows=sum(len(a.path) for _, a, _ in tried)))
        return results

    def _search_crops(self, crops: list[tuple[int, Optional[Proposal]]], queries: Sequence[np.ndarray],
                      references: Sequence[np.ndarray], searched: list[list[tuple]], rank: list[bool]) -> None:
        """One batched agent search of ``crops`` (pair index and proposal; ``None``: the whole
        reference), appended to ``searched[pair]`` as ``(proposal, search, similarity)``; the
        similarity of the final window and the query is computed where ``rank`` says (else ``None``)."""
        if not crops:
            return
        # Crops of the images as given: the agent converts them itself (converting twice would,
        # for instance, swap BGR channels back).
        images = [references[i] if p is None else references[i][p.crop[1]:p.crop[3], p.crop[0]:p.crop[2]]
                  for i, p in crops]
        search_queries = [queries[i] for i, _ in crops]
        found = self.fine.locate_batch(search_queries, images)
        similarity: list[Optional[float]] = [None] * len(crops)
        ranked = np.flatnonzero(rank)
        if len(ranked):
            values = self.verifier.window_similarity([search_queries[k] for k in ranked], [images[k] for k in ranked],
                                                     np.array([found[k].box for k in ranked]))
            for k, value in zip(ranked, values):
                similarity[k] = float(value)
        for (i, proposal), search, sim in zip(crops, found, similarity):
            searched[i].append((proposal, search, sim))

    def cell_logits(self, reference: np.ndarray, query: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The coarse look's ``(h', w')`` logits over the cells of ``reference`` (any size, as for
        :meth:`locate`) and the cells' centres ``(ys, xs)`` in reference pixels (for pictures and
        diagnostics; a softmax over all cells gives where it thinks the target is). A query-aware
        look needs the ``query``."""
        return self._cell_logits(self.fine.prepare(reference, "reference"), self._query(query))

    def _query(self, query: Optional[np.ndarray], name: str = "query") -> Optional[np.ndarray]:
        """``(1, C, s, s)`` float32: the query as a query-aware look takes it (``None`` for a look
        that does not take one)."""
        if not self.query_aware:
            return None
        if query is None:
            raise ValueError("this coarse look is query-aware (it compares the reference with the query): pass the query")
        return self._look_query(self.fine.prepare(query, name, MIN_QUERY_SIDE))

    def _look_query(self, query: np.ndarray) -> Optional[np.ndarray]:
        """:meth:`_query` of a query the agent has prepared (``(h, w, C)`` uint8)."""
        if not self.query_aware:
            return None
        return to_unit_range(self.proposer.shrunk_query_pixels(query))[None]

    def _cell_logits(self, reference: np.ndarray, query: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self._check_thick_enough(reference)
        image = self.proposer.shrunk(reference)
        logits = self._run(image[None], query)[0]
        return (logits, *self.proposer.cell_centres(logits.shape, image.shape[1:], reference.shape))

    def _check_thick_enough(self, reference: np.ndarray) -> None:
        """Raise a clear ``ValueError`` for a reference too thin for the coarse look: shrunk
        ``shrink`` times, it must still cover the first convolution's kernel (with its padding),
        else the network has no cell to give (a 5x2000 strip is 1 pixel high there)."""
        proposer = self.proposer
        need = proposer.kernel - 2 * proposer.padding  # input pixels the first convolution needs, each way
        if min(proposer.input_size(reference.shape)) >= need:
            return
        # the smallest reference side that shrinks to `need` pixels (input_size rounds)
        side = next(h for h in range(1, need * proposer.shrink + 2) if proposer.input_size((h, h))[0] >= need)
        height, width = reference.shape[:2]
        raise ValueError(f"the reference ({width}x{height} px) is too thin for the coarse look: it shrinks references "
                         f"{proposer.shrink} times and needs at least {side} px on each side; pad the reference to "
                         f"{side} px or more (e.g. cv2.copyMakeBorder), or search it with the agent alone "
                         "(TemplateSearcher)")

    def _proposals(self, reference: np.ndarray, query: Optional[np.ndarray], count: int) -> list[Proposal]:
        """Crops around the look's ``count`` best cells, best first, each centre at least half a
        crop (in x or y) from every better one's: the same target is not searched twice. Empty
        if the reference is no larger than ``crop_size`` (the agent searches all of it).

        :param query: ``(1, C, s, s)`` from :meth:`_query` (a query-aware look), else ``None``.
        """
        height, width = reference.shape[:2]
        if height <= self.crop_size[0] and width <= self.crop_size[1]:
            return []  # the agent's own canvas size: no coarse look needed
        logits, ys, xs = self._cell_logits(reference, query)
        if count > 1:
            logits = logits.copy()  # cells near a taken one are masked below
        half_h, half_w = self.crop_size[0] / 2, self.crop_size[1] / 2
        proposals: list[Proposal] = []
        for _ in range(count):  # greedy: the best cell, then the best far enough from those taken
            row, col = divmod(int(np.argmax(logits)), logits.shape[1])
            if proposals and logits[row, col] == -np.inf:
                break  # every cell is near one taken
            centre = (float(xs[col]), float(ys[row]))
            proposals.append(Proposal(centre=centre, crop=crop_around(centre, self.crop_size, reference.shape)))
            if len(proposals) < count:  # the cells whose centres are within half a crop (ys, xs ascend)
                rows = slice(np.searchsorted(ys, centre[1] - half_h, "right"), np.searchsorted(ys, centre[1] + half_h, "left"))
                cols = slice(np.searchsorted(xs, centre[0] - half_w, "right"), np.searchsorted(xs, centre[0] + half_w, "left"))
                logits[rows, cols] = -np.inf
        return proposals


def save_proposer_file(path: Union[str, Path], proposer: CoarseProposer, crop_size: tuple[int, int], fine: str,
                       info: Optional[dict[str, Any]] = None) -> Path:
    """Write a proposer (weights, architecture, crop size, the agent it works with, free-form
    ``info`` such as the training command and its measured hit rate) to ``path`` (``.pt``)."""
    return write_model_file(path, {"state_dict": proposer.state_dict(), "config": proposer.config,
                                   "crop_size": list(crop_size), "fine": fine, "info": info or {}})


def load_proposer_file(path: Union[str, Path]) -> dict[str, Any]:
    """The contents of a proposer file, checked; clear errors for a missing or foreign file."""
    return read_model_file(path, "proposer", "train/coarse_proposer.py", {"state_dict", "config", "crop_size", "fine"})

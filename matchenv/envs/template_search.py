"""The ``TemplateSearch`` environment: find the window of a reference image that matches a query."""

from __future__ import annotations

from typing import Any, Optional, Union

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from matchenv.datasets import PairDataset, SearchPair, make_dataset
from matchenv.datasets.base import check_split
from matchenv.encoders import as_encoder
from matchenv.envs.actions import make_window_action
from matchenv.geometry import (
    crop_letterboxed,
    crop_window,
    iou,
    letterbox,
    letterbox_placement,
    resize_image,
)

REWARD_MODES = ("sparse", "dense")
OBS_MODES = ("pixels", "features")


class TemplateSearchEnv(gym.Env):
    """
    ## Description

    Template matching posed as a search. Each episode is one query/reference pair from a
    dataset (Noisy MNIST by default). The agent first sees the **whole reference** shrunk into
    the window slot, then places a window ``max_trials`` times; after each placement it sees
    the reference's pixels under that window, resized to the query resolution, next to the
    query. The episode succeeds if the last window overlaps the target with IoU above
    ``iou_threshold``.

    ## Action Space

    Set by ``action_type`` (see :mod:`matchenv.envs.actions` for the exact maps):

    - ``"absolute"`` (default): ``Box(-1, 1, (2,), float32)`` -- the next window centre over the
      positions where the window fits (-1: against the left/top edge, +1: right/bottom). A third
      component chooses the scale when the dataset's target size varies (``scale_range``): a
      factor on the pair's nominal window (``window_size``: the dataset's, or for photographs the
      query's aspect at a size relative to the reference).
    - ``"relative"``: same shape; moves the window by up to ``max_step`` of the reference size.
    - ``"discrete"``: ``Discrete(9)`` (``11`` with scale): stay, four small and four large moves,
      zoom in/out. Suited to DQN.

    Continuous actions outside the box are clipped; NaN/inf actions raise ``ValueError``.

    ## Observation Space

    With ``obs_mode="pixels"`` (default) a ``Dict``:

    - ``query``: ``Box(0, 255, (C, h, w), uint8)``, the query at resolution ``(h, w)``
      (28x28 for MNIST), channel-first so SB3 treats it as an image.
    - ``window``: same space, the current window cropped from the reference and resized to
      ``(h, w)``; at reset the whole reference.
    - ``location``: ``Box(0, 1, (4,), float32)``, the current window as ``(cx, cy, w, h)``: centre
      and size divided by the reference width and height (the whole image is
      ``(0.5, 0.5, 1, 1)``, which is what reset shows).
    - ``trials_left``: ``Box(0, 1, (1,), float32)``, windows still to place divided by ``max_trials``.
    - ``overview`` (only with ``overview_size=(H', W')``): ``Box(0, 255, (C, H', W'), uint8)``, the
      whole reference at a larger resolution than the windows, the same at every step: a
      sharper first look for references where a ``(h, w)`` thumbnail is too coarse to tell where
      the query is (photographs, look-alike digits).

    With ``obs_mode="features"`` a frozen ``encoder`` (any callable ``(N, C, h, w) uint8 ->
    (N, D)``, a ``torch.nn.Module`` or ``"pixels"``) replaces ``query`` and ``window`` by
    float32 vectors of length ``D``, so MLP-only algorithms plug in directly.

    The observation never contains the target box or anything computed from it.

    ## Rewards

    - ``reward_mode="sparse"`` (default, as in the paper): ``1.0`` on the final step when
      IoU(final window, target) > ``iou_threshold``, otherwise ``0.0``; every other step ``0.0``.
    - ``reward_mode="dense"``: each step earns its IoU improvement ``IoU_t - IoU_{t-1}`` (with
      ``IoU_0 = 0``), plus the sparse success reward on the final step; an episode's return is
      therefore final IoU + success.

    ## Episode End

    The episode terminates (``terminated=True``) after ``max_trials`` windows (default 6).
    It is never truncated. Stepping a finished episode raises ``RuntimeError``.

    ## Info

    Every step: ``window_box`` (pixel ``(x0, y0, x1, y1)``), ``iou`` with the target and
    ``trial`` (windows placed so far). Final step: also ``is_success`` and ``target_box``.
    Privileged signals for teachers and auxiliary losses (target and distractor boxes) come
    from :meth:`privileged_info`, and in every ``info`` under ``"privileged"`` when
    ``privileged_info=True``.

    ## Registered Configurations

    - ``TemplateSearch-v0``: Cluttered MNIST, the default.
    - ``TemplateSearch-TranslatedMNIST-v0``, ``TemplateSearch-ClutteredMNIST-v0``,
      ``TemplateSearch-MixedMNIST-v0``: one per built-in dataset.
    - ``TemplateSearch-FlickrLogos27-v0``: logos in colour photographs (found on disk or
      downloaded on first use; see :class:`~matchenv.datasets.FlickrLogos27`). Every other dataset,
      including your own (``ManifestPairs``, ``SelfSupervisedPhotos``), by ``dataset=``.

    Any argument below can be passed through ``gym.make(id, **kwargs)``.

    :param dataset: a registered dataset name (see :data:`matchenv.datasets.DATASETS`) or a
        :class:`~matchenv.datasets.PairDataset` instance.
    :param dataset_kwargs: keyword arguments for a dataset given by name.
    :param split: ``"train"`` (fresh random pairs) or ``"test"`` (the dataset's fixed test split;
        ``reset(options={"pair_index": i})`` selects pair ``i``, else one is drawn at random).
    :param max_trials: number of windows per episode.
    :param action_type: ``"absolute"``, ``"relative"`` or ``"discrete"``.
    :param action_kwargs: extra arguments of the action type (``max_step``, ``step``, ``max_zoom``).
    :param reward_mode: ``"sparse"`` or ``"dense"``.
    :param iou_threshold: IoU above which the final window counts as a success.
    :param obs_mode: ``"pixels"`` or ``"features"``.
    :param encoder: the frozen encoder for ``obs_mode="features"``.
    :param query_size: ``(h, w)`` observation resolution; the dataset's ``query_size`` by default.
    :param scale_range: ``(min, max)`` window scale factors; the dataset's ``scale_range`` by default.
    :param overview_size: ``(H', W')`` (or one int for a square) to add the ``overview`` observation, or ``None``.
    :param privileged_info: also put the privileged signals in every ``info`` (for teachers).
    :param render_mode: ``None``, ``"rgb_array"`` or ``"human"`` (needs pygame and a display).
    """

    metadata = {"render_modes": ["rgb_array", "human"], "render_fps": 4}

    def __init__(
        self,
        dataset: Union[str, PairDataset] = "ClutteredMNIST",
        dataset_kwargs: Optional[dict[str, Any]] = None,
        split: str = "train",
        max_trials: int = 6,
        action_type: str = "absolute",
        action_kwargs: Optional[dict[str, Any]] = None,
        reward_mode: str = "sparse",
        iou_threshold: float = 0.5,
        obs_mode: str = "pixels",
        encoder: Any = None,
        query_size: Optional[tuple[int, int]] = None,
        scale_range: Optional[tuple[float, float]] = None,
        overview_size: Optional[tuple[int, int]] = None,
        privileged_info: bool = False,
        render_mode: Optional[str] = None,
    ) -> None:
        if isinstance(dataset, str):
            dataset = make_dataset(dataset, **(dataset_kwargs or {}))
        elif dataset_kwargs:
            raise ValueError("dataset_kwargs is only used with a dataset name, not with a dataset instance")
        if not isinstance(dataset, PairDataset):
            raise TypeError(f"dataset must be a registered name or a PairDataset, got {type(dataset).__name__}")
        check_split(split)
        # A whole number only: int(1.7) would silently give 1 window per episode. (numpy integers
        # pass; a float, even 6.0, and a bool do not: say max_trials=6.)
        if isinstance(max_trials, bool) or not isinstance(max_trials, (int, np.integer)):
            raise ValueError(f"max_trials must be a whole number of windows (an int >= 1, e.g. max_trials=6), "
                             f"got {max_trials!r} ({type(max_trials).__name__})")
        if max_trials < 1:
            raise ValueError(f"max_trials must be >= 1, got {max_trials}")
        if reward_mode not in REWARD_MODES:
            raise ValueError(f"unknown reward_mode {reward_mode!r}; choose one of {REWARD_MODES}")
        if obs_mode not in OBS_MODES:
            raise ValueError(f"unknown obs_mode {obs_mode!r}; choose one of {OBS_MODES}")
        if not 0.0 <= iou_threshold < 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"unknown render_mode {render_mode!r}; choose one of {self.metadata['render_modes']}")

        self.dataset = dataset
        self.split = split
        self.max_trials = int(max_trials)
        self.reward_mode = reward_mode
        self.iou_threshold = float(iou_threshold)
        self.obs_mode = obs_mode
        self.expose_privileged = bool(privileged_info)
        self.render_mode = render_mode
        self.query_size = tuple(int(v) for v in (query_size or dataset.query_size))
        if len(self.query_size) != 2 or min(self.query_size) < 1:
            raise ValueError(f"query_size must be (height, width) with positive sides, got {query_size}")
        #: The dataset's nominal window ``(height, width)``; ``window_size`` is the current pair's
        #: (photograph pairs carry their own: the template's size).
        self.default_window_size = tuple(dataset.window_size)
        self.window_size = self.default_window_size
        self.letterbox = bool(getattr(dataset, "letterbox", False))
        scale_range = scale_range if scale_range is not None else dataset.scale_range
        if scale_range is not None:
            scale_range = (float(scale_range[0]), float(scale_range[1]))
            if not 0 < scale_range[0] <= scale_range[1]:
                raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {scale_range}")
        self.scale_range = scale_range
        self.window_action = make_window_action(action_type, scale_range, **(action_kwargs or {}))
        self.action_type = action_type
        self.action_space = self.window_action.space

        c, (h, w) = dataset.channels, self.query_size
        image_space = spaces.Box(0, 255, shape=(c, h, w), dtype=np.uint8)
        self.encoder = None
        if obs_mode == "features":
            if encoder is None:
                raise ValueError('obs_mode="features" needs an encoder: a torch.nn.Module, a callable or "pixels"')
            self.encoder = as_encoder(encoder)
            dim = self._encode(np.zeros((1, c, h, w), dtype=np.uint8)).shape[1]
            image_space = spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float32)
        elif encoder is not None:
            raise ValueError('encoder is only used with obs_mode="features"')
        obs_spaces = {
            "query": image_space,
            "window": image_space,
            "location": spaces.Box(0.0, 1.0, shape=(4,), dtype=np.float32),
            "trials_left": spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32),
        }
        self.overview_size = None
        if overview_size is not None:
            if isinstance(overview_size, (int, np.integer)):  # a square overview
                overview_size = (overview_size, overview_size)
            self.overview_size = tuple(int(v) for v in overview_size)
            if len(self.overview_size) != 2 or min(self.overview_size) < 1:
                raise ValueError(f"overview_size must be (height, width) with positive sides, got {overview_size}")
            if obs_mode != "pixels":
                raise ValueError('overview_size needs obs_mode="pixels"')
            obs_spaces["overview"] = spaces.Box(0, 255, shape=(c, *self.overview_size), dtype=np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)
        self._overview_obs: Optional[np.ndarray] = None

        self._pair: Optional[SearchPair] = None
        self._query_obs: Optional[np.ndarray] = None
        self._windows: list[np.ndarray] = []
        self._trial = 0
        # the window's state as WindowAction.place takes it, Python floats: centre (x, y) and scale;
        # the reference's and the nominal window's (width, height)
        self._centre = (0.0, 0.0)
        self._scale = 1.0
        self._image_wh = self._window_wh = (1.0, 1.0)
        self._last_iou = 0.0
        self._viewer = None

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None):
        super().reset(seed=seed)
        options = options or {}
        if "pair" in options:
            pair = options["pair"]
        elif "pair_index" in options:
            if self.split != "test":
                raise ValueError('options["pair_index"] selects a test pair: create the env with split="test"')
            pair = self.dataset.test_pair(int(options["pair_index"]))
        else:
            pair = self.dataset.pair(self.split, self.np_random)
        self._pair = validate_pair(pair, self.dataset.channels, self.default_window_size, self.scale_range)
        self.window_size = (
            self.default_window_size if pair.window_size is None else tuple(float(v) for v in pair.window_size)
        )

        img_h, img_w = self._pair.reference.shape[:2]
        if self.letterbox and pair.template is not None:
            query = letterbox(pair.template, self.query_size)
        else:
            query = resize_image(pair.query, self.query_size)
        self._query_obs = self._to_obs_image(query)
        if self.overview_size is not None:
            whole = letterbox if self.letterbox else resize_image
            self._overview_obs = np.ascontiguousarray(whole(pair.reference, self.overview_size).transpose(2, 0, 1))
        self._trial = 0
        self._image_wh = (float(img_w), float(img_h))
        self._window_wh = (float(self.window_size[1]), float(self.window_size[0]))
        self._centre = (img_w / 2.0, img_h / 2.0)
        self._scale = 1.0
        self._last_iou = 0.0
        self._windows = []
        full = np.array([0.0, 0.0, img_w, img_h])
        global_view = self.window_image(full)
        obs = self._observation(global_view, (0.5, 0.5, 1.0, 1.0))  # the whole reference
        info = {"window_box": full, "iou": iou(full, self._pair.target_box), "trial": 0}
        if self.expose_privileged:
            info["privileged"] = self.privileged_info()
        if self.render_mode == "human":
            self._render_human()
        return obs, info

    def step(self, action):
        if self._pair is None:
            raise RuntimeError("call reset() before step()")
        if self._trial >= self.max_trials:
            raise RuntimeError(f"the episode ended after {self.max_trials} trials: call reset() to start a new one")
        pair = self._pair
        # The window geometry (WindowAction.place: matchenv.geometry on Python floats, one window).
        placed = self.window_action.place(self.window_action.check(action), self._centre, self._scale, self._image_wh,
                                          self._window_wh)
        x0, y0, x1, y1 = placed.box
        # Keep the state at the placed window, so relative moves start from what the agent saw.
        self._centre, self._scale = ((x0 + x1) / 2.0, (y0 + y1) / 2.0), placed.scale
        box = np.array(placed.box)
        self._trial += 1
        self._windows.append(box)

        obs = self._observation(self.window_image(box), placed.location)
        overlap = iou(box, pair.target_box)
        terminated = self._trial >= self.max_trials
        success = terminated and overlap > self.iou_threshold
        reward = 1.0 if success else 0.0
        if self.reward_mode == "dense":
            reward += overlap - self._last_iou
        self._last_iou = overlap

        info: dict[str, Any] = {"window_box": box, "iou": overlap, "trial": self._trial}
        if terminated:
            info["is_success"] = bool(success)
            info["target_box"] = pair.target_box.copy()
        if self.expose_privileged:
            info["privileged"] = self.privileged_info()
        if self.render_mode == "human":
            self._render_human()
        return obs, float(reward), terminated, False, info

    def render(self) -> Optional[np.ndarray]:
        if self.render_mode is None:
            gym.logger.warn('render() was called without a render_mode; create the env with render_mode="rgb_array"')
            return None
        frame = self.render_frame()
        if self.render_mode == "human":
            self._show(frame)
            return None
        return frame

    def close(self) -> None:
        if self._viewer is not None:
            self._viewer.close()
            self._viewer = None

    # ------------------------------------------------------------------ extras
    def privileged_info(self) -> dict[str, Any]:
        """Signals a policy must never see, for teachers and auxiliary losses.

        :return: ``target_box`` ``(4,)`` and ``distractor_boxes`` ``(K, 4)`` in reference pixels,
            the target ``label`` and the ``reference_size`` ``(height, width)``.
        """
        if self._pair is None:
            raise RuntimeError("call reset() first: there is no current pair")
        return {
            "target_box": self._pair.target_box.copy(),
            "distractor_boxes": self._pair.distractor_boxes.copy(),
            "label": self._pair.label,
            "reference_size": tuple(self._pair.reference.shape[:2]),
            "window_size": tuple(self.window_size),
        }

    @property
    def pair(self) -> Optional[SearchPair]:
        """The current episode's :class:`SearchPair` (privileged: holds the target box)."""
        return self._pair

    @property
    def window_boxes(self) -> list[np.ndarray]:
        """The windows placed so far this episode, pixel ``(x0, y0, x1, y1)``."""
        return list(self._windows)

    def render_frame(self) -> np.ndarray:
        """The current episode as an RGB frame (reference, target, numbered windows, query)."""
        from matchenv.rendering import render_search  # rendering is only imported when used

        if self._pair is None:
            raise RuntimeError("call reset() before render()")
        return render_search(
            self._pair.reference,
            self._pair.query,
            self._windows,
            self._pair.target_box,
            distractor_boxes=self._pair.distractor_boxes,
            title=f"trial {self._trial}/{self.max_trials}",
            max_windows=self.max_trials,
        )

    def window_image(self, box: np.ndarray) -> np.ndarray:
        """The reference's pixels under ``box`` at the observation resolution ``(h, w, C)`` uint8
        (letterboxed for photograph datasets, stretched otherwise)."""
        if self.letterbox:
            return crop_letterboxed(self._pair.reference, box, self.query_size)
        return crop_window(self._pair.reference, box, self.query_size)

    def overview_point(self, x: float, y: float) -> tuple[float, float]:
        """Where the reference pixel ``(x, y)`` lands in the ``overview`` observation (its pixels).

        :raises RuntimeError: without ``overview_size`` or before ``reset``.
        """
        if self.overview_size is None or self._pair is None:
            raise RuntimeError("overview_point needs overview_size and a current pair (call reset())")
        img_h, img_w = self._pair.reference.shape[:2]
        out_h, out_w = self.overview_size
        if not self.letterbox:
            return x * out_w / img_w, y * out_h / img_h
        y0, x0, new_h, new_w = letterbox_placement((img_h, img_w), self.overview_size)
        return x0 + x * new_w / img_w, y0 + y * new_h / img_h

    # ------------------------------------------------------------------ internals
    def _observation(self, window: np.ndarray, location: tuple[float, float, float, float]) -> dict[str, np.ndarray]:
        """:param location: the window's ``(cx, cy, w, h)``, fractions of the reference."""
        location = np.array(location, dtype=np.float32)
        trials_left = np.array([(self.max_trials - self._trial) / self.max_trials], dtype=np.float32)
        window_obs = self._to_obs_image(window)
        # A fresh query array per step: callers may keep or modify what they are given.
        obs = {"query": self._query_obs.copy(), "window": window_obs, "location": location, "trials_left": trials_left}
        if self.overview_size is not None:
            obs["overview"] = self._overview_obs.copy()
        return obs

    def _to_obs_image(self, image: np.ndarray) -> np.ndarray:
        chw = np.ascontiguousarray(image.transpose(2, 0, 1))
        if self.encoder is None:
            return chw
        return self._encode(chw[None])[0]

    def _encode(self, images: np.ndarray) -> np.ndarray:
        out = np.asarray(self.encoder(images), dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != images.shape[0]:
            raise ValueError(f"the encoder must map (N, C, H, W) images to (N, D) vectors, got shape {out.shape}")
        return out

    def _render_human(self) -> None:
        self._show(self.render_frame())

    def _show(self, frame: np.ndarray) -> None:
        if self._viewer is None:
            from matchenv.rendering import HumanViewer

            self._viewer = HumanViewer(caption="TemplateSearch", fps=self.metadata["render_fps"])
        self._viewer.show(frame)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_viewer"] = None  # a window cannot be pickled
        return state


def validate_pair(
    pair: SearchPair, channels: int, window_size: tuple[int, int], scale_range: Optional[tuple[float, float]]
) -> SearchPair:
    """Check a pair's images and boxes; raise ``ValueError`` saying what is wrong and how to fix it."""
    if not isinstance(pair, SearchPair):
        raise TypeError(f"a dataset must return SearchPair objects, got {type(pair).__name__}")
    for name in ("query", "reference"):
        img = getattr(pair, name)
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
            dtype = getattr(img, "dtype", type(img).__name__)
            raise ValueError(f"{name} must be a uint8 numpy array, got {dtype}; convert with np.clip(x, 0, 255).astype(np.uint8)")
        if img.ndim != 3 or img.shape[2] != channels or min(img.shape[:2]) < 1:
            raise ValueError(
                f"{name} must be channel-last (H, W, {channels}) for this dataset, got shape {img.shape}"
                " (add a channel axis with img[:, :, None] for grayscale)"
            )
    ref_h, ref_w = pair.reference.shape[:2]
    min_scale = scale_range[0] if scale_range else 1.0
    if pair.window_size is not None:
        # A photograph pair's own window (its template's size) may exceed the reference: windows
        # are clamped to the image, like any other too-large request.
        size = np.asarray(pair.window_size, dtype=np.float64)
        if size.shape != (2,) or not np.all(np.isfinite(size)) or np.any(size < 1):
            raise ValueError(f"pair.window_size must be (height, width) of at least 1 px, got {pair.window_size!r}")
    elif window_size[0] * min_scale > ref_h or window_size[1] * min_scale > ref_w:
        raise ValueError(
            f"the window ({window_size[1]}x{window_size[0]} px) is larger than the reference ({ref_w}x{ref_h} px): "
            "the query must be smaller than the image it is searched in"
        )
    box = np.asarray(pair.target_box, dtype=np.float64)
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        raise ValueError(f"target_box must be 4 finite numbers (x0, y0, x1, y1), got {pair.target_box!r}")
    if not (0 <= box[0] < box[2] <= ref_w and 0 <= box[1] < box[3] <= ref_h):
        raise ValueError(f"target_box {box.tolist()} is empty or outside the {ref_w}x{ref_h} reference")
    return pair

"""Reading an SB3 checkpoint (``.zip``) without running code from it.

SB3 stores some fields of a model's ``data`` JSON as base64 cloudpickle (``":serialized:"``) and
unpickles them on load: a file from someone else could run anything. :func:`safe_custom_objects`
decodes those fields first, so that SB3 is handed every one of them as a ``custom_objects`` entry
and unpickles nothing (its tensors are read with ``weights_only=True`` already):

- the fields a model needs (spaces, policy class, schedules, ``policy_kwargs``) are unpickled by
  :class:`RestrictedUnpickler`, which builds only the classes in :data:`ALLOWED_GLOBALS`;
- the rollout state SB3 saves for continuing a run (last observation, episode buffers) is dropped
  (``None``): SB3 rebuilds it on the next ``learn``;
- any other pickled field is refused, naming the file and the field.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import json
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Union

#: the only globals a checkpoint's pickled fields may name: spaces, numpy arrays and generators,
#: SB3's schedules, this project's policy and features extractor, torch activations and optimisers
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("matchenv.agents.policy", "SearchLstmPolicy"),
    ("matchenv.agents.siamese", "SearchFeaturesExtractor"),
    ("stable_baselines3.common.utils", "ConstantSchedule"),
    ("stable_baselines3.common.utils", "FloatSchedule"),
    ("stable_baselines3.common.utils", "LinearSchedule"),
    ("gymnasium.spaces.box", "Box"),
    ("gymnasium.spaces.dict", "Dict"),
    ("gymnasium.spaces.discrete", "Discrete"),
    ("gymnasium.spaces.multi_discrete", "MultiDiscrete"),
    ("gymnasium.spaces.multi_binary", "MultiBinary"),
    ("collections", "OrderedDict"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random._pcg64", "PCG64"),
    ("numpy.random._mt19937", "MT19937"),
    ("numpy.random.bit_generator", "SeedSequence"),
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
    ("torch.nn.modules.activation", "ReLU"),
    ("torch.nn.modules.activation", "Tanh"),
    ("torch.optim.adam", "Adam"),
})

#: pickled fields a model needs: decoded by :class:`RestrictedUnpickler`
NEEDED_FIELDS = frozenset({"policy_class", "observation_space", "action_space", "clip_range", "clip_range_vf",
                           "lr_schedule", "learning_rate", "policy_kwargs", "ent_coef"})
#: pickled rollout state SB3 saves to continue a run mid-rollout: dropped (rebuilt by ``learn``)
DROPPED_FIELDS = frozenset({"_last_obs", "_last_episode_starts", "_last_original_obs", "ep_info_buffer",
                            "ep_success_buffer", "_last_lstm_states"})


class UnsafeCheckpointError(ValueError):
    """A checkpoint holds a pickled object this project does not load (loading it could run code)."""


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that builds only :data:`ALLOWED_GLOBALS`, and sets state (``BUILD``) only on
    instances of the allowed classes, never on a class or function itself (anything else raises).

    Why the pure-Python unpickler: its ``BUILD`` step can be checked. With the C one, a pickle could
    apply a "state" to an allowed *class* (``setattr`` on it) and change that class for the rest of
    the process, e.g. every SB3 schedule's ``__call__``. The fields it reads are a few KB.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        # Checkpoints written before the agents moved under matchenv name them "agents.<module>".
        if module.startswith("agents."):
            module = "matchenv." + module
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not a class a checkpoint may hold")
        return super().find_class(module, name)

    def load_build(self) -> None:
        target = self.stack[-2]  # the object under its state (BUILD pops the state, then sets it on this)
        if isinstance(target, type) or not isinstance(target, _allowed_instance_types()):
            raise pickle.UnpicklingError(f"the pickle sets the state of {target!r}, which a checkpoint may not change")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


@functools.lru_cache(maxsize=1)
def _allowed_instance_types() -> tuple[type, ...]:
    """The classes of :data:`ALLOWED_GLOBALS` (not its functions): objects whose state BUILD may set."""
    import importlib

    found = []
    for module, name in ALLOWED_GLOBALS:
        try:
            with warnings.catch_warnings():  # numpy.core is numpy._core's deprecated alias
                warnings.simplefilter("ignore", DeprecationWarning)
                value = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):  # a module this numpy version does not have
            continue
        if isinstance(value, type):
            found.append(value)
    return tuple(found)


def safe_custom_objects(path: Union[str, Path, BinaryIO]) -> dict[str, Any]:
    """Every pickled field of the SB3 checkpoint at ``path``, decoded safely: pass the result as
    ``custom_objects`` to ``load`` so SB3 unpickles nothing.

    :raises UnsafeCheckpointError: a field holds a pickled object outside :data:`ALLOWED_GLOBALS`,
        or a pickled field this project does not know (the message names the file and the field).
    :raises ValueError: ``path`` is not an SB3 checkpoint (no readable ``data`` JSON).
    """
    name = path if isinstance(path, (str, Path)) else "the checkpoint"
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data").decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{name} is not a checkpoint written by train/ppo_lstm.py (an SB3 .zip): {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{name} is not a checkpoint written by train/ppo_lstm.py: its data is not a JSON object")
    objects: dict[str, Any] = {}
    for field, item in data.items():
        if not (isinstance(item, dict) and ":serialized:" in item):
            continue
        if field in DROPPED_FIELDS:
            objects[field] = None
            continue
        if field not in NEEDED_FIELDS:
            raise UnsafeCheckpointError(f"{name}: field {field!r} holds a pickled Python object ({item.get(':type:')}) "
                                        "that matchenv does not load, because loading it could run code; a checkpoint "
                                        "from train/ppo_lstm.py has none there. Do not load a file you do not trust.")
        try:
            objects[field] = RestrictedUnpickler(io.BytesIO(base64.b64decode(item[":serialized:"]))).load()
        except (pickle.UnpicklingError, binascii.Error, EOFError, TypeError, ValueError, AttributeError, IndexError,
                KeyError, MemoryError) as err:
            raise UnsafeCheckpointError(f"{name}: field {field!r} is not a plain {field.replace('_', ' ')} ({err}); "
                                        "matchenv refuses to unpickle it, because loading it could run code. "
                                        "Do not load a file you do not trust.") from err
    return objects

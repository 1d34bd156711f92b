"""Look files: a :class:`~matchenv.agents.look_network.MultiScaleLook`'s weights, its
:class:`~matchenv.agents.look_network.LookConfig` and free-form ``info``, saved and loaded as plain values."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Union

from matchenv.agents.look_network import LookConfig, MultiScaleLook
from matchenv.agents.model_files import read_model_file, write_model_file


def save_look_file(path: Union[str, Path], look: MultiScaleLook, info: Optional[dict[str, Any]] = None) -> Path:
    """Write a look (weights, :class:`LookConfig`, free-form ``info`` such as the training command
    and its measured success) to ``path`` (``.pt``)."""
    return write_model_file(path, {"kind": "multiscale-look", "state_dict": look.state_dict(),
                                   "config": config_dict(look.config), "info": info or {}})


def config_dict(config: LookConfig) -> dict[str, Any]:
    """``config`` as plain Python values (what :func:`torch.load` with ``weights_only`` reads back)."""
    return asdict(config) | {"channels": list(config.channels)}


def load_look_file(path: Union[str, Path]) -> tuple[MultiScaleLook, dict[str, Any]]:
    """A look and its ``info`` from a file written by :func:`save_look_file`; clear errors for a
    missing or foreign file."""
    saved = read_model_file(path, "look", "train/multiscale_look.py", {"kind", "state_dict", "config", "info"})
    look = MultiScaleLook(LookConfig(**saved["config"]))
    look.load_state_dict(saved["state_dict"])
    return look.eval(), saved["info"]

"""Test-session setup shared by every test module: offline, bundled MNIST, a private cache, no display.

The variables are set when this file is imported, before any test module imports matchenv, so
that they also reach subprocesses started by the tests (``gym.make("matchenv:...")`` in a fresh
interpreter, ``SubprocVecEnv`` workers).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

try:  # hypothesis is a dev dependency; only tests/test_geometry.py needs it
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # pragma: no cover
    _hypothesis_settings = None

# No network: never try to download MNIST, use the bundled subset instead.
os.environ["MATCHENV_OFFLINE"] = "1"
# A developer's full MNIST must not change what the tests see: use the bundled subset.
os.environ.pop("MATCHENV_DATA", None)
# Never read or write the user's cache (~/.cache/matchenv).
_CACHE_DIR = tempfile.mkdtemp(prefix="matchenv-test-cache-")
os.environ["MATCHENV_CACHE"] = _CACHE_DIR
# render_mode="human" (and gymnasium's check_env, which tries every declared render mode)
# opens a pygame window: draw into a dummy video driver instead of a real display.
os.environ["SDL_VIDEODRIVER"] = "dummy"
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
# No "Hello from the pygame community" banner in the test output.
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

try:  # tiny networks on a shared 2-core machine: extra torch threads only contend
    import torch as _torch

    _torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass

if _hypothesis_settings is not None:
    # No per-example deadline: the machine running the tests is shared and its timing noisy.
    _hypothesis_settings.register_profile("matchenv", max_examples=100, deadline=None)
    _hypothesis_settings.load_profile("matchenv")


@pytest.fixture(scope="session", autouse=True)
def offline_test_environment():
    """Keep the settings above for the whole session and remove the temporary cache at the end."""
    assert os.environ["MATCHENV_OFFLINE"] == "1" and "MATCHENV_DATA" not in os.environ
    yield _CACHE_DIR
    shutil.rmtree(_CACHE_DIR, ignore_errors=True)


@pytest.fixture
def single_torch_thread():
    """Run torch on one thread for the test (tiny networks on a shared machine: threads only contend)."""
    torch = pytest.importorskip("torch")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

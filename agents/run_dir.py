"""A training run's output folder: never reuse one that holds an earlier run by accident, never
let two runs write one folder at once, and write its small metadata files atomically.

    run = RunDir.claim(args.out_dir, default=f"runs/{name}-seed{seed}", resume=args.resume, overwrite=args.overwrite)
    try:
        ...  # train, writing into run.path
        run.write_json("summary.json", summary)
    finally:
        run.release()
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

#: files whose presence means a folder holds a run
RUN_FILES = ("last.zip", "best.zip", "state.json", "summary.json", "args.json", "tb")
LOCK_NAME = ".run.lock"


class RunDirError(RuntimeError):
    """The output folder cannot be used (it holds a run, or another run is writing it)."""


def holds_a_run(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class RunDir:
    """An output folder claimed by this process (:meth:`claim`); :meth:`release` gives it back.

    :param path: the folder.
    :param notes: what :meth:`claim` decided that the user should know (printed by the script).
    """

    def __init__(self, path: Path, notes: list[str]) -> None:
        self.path = path
        self.notes = notes
        self._lock = path / LOCK_NAME

    @classmethod
    def claim(cls, out_dir: Union[str, Path, None], default: Union[str, Path], resume: Union[str, Path, None] = None,
              overwrite: bool = False) -> "RunDir":
        """The folder to write into, locked against other runs.

        - ``out_dir`` given: used if empty, or when resuming, or with ``overwrite``; a folder that
          holds a run is refused otherwise;
        - not given: ``default``, or ``default-2``, ``default-3``, ... if it already holds a run;
        - resuming without ``out_dir``: the resumed checkpoint's folder.

        :raises RunDirError: the folder holds a run (the message says to use ``--resume``,
            ``--overwrite`` or another ``--out-dir``) or another live process holds its lock.
        """
        notes: list[str] = []
        if out_dir:
            path = Path(out_dir)
            if holds_a_run(path) and not resume and not overwrite:
                raise RunDirError(f"{path} holds an earlier run: pass --resume {path / 'last.zip'} to continue it, "
                                  f"--overwrite to replace it, or another --out-dir")
        elif resume:
            path = Path(resume).parent
        else:
            path = Path(default)
            suffix = 2
            while holds_a_run(path):
                path = Path(f"{default}-{suffix}")
                suffix += 1
            if path != Path(default):
                notes.append(f"{default} holds an earlier run: writing this one to {path}")
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path, notes)
        run._take_lock()
        return run

    def _take_lock(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self._lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(self._lock.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and _alive(pid):
                    raise RunDirError(f"another run (process {pid}) is writing {self.path}: wait for it, or pass "
                                      f"another --out-dir") from None
                self.notes.append(f"took over {self._lock} from a run that is no longer running (process {pid})")
                self._lock.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as lock:
                lock.write(str(os.getpid()))
            return
        raise RunDirError(f"could not lock {self.path}: another run took it at the same moment")

    def release(self) -> None:
        """Give the folder back (removes the lock if this process holds it)."""
        try:
            if int(self._lock.read_text().strip() or 0) == os.getpid():
                self._lock.unlink()
        except (OSError, ValueError):
            pass

    def write_json(self, name: str, contents: Any) -> Path:
        """Write ``contents`` as JSON to ``name`` in the folder atomically (a temporary file, then a rename)."""
        return write_json_atomic(self.path / name, contents)


def write_json_atomic(path: Union[str, Path], contents: Any, indent: Optional[int] = 2) -> Path:
    """``json.dump`` to a temporary file next to ``path``, then rename: a crash or a full disk leaves
    the previous file whole, never an empty or half-written one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(contents, out, indent=indent)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

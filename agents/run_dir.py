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
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

#: files whose presence means a folder holds a run
RUN_FILES = ("last.zip", "best.zip", "state.json", "summary.json", "args.json", "tb", "checkpoint", "export.zip")
#: the lock file: an OS lock (``flock``) on it marks a folder a live run is writing
LOCK_NAME = ".run.lock"


class RunDirError(RuntimeError):
    """The output folder cannot be used (it holds a run, or another run is writing it)."""


def holds_a_run(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_FILES)


def _lock_file(handle) -> None:
    """An exclusive, non-blocking OS lock on ``handle`` (``OSError`` if another process holds it)."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


class RunDir:
    """An output folder claimed by this process (:meth:`claim`); :meth:`release` gives it back.

    :param path: the folder.
    :param notes: what :meth:`claim` decided that the user should know (printed by the script).
    """

    def __init__(self, path: Path, notes: list[str]) -> None:
        self.path = path
        self.notes = notes
        self._lock = path / LOCK_NAME
        self._handle = None

    @classmethod
    def claim(cls, out_dir: Union[str, Path, None], default: Union[str, Path], resume: Union[str, Path, None] = None,
              overwrite: bool = False, checkpoint: str = "last.zip") -> "RunDir":
        """The folder to write into, locked against other runs.

        - ``out_dir`` given: used if empty, or when resuming, or with ``overwrite``; a folder that
          holds a run is refused otherwise;
        - not given: ``default``, or ``default-2``, ``default-3``, ... if it already holds a run;
        - resuming without ``out_dir``: the resumed checkpoint's folder.

        :param checkpoint: the name of the checkpoint a run leaves in its folder (what ``--resume`` takes).
        :raises RunDirError: the folder holds a run (the message says to use ``--resume``,
            ``--overwrite`` or another ``--out-dir``) or another live process holds its lock.
        """
        notes: list[str] = []
        if out_dir:
            path = Path(out_dir)
            continues = bool(resume) and path.resolve() == Path(resume).resolve().parent
            if holds_a_run(path) and not continues and not overwrite:
                raise RunDirError(f"{path} holds an earlier run: pass --resume {path / checkpoint} to continue it, "
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
        if overwrite and holds_a_run(path) and not (resume and path.resolve() == Path(resume).resolve().parent):
            run._clear()
        return run

    def _clear(self) -> None:
        """``--overwrite``: remove the earlier run's files, so none of them passes for the new run's."""
        for name in (*RUN_FILES, "search_paths.png"):
            target = self.path / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        self.notes.append(f"--overwrite: removed the earlier run's files from {self.path}")

    def _take_lock(self) -> None:
        # An OS lock on an open file (flock): atomic, and released by the OS when the process dies,
        # so a crashed run leaves no lock to take over. The file's text (host and process) is for
        # the message only.
        self._handle = open(self._lock, "a+")
        try:
            _lock_file(self._handle)
        except OSError:
            self._handle.seek(0)
            holder = self._handle.read().strip() or "unknown"
            self._handle.close()
            self._handle = None
            raise RunDirError(f"another run ({holder}) is writing {self.path}: wait for it, or pass another --out-dir") \
                from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"process {os.getpid()} on {socket.gethostname()}")
        self._handle.flush()

    def release(self) -> None:
        """Give the folder back. The lock file stays (removing it would let a process that opened
        it a moment before lock a file no one else sees); the OS lock is what counts."""
        if self._handle is not None:
            self._handle.close()  # closing releases the OS lock
            self._handle = None

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


#: exit status after a SIGTERM (128 + 15, what a shell reports for a terminated process)
TERMINATED = 143
_terminated: list[int] = []


def terminate_as_interrupt(signum, frame) -> None:
    """SIGTERM handler: a scheduler's or ``kill``'s SIGTERM becomes a ``KeyboardInterrupt``, so the
    script saves its checkpoint as on Ctrl-C; :func:`train_in_run_folder` then exits
    :data:`TERMINATED`. (A script that starts Ray sets it again after ``ray.init``.)"""
    _terminated.append(signum)
    raise KeyboardInterrupt


def train_in_run_folder(train: Callable[[Path], None], out_dir: Union[str, Path, None], default: Union[str, Path],
                        resume: Union[str, Path, None] = None, overwrite: bool = False, checkpoint: str = "last.zip",
                        errors: tuple[type[BaseException], ...] = ()) -> None:
    """A training script's ``main`` after its arguments: claim the run folder (:meth:`RunDir.claim`),
    run ``train(folder)`` with SIGTERM saving like Ctrl-C, release the folder, and exit with a
    message for a refused folder or one of ``errors``, and with :data:`TERMINATED` after a SIGTERM."""
    try:
        run = RunDir.claim(out_dir, default=default, resume=resume, overwrite=overwrite, checkpoint=checkpoint)
    except RunDirError as err:
        sys.exit(f"error: {err}")
    for note in run.notes:
        print(note)
    signal.signal(signal.SIGTERM, terminate_as_interrupt)
    try:
        train(run.path)
    except errors as err:
        sys.exit(f"error: {err}")
    finally:
        run.release()
    if _terminated:
        sys.exit(TERMINATED)


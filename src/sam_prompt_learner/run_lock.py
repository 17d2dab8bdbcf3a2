"""One process per directory: an exclusive lock on a file inside it, held for as long as the process lives.

Two runs writing one `output_dir` would overwrite each other's weights, delete each other's checkpoints (each keeps
only its newest) or crash one another mid-run. `examples/train.py` takes an exclusive `flock` on
`output_dir/.sam_prompt_learner.lock` ([`lock_directory`]) before anything in the directory is changed; a second run
is refused with a message naming the holder. The embedding cache locks its build directories the same way, so that a
build killed midway is recognized, and cleaned up, by the next one. The operating system releases the lock when the
process ends, however it ends (a crash, a kill), so no stale lock is ever left to clean up. `flock` locks are advisory
and local to one machine: they protect a directory from runs on the same machine (on network file systems, depending
on the server, across machines too).
"""

import datetime
import fcntl
import os
import shutil
import socket
from pathlib import Path
from typing import IO

LOCK_NAME = ".sam_prompt_learner.lock"
# The open lock files of this process: a lock lives as long as its file stays open.
_held_locks: dict[Path, IO[str]] = {}


class DirectoryInUseError(RuntimeError):
    """Another process holds the lock of this directory."""


def lock_directory(directory: str | os.PathLike) -> IO[str]:
    """
    Create `directory` if needed and lock it for this process.

    Args:
        directory (`str` or `os.PathLike`): e.g. a run's output directory.

    Returns:
        The open lock file, which records the holder's process id, host and start time for the message a second run
        gets. The lock is held until the process ends, or until this file is closed.

    Raises:
        [`DirectoryInUseError`]: when another process holds the lock, naming it.
    """
    path = Path(directory) / LOCK_NAME
    held = _held_locks.get(path.resolve())
    if held is not None and not held.closed:  # this process locked it already
        return held
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise DirectoryInUseError(f"{directory} is in use by another process ({holder}).") from None
    handle.seek(0)
    handle.truncate()
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
    handle.flush()
    _held_locks[path.resolve()] = handle
    return handle


def clear_output_dir(output_dir: str | os.PathLike) -> None:
    """Delete everything in a locked `output_dir` but its lock file (`--overwrite_output_dir`)."""
    for entry in Path(output_dir).iterdir():
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()

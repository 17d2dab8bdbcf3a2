"""Atomic, resumable training checkpoints on top of `accelerate`'s `save_state` / `load_state`.

A checkpoint is a directory `checkpoints/step_000123/` holding everything `Accelerator.save_state` writes (model,
optimizer, scheduler, registered objects, every RNG state) plus `training_state.json` (step, epoch, position in the
epoch). It is written under a temporary name and renamed into place only once complete, and a rename is atomic on
POSIX file systems: a process killed mid-write leaves a `.tmp-*` directory that is never loaded (and is cleaned up by
the next save), never a checkpoint that loads but is corrupt.
"""

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate import Accelerator

CHECKPOINTS_DIRNAME = "checkpoints"
TRAINING_STATE_NAME = "training_state.json"
_CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")
_TEMPORARY_PREFIX = ".tmp-"


@dataclass
class TrainingState:
    """Where training stands: optimizer steps done, the epoch and batch within it to continue from, the best
    evaluation so far, and the time already spent (in total, and of it in evaluations during training)."""

    completed_steps: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    elapsed_seconds: float = 0.0
    eval_seconds: float = 0.0


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `output_dir/checkpoints`, oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIRNAME
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CHECKPOINT_PATTERN.match(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found)]


def resolve_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str) -> Path | None:
    """`"latest"` -> newest complete checkpoint of `output_dir` (None when there is none yet); else a checkpoint
    directory, which must exist and be complete."""
    if resume_from_checkpoint == "latest":
        found = checkpoint_dirs(output_dir)
        return found[-1] if found else None
    path = Path(resume_from_checkpoint)
    if not (path / TRAINING_STATE_NAME).is_file():
        raise ValueError(
            f"--resume_from_checkpoint {resume_from_checkpoint!r} is not a complete checkpoint directory (no "
            f"{TRAINING_STATE_NAME}); pass one of {[str(p) for p in checkpoint_dirs(output_dir)]} or 'latest'."
        )
    return path


def save_checkpoint(
    accelerator: Accelerator, output_dir: str | os.PathLike, state: TrainingState, keep_last: int | None = 2
) -> Path:
    """Write a checkpoint atomically and keep only the `keep_last` newest (None keeps all). Call on every process
    (`save_state` gathers what it needs); only the main process touches the directory layout."""
    root = Path(output_dir) / CHECKPOINTS_DIRNAME
    final = root / f"step_{state.completed_steps:09d}"
    temporary = root / f"{_TEMPORARY_PREFIX}{final.name}"
    if accelerator.is_main_process:
        for leftover in root.glob(f"{_TEMPORARY_PREFIX}*"):
            shutil.rmtree(leftover)  # from a run killed while writing
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        state_file = temporary / TRAINING_STATE_NAME
        with open(state_file, "w") as handle:
            json.dump(asdict(state), handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        if final.exists():  # the same step saved again (e.g. a resumed run): replace it
            shutil.rmtree(final)
        os.replace(temporary, final)
        if keep_last is not None:
            for old in checkpoint_dirs(output_dir)[:-keep_last]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, checkpoint: str | os.PathLike) -> TrainingState:
    """Restore model, optimizer, scheduler and RNG states from `checkpoint`; return where training stood."""
    accelerator.load_state(str(checkpoint))
    with open(Path(checkpoint) / TRAINING_STATE_NAME) as handle:
        return TrainingState(**json.load(handle))

"""Atomic, resumable training checkpoints on top of `accelerate`'s `save_state` / `load_state`.

A checkpoint is a directory `checkpoints/step_000123/` holding everything `Accelerator.save_state` writes (model,
optimizer, scheduler, registered objects, every RNG state) plus `training_state.json` (step, epoch, position in the
epoch). It is written under a temporary name and renamed into place only once complete, and a rename is atomic on
POSIX file systems: a process killed mid-write leaves a `.tmp-*` directory that is never loaded (and is cleaned up by
the next save), never a checkpoint that loads but is corrupt.

Resuming from `latest` takes the newest checkpoint that loads: one damaged afterwards (a truncated file, a missing
one) is skipped with a warning naming it, and the one before it is loaded. Loading is all or nothing: every file must
load, the RNG states included (`accelerate` only logs a failure there, which would silently make the resumed run differ
from an uninterrupted one).
"""

import json
import logging
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load

logger = logging.getLogger(__name__)

CHECKPOINTS_DIRNAME = "checkpoints"
TRAINING_STATE_NAME = "training_state.json"
_CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")
_TEMPORARY_PREFIX = ".tmp-"
RNG_STATE_NAME = "random_states_{process_index}.pkl"  # as `Accelerator.save_state` names it


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from, with the reason."""


@dataclass
class TrainingState:
    """Where training stands: optimizer steps done, the epoch and batch within it to continue from, the best
    evaluation so far, the time already spent (in total, and of it in evaluations during training), and every
    evaluation so far (`{"step": ..., <score>: ...}`, for `metrics.json`)."""

    completed_steps: int = 0
    epoch: int = 0
    batches_done_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    elapsed_seconds: float = 0.0
    eval_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `output_dir/checkpoints`, oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIRNAME
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CHECKPOINT_PATTERN.match(p.name)) and p.is_dir()]
    return [path for _, path in sorted(found)]


def resolve_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str) -> Path:
    """A checkpoint directory, which must exist and be complete (for `"latest"`, see [`resume`])."""
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
    """
    Restore model, optimizer, scheduler and RNG states from `checkpoint`; return where training stood.

    Raises:
        `CheckpointError`: when any part of it does not load (a missing or truncated file, an RNG state that is not
        restored), naming the checkpoint and the reason.
    """
    checkpoint = Path(checkpoint)
    rng_file = checkpoint / RNG_STATE_NAME.format(process_index=accelerator.process_index)
    part = TRAINING_STATE_NAME
    try:
        with open(checkpoint / TRAINING_STATE_NAME) as handle:
            state = TrainingState(**json.load(handle))
        part = f"the RNG state {rng_file.name}"
        saved_rng = accelerate_load(rng_file)
        part = "the model, optimizer or scheduler state"
        accelerator.load_state(str(checkpoint))
    except Exception as error:  # whatever a damaged file raises: safetensors, torch.load, json, a missing file
        raise CheckpointError(
            f"checkpoint {checkpoint} does not load ({part}): {type(error).__name__}: {error}"
        ) from error
    restored = (
        random.getstate() == saved_rng["random_state"]
        and _same_numpy_state(np.random.get_state(), saved_rng["numpy_random_seed"])
        and torch.equal(torch.get_rng_state(), saved_rng["torch_manual_seed"])
        and (
            not torch.cuda.is_available()
            or "torch_cuda_manual_seed" not in saved_rng
            or all(map(torch.equal, torch.cuda.get_rng_state_all(), saved_rng["torch_cuda_manual_seed"]))
        )
    )
    if not restored:
        raise CheckpointError(
            f"checkpoint {checkpoint}: its RNG states were not restored, so the resumed run would not be the one "
            "that was interrupted."
        )
    return state


def _same_numpy_state(current: tuple, saved: tuple) -> bool:
    return all(
        np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b for a, b in zip(current, saved, strict=True)
    )


def resume(
    accelerator: Accelerator, output_dir: str | os.PathLike, resume_from_checkpoint: str
) -> tuple[Path | None, TrainingState]:
    """
    Load the checkpoint `--resume_from_checkpoint` names: a directory (which must load), or `"latest"`, the newest of
    `output_dir`'s checkpoints that loads, each newer one that does not being skipped with a warning naming it.

    Returns:
        `tuple` of the checkpoint loaded (`None` for `"latest"` without any checkpoint yet: a fresh start) and its
        [`TrainingState`].

    Raises:
        `CheckpointError`: when the named checkpoint, or every checkpoint of `output_dir`, fails to load.
    """
    if resume_from_checkpoint != "latest":
        checkpoint = resolve_checkpoint(output_dir, resume_from_checkpoint)
        return checkpoint, load_checkpoint(accelerator, checkpoint)
    failures = []
    for checkpoint in reversed(checkpoint_dirs(output_dir)):
        try:
            return checkpoint, load_checkpoint(accelerator, checkpoint)
        except CheckpointError as error:
            logger.warning(f"Skipping {error}; trying the checkpoint before it.")
            failures.append(str(error))
    if failures:
        raise CheckpointError("No checkpoint loads:\n" + "\n".join(failures))
    return None, TrainingState()

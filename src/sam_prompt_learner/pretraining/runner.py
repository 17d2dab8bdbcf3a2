"""The pre-training loop, resumable in stages.

`output_dir` holds:

* `state-<step>/`: the latest resumable state (model and optimizer as safetensors, the sampling generator's state,
  `trainer_state.json` with the config, step, evaluation history and the stages run so far). It is written under a
  temporary name, renamed into place, and only then named by the `LATEST` file (replaced atomically), so a process
  killed at any moment leaves a state that loads. Nothing is unpickled on resume.
* `best/`: the best evaluation so far as a plain `sam` checkpoint (`save_pretrained` + processor + `metrics.json`),
  replaced atomically too.
* `history.json`: every evaluation, for the learning curves (`report.plot_learning_curves`).

A resumed run restores model, optimizer, step and generator, and recomputes the learning rate from the step, so it
reaches bit-identical weights to an uninterrupted run on the same machine (`tests/test_pretraining.py`). Stages
change only `STAGE_FIELDS` (time budget, threads, the cooldown that ends the run).

A branch (`pretrain(new_dir, branch_from=state, **overrides)`) starts a new run from another run's state, e.g. a
cooldown of a constant-rate trunk, and may change anything but `INIT_FIELDS`; it records where it came from and what
it changed (`branched_from` in its trainer state). Without overrides it trains exactly as a resume would.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from transformers import SamModel

from ..processing import processor_for_config
from .recipe import (
    INIT_FIELDS,
    STAGE_FIELDS,
    PretrainingConfig,
    evaluate,
    init_model,
    learning_rate_factor,
    training_step,
)
from .scenes import render_scenes

logger = logging.getLogger(__name__)

LATEST_NAME = "LATEST"
TRAINER_STATE_NAME = "trainer_state.json"
BEST_DIRNAME = "best"
HISTORY_NAME = "history.json"


def apply_overrides(stored: PretrainingConfig, overrides: dict) -> tuple[PretrainingConfig, dict[str, list]]:
    """`stored` with `overrides`, and what they change (`{field: [before, after]}`). The previous stage's limits
    (`time_budget_minutes`, `stop_after_steps`) end with it; the other fields carry over unless overridden."""
    stored = dataclasses.replace(stored, time_budget_minutes=None, stop_after_steps=None)
    changed = {name: [getattr(stored, name), new] for name, new in overrides.items() if getattr(stored, name) != new}
    return dataclasses.replace(stored, **overrides), changed


def resume_config(stored: PretrainingConfig, overrides: dict) -> PretrainingConfig:
    """`stored` with this stage's `overrides`; anything but `STAGE_FIELDS` would change what is trained: refused."""
    config, changed = apply_overrides(stored, overrides)
    refused = sorted(name for name in changed if name not in STAGE_FIELDS)
    if refused:
        raise ValueError(
            f"A resumed run trains with its stored config; these fields would change it: {refused}. Only "
            f"{list(STAGE_FIELDS)} may change between stages (otherwise branch into a new output_dir: `branch_from`)."
        )
    return config


def branch_config(stored: PretrainingConfig, overrides: dict) -> tuple[PretrainingConfig, dict]:
    """`stored` with a branch's `overrides`, and what they change; `INIT_FIELDS` are refused."""
    config, changed = apply_overrides(stored, overrides)
    refused = sorted(name for name in changed if name in INIT_FIELDS)
    if refused:
        raise ValueError(
            f"A branch starts from the parent's weights; these fields would not fit or not affect them: {refused}."
        )
    return config, changed


def branch_source(branch_from: str | os.PathLike) -> Path:
    """The state a branch starts from: `branch_from` itself (a `state-*` folder) or a run folder's latest state."""
    branch_from = Path(branch_from)
    source = branch_from if (branch_from / TRAINER_STATE_NAME).is_file() else latest_state_dir(branch_from)
    if source is None:
        raise FileNotFoundError(f"{branch_from} is neither a state folder nor a run with a saved state.")
    return source


def check_schedule(stored: PretrainingConfig, config: PretrainingConfig, step: int) -> None:
    """Refuse a cooldown set in this stage that starts before the run's `step` (the learning rate would jump into
    the middle of it, and a run already past its end would never stop)."""
    start = config.cooldown_start_step
    if start is not None and start != stored.cooldown_start_step and start < step:
        raise ValueError(
            f"cooldown_start_step {start} is before the step the run stands at, {step}: start the cooldown at {step} "
            "or later."
        )


def start_branch(output_dir: Path, source: Path) -> Path:
    """Copy the state `source` into the new run `output_dir`.

    The copy is written under a temporary name first, so a branch killed while starting starts again cleanly.
    """
    if latest_state_dir(output_dir) is not None:
        raise ValueError(f"{output_dir} holds a run already: resume it instead of branching into it.")
    output_dir.mkdir(parents=True, exist_ok=True)
    final, partial = output_dir / source.name, output_dir / f".{source.name}.partial"
    for leftover in (final, partial):
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.copytree(source, partial)
    os.replace(partial, final)
    _replace_atomically(source.name, output_dir / LATEST_NAME)
    return final


def latest_state_dir(output_dir: str | os.PathLike) -> Path | None:
    """The state `LATEST` names, or None for a run that has not saved one."""
    pointer = Path(output_dir) / LATEST_NAME
    if not pointer.is_file():
        return None
    path = Path(output_dir) / pointer.read_text().strip()
    if not (path / TRAINER_STATE_NAME).is_file():
        raise FileNotFoundError(f"{pointer} names {path.name}, which is missing or incomplete.")
    return path


def stored_trainer_state(output_dir: str | os.PathLike) -> dict:
    """A run's trainer state: from its latest state, else from a `trainer_state.json` beside it (what a finished run
    keeps once its last state folder is removed, as the committed cooldown branches do), else empty."""
    state_dir = latest_state_dir(output_dir)
    kept = Path(output_dir) / TRAINER_STATE_NAME if state_dir is None else state_dir / TRAINER_STATE_NAME
    return json.loads(kept.read_text()) if kept.is_file() else {}


def stored_config(output_dir: str | os.PathLike) -> dict:
    """The config a run trained with (`stored_trainer_state`'s), or empty."""
    return stored_trainer_state(output_dir).get("config", {})


def _replace_atomically(text: str, path: Path) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """An optimizer's state as flat tensors (`"<param index>.<name>"`) plus its JSON-able param groups."""
    state_dict = optimizer.state_dict()
    tensors = {
        f"{index}.{name}": value.detach().clone()
        for index, slots in state_dict["state"].items()
        for name, value in slots.items()
    }
    return tensors, state_dict["param_groups"]


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_state(
    output_dir: Path,
    model: SamModel,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    trainer_state: dict,
) -> Path:
    """Write `state-<step>/` atomically, point `LATEST` at it, then delete older states."""
    name = f"state-{trainer_state['step']:07d}"
    final, partial = output_dir / name, output_dir / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_model(model, str(partial / "model.safetensors"))
    tensors, groups = _optimizer_tensors(optimizer)
    save_file(tensors, str(partial / "optimizer.safetensors"))
    save_file({"generator": generator.get_state()}, str(partial / "rng.safetensors"))
    (partial / TRAINER_STATE_NAME).write_text(json.dumps({**trainer_state, "param_groups": groups}, indent=1))
    shutil.rmtree(final, ignore_errors=True)  # the same step saved again (a resumed run stopped at once)
    os.replace(partial, final)
    _replace_atomically(name, output_dir / LATEST_NAME)
    for old in output_dir.glob("state-*"):
        if old != final:
            shutil.rmtree(old)
    return final


def load_state(state_dir: Path, model: SamModel, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> dict:
    """Restore what `save_state` wrote; returns the trainer state (config, step, history, stages)."""
    trainer_state = json.loads((state_dir / TRAINER_STATE_NAME).read_text())
    missing, unexpected = load_model(model, str(state_dir / "model.safetensors"))
    if missing or unexpected:
        raise ValueError(f"{state_dir} does not fit the model: missing {missing}, unexpected {unexpected}.")
    _load_optimizer(optimizer, load_file(str(state_dir / "optimizer.safetensors")), trainer_state.pop("param_groups"))
    generator.set_state(load_file(str(state_dir / "rng.safetensors"))["generator"])
    return trainer_state


def save_best(output_dir: Path, model: SamModel, processor, metrics: dict) -> None:
    """Replace `best/` atomically with the model as a plain `sam` checkpoint and its metrics."""
    final, partial = output_dir / BEST_DIRNAME, output_dir / f".{BEST_DIRNAME}.partial"
    previous = output_dir / f".{BEST_DIRNAME}.previous"
    for leftover in (partial, previous):
        shutil.rmtree(leftover, ignore_errors=True)
    model.save_pretrained(partial)
    processor.save_pretrained(partial)
    (partial / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if final.exists():
        os.replace(final, previous)
    os.replace(partial, final)
    shutil.rmtree(previous, ignore_errors=True)


def selection_score(metrics: dict) -> float:
    """What `best/` keeps: the mean of click (own choice) and box mIoU over the validation tasks."""
    keys = [key for key in metrics if key.endswith(("_click_own", "_box"))]
    return sum(metrics[key] for key in keys) / len(keys)


def make_optimizer(model: SamModel, config: PretrainingConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only."""
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return torch.optim.AdamW(
        [
            {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": config.weight_decay},
            {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
    )


def pretrain(
    output_dir: str | os.PathLike,
    config: PretrainingConfig | None = None,
    branch_from: str | os.PathLike | None = None,
    **stage_overrides,
) -> dict:
    """Run (or continue) pre-training in `output_dir` until this stage's limit or the schedule's end.

    Args:
        output_dir: where the state, `best/` and `history.json` live. If it holds a state, the run resumes from it
            and `config` must be None; `stage_overrides` may change `STAGE_FIELDS` only.
        config: the config of a new run.
        branch_from: start `output_dir` as a branch of this state (a `state-*` folder, or a run folder's latest
            state): its weights, optimizer, step, sampling generator, history and config, where `stage_overrides`
            may then change anything but `INIT_FIELDS`. Its `best/` holds the branch's own evaluations only.

    Returns:
        The trainer state at the end of this stage.
    """
    output_dir = Path(output_dir)
    branch_changes = None
    if branch_from is not None:
        if config is not None:
            raise ValueError("A branch takes its config from the state it starts from; pass only the changes.")
        state_dir = branch_source(branch_from)
    else:
        state_dir = latest_state_dir(output_dir)
    if state_dir is not None:
        if config is not None:
            raise ValueError(f"{output_dir} holds a run ({state_dir.name}); resume it without a config.")
        saved = json.loads((state_dir / TRAINER_STATE_NAME).read_text())
        stored = PretrainingConfig(**saved["config"])
        if branch_from is not None:
            config, branch_changes = branch_config(stored, stage_overrides)
        else:
            config = resume_config(stored, stage_overrides)
        check_schedule(stored, config, saved["step"])
        if branch_from is not None:  # copied only once the branch's config is accepted
            state_dir = start_branch(output_dir, state_dir)
    else:
        config = dataclasses.replace(config or PretrainingConfig(), **stage_overrides)
    torch.set_num_threads(config.num_threads)
    output_dir.mkdir(parents=True, exist_ok=True)
    stage_start = time.monotonic()

    model = init_model(config).to(config.device)
    processor = processor_for_config(model.config)
    optimizer = make_optimizer(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    if state_dir is not None:
        trainer_state = load_state(state_dir, model, optimizer, generator)
        trainer_state["config"] = dataclasses.asdict(config)
        optimizer.param_groups[0]["weight_decay"] = config.weight_decay  # a branch may change it
        if branch_changes is not None:
            trainer_state["branched_from"] = {
                "state": str(branch_from),
                "step": trainer_state["step"],
                "changed": branch_changes,
            }
            trainer_state["best_score"] = None
            _replace_atomically(json.dumps(trainer_state["history"], indent=1), output_dir / HISTORY_NAME)
            logger.info(f"branched from {branch_from} at step {trainer_state['step']}, changing {branch_changes}")
        else:
            logger.info(f"resumed {state_dir} at step {trainer_state['step']}")
    else:
        trainer_state = {"config": dataclasses.asdict(config), "step": 0, "history": [], "best_score": None,
                         "stages": [], "compute_minutes": 0.0}  # fmt: skip
    stage = {"start_step": trainer_state["step"], "num_threads": config.num_threads,
             "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    trainer_state["stages"].append(stage)

    render_start = time.monotonic()
    # Rendered in `num_threads` processes: the stage's cores, idle until training starts.
    requests = [(task, "train", count) for task, count in zip(config.tasks, config.num_train, strict=True)]
    requests += [(task, "validation", config.num_validation) for task in config.tasks]
    banks = render_scenes(requests, config.image_size, config.data_seed, config.num_threads)
    train, validation = banks[: len(config.tasks)], banks[len(config.tasks) :]
    logger.info(
        f"rendered {[len(bank) for bank in train]} train and {[len(bank) for bank in validation]} validation images "
        f"of {config.tasks} in {time.monotonic() - render_start:.0f} s"
    )

    def stage_minutes() -> float:
        return (time.monotonic() - stage_start) / 60

    def checkpoint() -> None:
        stage.update(end_step=trainer_state["step"], minutes=round(stage_minutes(), 2))
        trainer_state["compute_minutes"] = round(compute_before + stage_minutes() * config.num_threads, 2)
        save_state(output_dir, model, optimizer, generator, trainer_state)

    def run_evaluation() -> None:
        metrics = {"step": trainer_state["step"]}
        for bank in validation:
            for name, value in evaluate(model, bank, processor).items():
                metrics[f"{bank.task}_{name}"] = round(value, 4)
        metrics["selection_score"] = round(selection_score(metrics), 4)
        trainer_state["history"].append(metrics)
        _replace_atomically(json.dumps(trainer_state["history"], indent=1), output_dir / HISTORY_NAME)
        logger.info(f"eval {json.dumps(metrics)}")
        if trainer_state["best_score"] is None or metrics["selection_score"] > trainer_state["best_score"]:
            trainer_state["best_score"] = metrics["selection_score"]
            save_best(output_dir, model, processor, {**metrics, "config": dataclasses.asdict(config)})

    compute_before = trainer_state["compute_minutes"]
    # SIGTERM (a session or job manager stopping the run) ends it after the current step, with its state saved.
    terminated = []
    previous_handler = signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    # Loss sums since the last log line, which a resumed stage may print after fewer than `log_every` steps.
    last_checkpoint, running, running_steps = time.monotonic(), {}, 0
    model.train()
    while True:
        step = trainer_state["step"]
        if step == config.final_step:
            reason = "end of schedule"
        elif config.stop_after_steps is not None and step >= config.stop_after_steps:
            reason = f"stop_after_steps {config.stop_after_steps}"
        elif config.time_budget_minutes is not None and stage_minutes() >= config.time_budget_minutes:
            reason = f"time budget {config.time_budget_minutes} min"
        elif terminated:
            reason = "SIGTERM"
        else:
            reason = None
        if reason is not None:
            scored = trainer_state["history"] and trainer_state["history"][-1]["step"] == step
            if not scored and not terminated:  # a stopped process may have little time left: save first
                run_evaluation()
            checkpoint()
            logger.info(f"stopped at step {step} ({reason}); state saved; {stage_minutes():.1f} min this stage")
            signal.signal(signal.SIGTERM, previous_handler)
            return trainer_state

        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * learning_rate_factor(step, config)
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=config.bf16):
            losses = training_step(model, train, processor, step, config, generator)
        if not torch.isfinite(losses["loss"]):
            terms = {name: float(value) for name, value in losses.items()}
            raise FloatingPointError(f"non-finite pre-training loss at step {step + 1}: {terms}")
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        trainer_state["step"] = step = step + 1
        for name, value in losses.items():
            running[name] = running.get(name, 0.0) + value.item()
        running_steps += 1
        if step % config.log_every == 0:
            summary = " ".join(f"{name} {total / running_steps:.4f}" for name, total in running.items())
            logger.info(f"step {step} {summary} lr {optimizer.param_groups[0]['lr']:.2e} ({stage_minutes():.1f} min)")
            running, running_steps = {}, 0
        if step % config.eval_every_steps == 0:
            run_evaluation()
        if (time.monotonic() - last_checkpoint) / 60 >= config.checkpoint_minutes and not terminated:
            checkpoint()
            last_checkpoint = time.monotonic()

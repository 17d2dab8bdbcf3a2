"""Reading a pre-training run's evaluations: its learning curves as a PNG, and a table of them against another run.

Both read only `history.json` and the stored trainer state (`runner.stored_trainer_state`), so they work on a
finished run whose state folders were removed, as on one still training.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from .recipe import PretrainingConfig, cooldown_done, learning_rate_factor
from .runner import HISTORY_NAME, stored_trainer_state

SCORE_SUFFIXES = ("click_own", "click_best_of_3", "box")
PARTS_SUFFIXES = ("parts_own", "parts_best_of_3")


def history_tasks(history: list[dict]) -> list[str]:
    """The tasks a history scores, in the order it lists them (each has `<task>_click_own`)."""
    keys = (key for entry in history for key in entry if key.endswith("_click_own"))
    return list(dict.fromkeys(key.removesuffix("_click_own") for key in keys))


def plot_learning_curves(
    history: list[dict], path: str | os.PathLike, title: str = "", cooldown_start_step: int | None = None
) -> None:
    """Validation mIoU per evaluation as a PNG: one panel per task with click own choice, best of 3 and box, and
    (dashed) the clicks on the parts of nested objects where the task has them; a vertical line where the learning
    rate starts to cool down, if it does.

    Needs matplotlib (the `bench` extra).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = history_tasks(history)
    figure, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False, sharey=True)
    steps = [entry["step"] for entry in history]
    for axis, task in zip(axes[0], tasks, strict=True):
        for suffix, label in (("click_own", "click, own choice"), ("click_best_of_3", "click, best of 3"),
                              ("box", "box")):  # fmt: skip
            axis.plot(steps, [entry[f"{task}_{suffix}"] for entry in history], marker=".", label=label)
        for suffix, label in (("parts_own", "part click, own choice"), ("parts_best_of_3", "part click, best of 3")):
            scored = [(entry["step"], entry[f"{task}_{suffix}"]) for entry in history if f"{task}_{suffix}" in entry]
            if scored:
                axis.plot(*zip(*scored, strict=True), linestyle="--", marker=".", label=label)
        if cooldown_start_step is not None:
            axis.axvline(cooldown_start_step, color="grey", linestyle=":", label="cooldown starts")
        axis.set(title=f"{task} validation", xlabel="step", ylim=(0, 1))
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("mIoU")
    for axis in axes[0]:
        axis.legend(loc="best", fontsize="small")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def load_history(run_dir: str | os.PathLike) -> list[dict]:
    """A run's evaluations (`history.json`), with a clear error for a folder that is not a pre-training run."""
    path = Path(run_dir) / HISTORY_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a pre-training run: it has no {HISTORY_NAME}.")
    return json.loads(path.read_text())


def _known_fields(stored: dict) -> PretrainingConfig:
    """`stored` as a config, ignoring fields this version no longer has."""
    names = {config_field.name for config_field in dataclasses.fields(PretrainingConfig)}
    return PretrainingConfig(**{name: value for name, value in stored.items() if name in names})


def _scores(entry: dict, task: str, suffixes: tuple[str, ...]) -> str:
    return " / ".join(f"{entry[f'{task}_{suffix}']:.3f}" if f"{task}_{suffix}" in entry else "-" for suffix in suffixes)


def first_own_step(trainer_state: dict) -> int:
    """The last step a run shares with its parent: where its cooldown starts, else where it branched, else 0. Its
    history holds the parent's evaluations up to there."""
    cooldown_start_step = trainer_state.get("config", {}).get("cooldown_start_step")
    if cooldown_start_step is not None:
        return cooldown_start_step
    return trainer_state.get("branched_from", {}).get("step", 0)


def comparison_table(run_dir: str | os.PathLike, other_dir: str | os.PathLike) -> str:
    """A markdown table of `run_dir`'s own evaluations (after `first_own_step`), each beside the nearest comparable
    evaluation of `other_dir`, to compare two recipes step for step.

    When both runs cool down, evaluations pair at the nearest share of their cooldowns (the same learning rate, and the
    same compute where their steps cost alike); otherwise at the nearest step. Scores: validation mIoU, click own choice
    / best of 3 / box per task, and own choice / best of 3 on the parts of nested objects where a task has them.
    """
    run_dir, other_dir = Path(run_dir), Path(other_dir)
    history, other_history = load_history(run_dir), load_history(other_dir)
    trainer_state = stored_trainer_state(run_dir)
    config = _known_fields(trainer_state.get("config", {}))
    other_config = _known_fields(stored_trainer_state(other_dir).get("config", {}))
    by_cooldown = config.cooldown_start_step is not None and other_config.cooldown_start_step is not None
    tasks = history_tasks(history)
    parts_tasks = [task for task in tasks if any(f"{task}_parts_own" in entry for entry in history)]

    def position(entry: dict, run_config: PretrainingConfig) -> float:
        return cooldown_done(entry["step"], run_config) if by_cooldown else entry["step"]

    def cells(entry: dict, run_config: PretrainingConfig) -> list[str]:
        done = cooldown_done(entry["step"], run_config)
        step = f"{entry['step']:,}" + ("" if done is None else f" ({done:.0%})")
        return (
            [step]
            + [_scores(entry, task, SCORE_SUFFIXES) for task in tasks]
            + [_scores(entry, task, PARTS_SUFFIXES) for task in parts_tasks]
        )

    score_columns = tasks + [f"{task} parts" for task in parts_tasks]
    header = ["step", "learning rate", *score_columns, f"{other_dir.name}: step", *[f"its {c}" for c in score_columns]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    first_step = first_own_step(trainer_state)
    for entry in history:
        if entry["step"] <= first_step:
            continue
        nearest = min(other_history, key=lambda other: abs(position(other, other_config) - position(entry, config)))
        learning_rate = config.learning_rate * learning_rate_factor(entry["step"], config)
        row = cells(entry, config)
        row.insert(1, f"{learning_rate:.1e}")
        lines.append("| " + " | ".join(row + cells(nearest, other_config)) + " |")
    return "\n".join(lines) + "\n"

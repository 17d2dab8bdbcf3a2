"""Reports on pre-training runs (`sam_prompt_learner.pretraining.report`): the comparison table and the curves."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from sam_prompt_learner.pretraining import PretrainingConfig, comparison_table, load_history, plot_learning_curves

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def evaluation(step: int, score: float) -> dict:
    """One history entry whose every score is `score` (so a row shows which evaluation it came from)."""
    tasks = {"simple": ("click_own", "click_best_of_3", "box"),
             "generic": ("click_own", "click_best_of_3", "box", "parts_own", "parts_best_of_3")}  # fmt: skip
    return {"step": step} | {f"{task}_{suffix}": score for task, suffixes in tasks.items() for suffix in suffixes}


def write_run(path: Path, history: list[dict], trainer_state: dict) -> Path:
    """A finished run as committed: history.json and the last trainer_state.json, no state folder."""
    path.mkdir()
    (path / "history.json").write_text(json.dumps(history))
    (path / "trainer_state.json").write_text(json.dumps(trainer_state))
    return path


def cooldown_run(path: Path, start: int, steps: int, history: list[dict]) -> Path:
    config = dataclasses.asdict(PretrainingConfig(cooldown_start_step=start, cooldown_steps=steps))
    return write_run(path, history, {"config": config, "step": start + steps})


def table_rows(table: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def test_two_cooldowns_pair_at_the_same_share_of_their_cooldowns(tmp_path):
    # A cools down over 100 steps, B over 400, both from step 1,000 (past the warmup): A's 1,050 is half way, as is
    # B's 1,200.
    shared = [evaluation(500, 0.1), evaluation(1000, 0.2)]
    run_a = cooldown_run(tmp_path / "a", 1000, 100, [*shared, evaluation(1050, 0.5), evaluation(1100, 0.6)])
    run_b = cooldown_run(
        tmp_path / "b", 1000, 400, [*shared, evaluation(1100, 0.3), evaluation(1200, 0.4), evaluation(1400, 0.7)]
    )
    table = comparison_table(run_a, run_b)
    header = table.splitlines()[0]
    assert header.startswith("| step | learning rate | simple | generic | generic parts | b: step |")
    rows = table_rows(table)
    assert [row[0] for row in rows] == ["1,050 (50%)", "1,100 (100%)"]  # not the parent's evaluations
    assert rows[0][1] == "5.0e-04" and rows[1][1] == "0.0e+00"  # the default 1e-3, half way down, then 0
    assert rows[0][2:5] == ["0.500 / 0.500 / 0.500", "0.500 / 0.500 / 0.500", "0.500 / 0.500"]
    assert rows[0][5:] == ["1,200 (50%)", "0.400 / 0.400 / 0.400", "0.400 / 0.400 / 0.400", "0.400 / 0.400"]
    assert rows[1][5] == "1,400 (100%)"


def test_runs_at_a_constant_rate_pair_at_the_nearest_step_from_where_the_branch_began(tmp_path):
    config = dataclasses.asdict(PretrainingConfig())
    history = [evaluation(1000, 0.1), evaluation(2000, 0.2), evaluation(2500, 0.3), evaluation(3000, 0.4)]
    branch = write_run(
        tmp_path / "branch",
        history,
        {"config": config, "step": 3000, "branched_from": {"state": "trunk/state-0002000", "step": 2000}},
    )
    trunk = write_run(tmp_path / "trunk", [evaluation(2000, 0.2), evaluation(2400, 0.35), evaluation(3100, 0.45)], {
        "config": config, "step": 3100})  # fmt: skip
    rows = table_rows(comparison_table(branch, trunk))
    assert [(row[0], row[5]) for row in rows] == [("2,500", "2,400"), ("3,000", "3,100")]


def test_a_folder_that_is_not_a_run_is_named_in_the_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is not a pre-training run: it has no history.json"):
        load_history(tmp_path / "nothing")


def test_the_command_line_prints_the_table_and_refuses_two_reports_at_once(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("pretrain_tiny_sam", EXAMPLES / "pretrain_tiny_sam.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    run_a = cooldown_run(tmp_path / "a", 0, 10, [evaluation(10, 0.9)])
    run_b = cooldown_run(tmp_path / "b", 0, 20, [evaluation(20, 0.8)])
    script.main(["--output_dir", str(run_a), "--compare", str(run_b)])
    assert capsys.readouterr().out == comparison_table(run_a, run_b)
    with pytest.raises(SystemExit, match="missing is not a pre-training run"):
        script.main(["--output_dir", str(run_a), "--compare", str(tmp_path / "missing")])
    with pytest.raises(SystemExit):
        script.parse_args(["--output_dir", str(run_a), "--compare", str(run_b), "--plot"])


def test_the_curves_have_a_panel_per_task_in_the_history_order(tmp_path, monkeypatch):
    matplotlib_figure = pytest.importorskip("matplotlib.figure")
    titles, save = [], matplotlib_figure.Figure.savefig

    def record_titles(figure, *args, **kwargs):
        titles.extend(axis.get_title() for axis in figure.axes)
        return save(figure, *args, **kwargs)

    monkeypatch.setattr(matplotlib_figure.Figure, "savefig", record_titles)
    plot_learning_curves([evaluation(10, 0.5), evaluation(20, 0.6)], tmp_path / "curves.png", cooldown_start_step=15)
    assert titles == ["simple validation", "generic validation"]
    assert (tmp_path / "curves.png").stat().st_size > 0

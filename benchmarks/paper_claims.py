"""Check the four claims of the method (`../shared/METHOD.md`, "Claims to check") at small scale.

Every method adapts the embedded tiny SAM to every task scenario with the same data, steps, batch size, seeds and
evaluation prompts, through `examples/train.py` (one subprocess per run, so each run is exactly what a user runs):

| method | trainable | model |
|---|---|---|
| `zero_shot` | nothing | the base SAM; single-mask answer (the model's own choice) and oracle best of 3 for reference |
| `decoder_ft` | mask decoder | plain SAM (no prompt learner, no head): the common notebook recipe |
| `plm` | prompt learner | decoder frozen, no point-matching head |
| `plm_head` | prompt learner + point-matching head | the package's default |
| `plm_decoder` | prompt learner + mask decoder | no head |
| `lora_decoder` | LoRA on the mask decoder | plain SAM (no prompt learner, no head) |

All methods train with the package's loss (focal + dice + IoU, plus the head's terms for `plm_head`), so the methods
differ only in what is trained. Each method uses its own learning rate, the best of `--learning_rates` on a sweep
(first scenario, first seed, final mIoU), because one shared rate would favour whichever method it happens to suit;
`--package_defaults` skips the sweep and runs every method as a user would, at the training script's default rates
(by trained part), delivering its best evaluation (step 0 included) as the script does by default.

Reported per scenario and method (mean and std over seeds): mIoU and boundary IoU of the model's own mask choice on
the validation split, trainable parameters, training wall time (evaluations excluded), the step and the seconds at
which the learning curve first reaches 95% of decoder fine-tuning's final mIoU (same scenario and seed), and prompt
robustness: the standard deviation of each object's IoU over `--robustness_draws` single-click draws, placed
uniformly inside the object and near its edge, averaged over objects. Learning curves go to a PNG.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/paper_claims.py
    .venv/bin/python benchmarks/paper_claims.py --quick   # one scenario, one seed, few steps: checks the script

Results: `benchmarks/results/paper_claims-cpu.json` and `paper_claims-learning-curves.png`; run directories (models,
metrics) under `--runs_dir`. A run whose `metrics.json` exists there is reused (the default directory is keyed by the
base model's weights), so an interrupted benchmark resumes; pass `--fresh` to retrain.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import transformers

from sam_prompt_learner.embedded import embedded_model_path

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "examples" / "train.py"
NO_PLM_NO_HEAD = "prompt_learner_depth=0,use_point_matching_head=false"
NO_HEAD = "use_point_matching_head=false"
# method -> (train.py --trainable, --config_overrides)
METHODS: dict[str, tuple[list[str], str | None]] = {
    "decoder_ft": (["mask_decoder"], NO_PLM_NO_HEAD),
    "plm": (["prompt_learner"], NO_HEAD),
    "plm_head": (["prompt_learner", "point_matching_head"], None),
    "plm_decoder": (["prompt_learner", "mask_decoder"], NO_HEAD),
    "lora_decoder": (["lora"], NO_PLM_NO_HEAD),
}
REFERENCE = "decoder_ft"
TARGET_FRACTION = 0.95
PLACEMENTS = ("uniform", "edge")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", default=["plates", "face_parts", "banners"])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model", default=None, help="Base SAM (default: the embedded tiny SAM).")
    parser.add_argument("--max_train_steps", type=int, default=400)
    parser.add_argument("--eval_steps", type=int, default=25, help="Learning-curve resolution.")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--num_train", type=int, default=200, help="Training images per scenario.")
    parser.add_argument("--num_eval", type=int, default=60, help="Validation images scored.")
    parser.add_argument("--learning_rates", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3, 1e-2])
    parser.add_argument(
        "--package_defaults", action="store_true", help="No sweep: the training script's default learning rates."
    )
    parser.add_argument("--robustness_draws", type=int, default=5)
    parser.add_argument(
        "--runs_dir",
        type=Path,
        default=None,
        help="Default: outputs/paper_claims/<base model weights' SHA-256 prefix>.",
    )
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "paper_claims-cpu.json")
    parser.add_argument("--plot", type=Path, default=None, help="Default: next to --output, *-learning-curves.png.")
    parser.add_argument("--jobs", type=int, default=1, help="Runs at a time (each in its own process).")
    parser.add_argument("--fresh", action="store_true", help="Retrain runs that already have results.")
    parser.add_argument("--quick", action="store_true", help="plates, seed 0, 40 steps, one learning rate.")
    args = parser.parse_args(argv)
    if args.quick:
        args.scenarios, args.seeds, args.max_train_steps, args.eval_steps = ["plates"], [0], 40, 10
        args.num_train, args.num_eval, args.learning_rates, args.robustness_draws = 16, 8, [1e-3], 2
    args.model = args.model or str(embedded_model_path())
    args.runs_dir = args.runs_dir or REPO / "outputs" / "paper_claims" / model_fingerprint(args.model)
    args.done = set()  # what this invocation (re)computed, so that --fresh does not redo it
    args.plot = args.plot or args.output.with_name(args.output.stem.split("-")[0] + "-learning-curves.png")
    return args


def model_fingerprint(model: str) -> str:
    """First 12 hex digits of the SHA-256 of a local checkpoint's weights (a Hub id: the id), so that runs of another
    base model are never reused."""
    weights = Path(model) / "model.safetensors"
    if not weights.is_file():
        return model.replace("/", "--")
    return hashlib.sha256(weights.read_bytes()).hexdigest()[:12]


def run(command: list[str]) -> None:
    """Run a subprocess, streaming nothing; on failure show its output's tail and stop."""
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if completed.returncode != 0:
        tail = (completed.stdout + completed.stderr)[-3000:]
        raise SystemExit(f"paper_claims.py: command failed ({completed.returncode}): {' '.join(command)}\n{tail}")


def run_dir(args, scenario: str, method: str, seed: int, learning_rate: float | None) -> Path:
    return args.runs_dir / scenario / f"{method}-lr{rate_name(learning_rate)}" / f"seed-{seed}"


def rate_name(learning_rate: float | None) -> str:
    """A learning rate as the runs and tables name it (`None`: the training script's defaults)."""
    return "default" if learning_rate is None else f"{learning_rate:g}"


def train(args, scenario: str, method: str, seed: int, learning_rate: float | None) -> dict:
    """One `examples/train.py` run; returns its `metrics.json` (reused when present, or done in this invocation)."""
    output_dir = run_dir(args, scenario, method, seed, learning_rate)
    metrics_file = output_dir / "metrics.json"
    if (args.fresh and output_dir not in args.done) or not metrics_file.exists():
        trainable, overrides = METHODS[method]
        command = [
            sys.executable, str(TRAIN_SCRIPT),
            "--model_name_or_path", args.model,
            "--dataset_name", scenario,
            "--synthetic_num_train", str(args.num_train),
            "--max_eval_samples", str(args.num_eval),
            "--max_train_steps", str(args.max_train_steps),
            "--eval_steps", str(args.eval_steps),
            "--per_device_train_batch_size", str(args.batch_size),
            "--seed", str(seed),
            "--trainable", *trainable,
            "--num_grid_examples", "4",
            "--output_dir", str(output_dir),
            "--overwrite_output_dir",
        ]  # fmt: skip
        if overrides:
            command += ["--config_overrides", overrides]
        if learning_rate is not None:
            command += ["--learning_rate", str(learning_rate)]
        started = time.perf_counter()
        run(command)
        args.done.add(output_dir)
        print(
            f"  {scenario} {method} lr {rate_name(learning_rate)} seed {seed}: {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    return json.loads(metrics_file.read_text())


def evaluate(args, model: str, scenario: str, result_file: Path, *options: str) -> dict:
    """The `evaluate` CLI's scores of `model` on the validation split (reused if present)."""
    if (args.fresh and result_file not in args.done) or not result_file.exists():
        result_file.parent.mkdir(parents=True, exist_ok=True)
        run([
            sys.executable, "-m", "sam_prompt_learner.cli", "evaluate",
            "--model", model,
            "--dataset", scenario,
            "--split", "validation",
            "--max_samples", str(args.num_eval),
            "--output", str(result_file),
            *options,
        ])  # fmt: skip
        args.done.add(result_file)
    return json.loads(result_file.read_text())["scores"]


def robustness(args, model: str, scenario: str, placement: str, result_file: Path) -> dict:
    """IoU spread over `--robustness_draws` single-click draws per object, the clicks placed by `placement`."""
    options = ["--prompt_mode", "points", "--point_placement", placement, "--selections", "predicted_iou"]
    draws = ["--robustness_draws", str(args.robustness_draws)]
    return evaluate(args, model, scenario, result_file, *options, *draws)["robustness"]


def box_prompt_reference(args, scenario: str) -> dict:
    """The base SAM's answer to each object's tight box (single-mask output): roughly the best a method that only
    changes prompts can reach, since the PLM's ideal is to turn a click into such a prompt."""
    result_file = args.runs_dir / scenario / "zero_shot" / "box.json"
    return evaluate(args, args.model, scenario, result_file, "--prompt_mode", "box", "--selections", "single")["single"]


def steps_to_target(history: list[dict], target: float) -> int | None:
    """First evaluated step whose mIoU reaches `target`; None if the curve never does."""
    return next((point["step"] for point in history if point["mean_iou"] >= target), None)


def with_step_zero(history: list[dict], zero_shot: dict) -> list[dict]:
    """A run's learning curve from step 0 (the training script records step 0 itself since it delivers the best
    evaluation; older runs start at the first evaluation)."""
    return history if history and history[0]["step"] == 0 else [{"step": 0, **zero_shot}, *history]


def mean_std(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def in_parallel(args, calls: list[tuple]) -> None:
    """Run `(function, *arguments)` calls `--jobs` at a time (each call waits on its own subprocess)."""
    with ThreadPoolExecutor(args.jobs) as pool:
        for future in [pool.submit(*call) for call in calls]:
            future.result()


def sweep_learning_rates(args) -> dict[str, float | None]:
    """Each method's learning rate: the best final mIoU on the first scenario and seed (`None` for every method with
    `--package_defaults`)."""
    if args.package_defaults:
        return dict.fromkeys(args.methods)
    chosen, scenario, seed = {}, args.scenarios[0], args.seeds[0]
    in_parallel(args, [(train, args, scenario, m, seed, rate) for m in args.methods for rate in args.learning_rates])
    for method in args.methods:
        finals = {
            rate: train(args, scenario, method, seed, rate)["adapted"]["predicted_iou"]["mean_iou"]
            for rate in args.learning_rates
        }
        chosen[method] = max(finals, key=finals.get)
        print(f"{method}: final mIoU by learning rate {finals} -> {chosen[method]:g}", flush=True)
    return chosen


def run_scenario(args, scenario: str, learning_rates: dict[str, float]) -> None:
    """Every training run of a scenario, then every robustness evaluation, `--jobs` at a time."""
    runs = [(method, seed) for method in args.methods for seed in args.seeds]
    in_parallel(args, [(train, args, scenario, method, seed, learning_rates[method]) for method, seed in runs])
    box_prompt_reference(args, scenario)
    models = [(args.model, args.runs_dir / scenario / "zero_shot")]
    models += [(str(d), d) for d in (run_dir(args, scenario, m, s, learning_rates[m]) for m, s in runs)]
    in_parallel(
        args,
        [
            (robustness, args, model, scenario, placement, directory / f"robustness-{placement}.json")
            for model, directory in models
            for placement in PLACEMENTS
        ],
    )


def summarize_scenario(args, scenario: str, learning_rates: dict[str, float]) -> dict:
    runs = {method: {seed: train(args, scenario, method, seed, learning_rates[method]) for seed in args.seeds}
            for method in args.methods}  # fmt: skip
    first = runs[args.methods[0]][args.seeds[0]]
    zero_shot = first["zero_shot"]
    methods = {
        "zero_shot": {
            "miou": zero_shot["predicted_iou"]["mean_iou"],
            "boundary_iou": zero_shot["predicted_iou"]["mean_boundary_iou"],
            "oracle_miou": zero_shot["oracle"]["mean_iou"],
            "oracle_boundary_iou": zero_shot["oracle"]["mean_boundary_iou"],
            "box_prompt_miou": box_prompt_reference(args, scenario)["mean_iou"],
            "trainable_parameters": 0,
            "robustness": {
                placement: robustness(
                    args,
                    args.model,
                    scenario,
                    placement,
                    args.runs_dir / scenario / "zero_shot" / f"robustness-{placement}.json",
                )
                for placement in PLACEMENTS
            },
        }
    }
    for method, by_seed in runs.items():
        per_seed = []
        for seed, metrics in by_seed.items():
            adapted = metrics["adapted"]
            train_seconds = metrics["train_wall_time_seconds"] - metrics["eval_wall_time_seconds"]
            seconds_per_step = train_seconds / metrics["completed_steps"]
            reference = runs[REFERENCE][seed]["adapted"]["predicted_iou"]["mean_iou"] if REFERENCE in runs else None
            target = None if reference is None else TARGET_FRACTION * reference
            step = None if target is None else steps_to_target(adapted["history"], target)
            directory = run_dir(args, scenario, method, seed, learning_rates[method])
            per_seed.append(
                {
                    "seed": seed,
                    "miou": adapted["predicted_iou"]["mean_iou"],
                    "boundary_iou": adapted["predicted_iou"]["mean_boundary_iou"],
                    "oracle_miou": adapted["oracle"]["mean_iou"],
                    "train_seconds": train_seconds,
                    "target_miou": target,
                    "steps_to_target": step,
                    "seconds_to_target": None if step is None else step * seconds_per_step,
                    "robustness": {
                        placement: robustness(
                            args, str(directory), scenario, placement, directory / f"robustness-{placement}.json"
                        )
                        for placement in PLACEMENTS
                    },  # fmt: skip
                    "history": with_step_zero(adapted["history"], metrics["zero_shot"]["predicted_iou"]),
                }
            )
        reached = [row["steps_to_target"] for row in per_seed if row["steps_to_target"] is not None]
        methods[method] = {
            "learning_rate": learning_rates[method],
            "trainable_parameters": by_seed[args.seeds[0]]["trainable_parameters"],
            "miou": mean_std([row["miou"] for row in per_seed]),
            "boundary_iou": mean_std([row["boundary_iou"] for row in per_seed]),
            "oracle_miou": mean_std([row["oracle_miou"] for row in per_seed]),
            "train_seconds": mean_std([row["train_seconds"] for row in per_seed]),
            "seeds_reaching_target": len(reached),
            "steps_to_target": mean_std(reached) if reached else None,
            "seconds_to_target": (
                mean_std([row["seconds_to_target"] for row in per_seed if row["seconds_to_target"] is not None])
                if reached
                else None
            ),
            "robustness_iou_std": {
                placement: mean_std([row["robustness"][placement]["iou_std"] for row in per_seed])
                for placement in PLACEMENTS
            },
            "robustness_relative_spread": {
                placement: mean_std([relative_spread(row["robustness"][placement]) for row in per_seed])
                for placement in PLACEMENTS
            },
            "per_seed": per_seed,
        }
    return methods


def relative_spread(robustness: dict) -> float:
    """Mean per-object IoU std over the draws divided by the mean IoU. The plain std is not comparable between models
    of different accuracy: a model whose IoU is near 0 everywhere varies little because it is uniformly wrong."""
    return robustness["iou_std"] / max(robustness["iou_mean"], 1e-9)


def answer_claims(results: dict[str, dict]) -> dict[str, dict]:
    """The four claims, each answered per scenario from the measured means, with the numbers used."""
    claims = {"1_accuracy": {}, "2_efficiency": {}, "3_boundaries": {}, "4_robustness": {}}
    for scenario, methods in results.items():
        zero_shot, decoder = methods["zero_shot"], methods.get(REFERENCE)
        learners = {name: methods[name] for name in ("plm", "plm_head") if name in methods}
        if decoder is None or not learners:
            continue
        best_name = max(learners, key=lambda name: learners[name]["miou"]["mean"])
        best = learners[best_name]
        # "matches": short of decoder fine-tuning by less than the larger of the two standard deviations over seeds.
        tolerance = max(decoder["miou"]["std"], best["miou"]["std"])
        claims["1_accuracy"][scenario] = {
            "holds": best["miou"]["mean"] > zero_shot["miou"]
            and best["miou"]["mean"] >= decoder["miou"]["mean"] - tolerance,
            "zero_shot_miou": zero_shot["miou"],
            "decoder_ft_miou": decoder["miou"]["mean"],
            "tolerance": tolerance,
            "best_plm_method": best_name,
            "best_plm_miou": best["miou"]["mean"],
        }
        claims["2_efficiency"][scenario] = {
            "holds": best["trainable_parameters"] < decoder["trainable_parameters"]
            and best["steps_to_target"] is not None
            and best["seeds_reaching_target"] == len(best["per_seed"])
            and decoder["steps_to_target"] is not None
            and best["steps_to_target"]["mean"] < decoder["steps_to_target"]["mean"],
            "method": best_name,
            # The project's goal: <= half decoder fine-tuning's steps with <= 1/5 of its trainable parameters.
            "parameter_ratio": best["trainable_parameters"] / decoder["trainable_parameters"],
            "steps_ratio": (
                best["steps_to_target"]["mean"] / decoder["steps_to_target"]["mean"]
                if best["steps_to_target"] and decoder["steps_to_target"]
                else None
            ),
            "trainable_parameters": best["trainable_parameters"],
            "decoder_ft_trainable_parameters": decoder["trainable_parameters"],
            "steps_to_target": best["steps_to_target"],
            "decoder_ft_steps_to_target": decoder["steps_to_target"],
            "seconds_to_target": best["seconds_to_target"],
            "decoder_ft_seconds_to_target": decoder["seconds_to_target"],
        }
        if "plm" in methods and "plm_head" in methods:
            claims["3_boundaries"][scenario] = {
                "holds": methods["plm_head"]["boundary_iou"]["mean"] > methods["plm"]["boundary_iou"]["mean"],
                "plm_boundary_iou": methods["plm"]["boundary_iou"],
                "plm_head_boundary_iou": methods["plm_head"]["boundary_iou"],
            }
        # Answered on the relative spread (std / mean IoU); the plain std is reported next to it.
        claims["4_robustness"][scenario] = {
            "holds": all(
                best["robustness_relative_spread"][placement]["mean"]
                < relative_spread(zero_shot["robustness"][placement])
                for placement in PLACEMENTS
            ),
            "holds_on_plain_std": all(
                best["robustness_iou_std"][placement]["mean"] < zero_shot["robustness"][placement]["iou_std"]
                for placement in PLACEMENTS
            ),
            "method": best_name,
            **{
                f"{placement}_clicks": {
                    "zero_shot_iou_std": zero_shot["robustness"][placement]["iou_std"],
                    "zero_shot_relative_spread": relative_spread(zero_shot["robustness"][placement]),
                    f"{best_name}_iou_std": best["robustness_iou_std"][placement]["mean"],
                    f"{best_name}_relative_spread": best["robustness_relative_spread"][placement]["mean"],
                }
                for placement in PLACEMENTS
            },
        }
    return claims


def markdown_tables(results: dict[str, dict]) -> str:
    """One table per scenario (means ± std over seeds), as BENCHMARKS.md shows them."""

    def cell(summary: dict | None, digits: int = 3) -> str:
        if summary is None:
            return "not reached"
        return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"

    lines = []
    for scenario, methods in results.items():
        lines += [
            f"**{scenario}**",
            "",
            "| method | lr | trainable params | mIoU | boundary IoU | train s | steps to target | s to target "
            "| IoU std (/ mIoU), uniform clicks | IoU std (/ mIoU), edge clicks |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        zero_shot = methods["zero_shot"]
        spread = {
            placement: f"{zero_shot['robustness'][placement]['iou_std']:.3f} "
            f"({relative_spread(zero_shot['robustness'][placement]):.2f})"
            for placement in PLACEMENTS
        }
        lines.append(
            f"| zero-shot (oracle best of 3; tight box) | | 0 | {zero_shot['miou']:.3f} "
            f"({zero_shot['oracle_miou']:.3f}; {zero_shot['box_prompt_miou']:.3f}) "
            f"| {zero_shot['boundary_iou']:.3f} | | | | {spread['uniform']} | {spread['edge']} |"
        )
        for method, summary in methods.items():
            if method == "zero_shot":
                continue
            reached = f" ({summary['seeds_reaching_target']}/{len(summary['per_seed'])} seeds)"
            lines.append(
                f"| {method} | {rate_name(summary['learning_rate'])} | {summary['trainable_parameters']:,} "
                f"| {cell(summary['miou'])} | {cell(summary['boundary_iou'])} | {cell(summary['train_seconds'], 1)} "
                f"| {cell(summary['steps_to_target'], 0)}{reached} | {cell(summary['seconds_to_target'], 1)} "
                + "".join(
                    f"| {summary['robustness_iou_std'][placement]['mean']:.3f} "
                    f"({summary['robustness_relative_spread'][placement]['mean']:.2f}) "
                    for placement in PLACEMENTS
                )
                + "|"
            )
        lines.append("")
    return "\n".join(lines)


def plot_learning_curves(results: dict[str, dict], path: Path) -> None:
    """mIoU against step, one panel per scenario, one line per method (mean over seeds, band = min..max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for axis, (scenario, methods) in zip(axes[0], results.items(), strict=True):
        for method, summary in methods.items():
            if method == "zero_shot":
                axis.axhline(summary["miou"], color="grey", linestyle="--", label="zero-shot")
                continue
            curves = [row["history"] for row in summary["per_seed"]]
            steps = [point["step"] for point in curves[0]]
            values = torch.tensor([[point["mean_iou"] for point in curve] for curve in curves])
            axis.plot(steps, values.mean(0), label=method)
            axis.fill_between(steps, values.min(0).values, values.max(0).values, alpha=0.15)
        axis.set_title(scenario)
        axis.set_xlabel("optimizer step")
        axis.set_ylabel("validation mIoU (own mask choice)")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    learning_rates = sweep_learning_rates(args)
    results = {}
    for scenario in args.scenarios:
        print(f"{scenario}:", flush=True)
        run_scenario(args, scenario, learning_rates)
        results[scenario] = summarize_scenario(args, scenario, learning_rates)
    claims = answer_claims(results)
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "settings": {
            name: value if isinstance(value, (int, float, str, list)) else str(value)
            for name, value in vars(args).items()
            if name != "done"
        },
        "learning_rates": learning_rates,
        "claims": claims,
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    plot_learning_curves(results, args.plot)
    args.output.with_suffix(".md").write_text(markdown_tables(results))
    for name, by_scenario in claims.items():
        verdicts = ", ".join(
            f"{scenario} {'yes' if answer['holds'] else 'no'}" for scenario, answer in by_scenario.items()
        )
        print(f"claim {name}: {verdicts}")
    print(f"results: {args.output} (tables: {args.output.with_suffix('.md')})\nlearning curves: {args.plot}")


if __name__ == "__main__":
    main()

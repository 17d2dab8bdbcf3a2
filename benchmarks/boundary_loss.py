"""Ablate the point-matching head's two loss terms (claim 3 of `../shared/METHOD.md`: the head raises boundary IoU).

On one task scenario, with the prompt learner trained and the decoder frozen, exactly as `paper_claims.py` runs its
`plm` and `plm_head` methods (same data, steps, seeds, evaluation prompts, and the learning rate that benchmark chose
for `plm_head`), this varies what the head adds to the loss:

| variant | point-matching (Hungarian L1) weight | boundary-band BCE weight |
|---|---|---|
| `plm` | no head | no head |
| `plm_head` (the default) | 1 | 0.1 |
| `match_only` | 1 | 0 |
| `band_only` | 0 | 0.1 |
| `band_1.0` | 1 | 1.0 |

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/boundary_loss.py --jobs 2

Runs go to `paper_claims.py`'s run directory (so its `plm` and `plm_head` runs are reused); results to
`benchmarks/results/boundary_loss-cpu.json` and a Markdown table next to it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import paper_claims
from paper_claims import METHODS, in_parallel, mean_std, train

VARIANTS = {
    "match_only": "boundary_point_loss_weight=0.0",
    "band_only": "point_matching_loss_weight=0.0",
    "band_1.0": "boundary_point_loss_weight=1.0",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="plates")
    parser.add_argument("--claims", type=Path, default=paper_claims.REPO / "benchmarks/results/paper_claims-cpu.json")
    parser.add_argument("--output", type=Path, default=paper_claims.REPO / "benchmarks/results/boundary_loss-cpu.json")
    parser.add_argument("--jobs", type=int, default=1)
    own = parser.parse_args(argv)
    claims = json.loads(own.claims.read_text())
    settings = claims["settings"]
    # The benchmark's own settings, so that its plm and plm_head runs are reused and everything else matches them.
    args = paper_claims.parse_args(
        ["--model", settings["model"], "--runs_dir", settings["runs_dir"], "--jobs", str(own.jobs)]
        + ["--seeds", *map(str, settings["seeds"])]
        + [f"--{name}={settings[name]}" for name in ("max_train_steps", "eval_steps", "batch_size", "num_train")]
        + [f"--num_eval={settings['num_eval']}"]
    )
    learning_rate = claims["learning_rates"]["plm_head"]
    trainable = METHODS["plm_head"][0]
    for name, overrides in VARIANTS.items():
        METHODS[name] = (trainable, overrides)
    variants = ["plm", "plm_head", *VARIANTS]
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    in_parallel(
        args, [(train, args, own.scenario, name, seed, learning_rate) for name in variants for seed in args.seeds]
    )
    results = {}
    for name in variants:
        runs = [train(args, own.scenario, name, seed, learning_rate) for seed in args.seeds]
        results[name] = {
            "config_overrides": METHODS[name][1],
            "miou": mean_std([run["adapted"]["predicted_iou"]["mean_iou"] for run in runs]),
            "boundary_iou": mean_std([run["adapted"]["predicted_iou"]["mean_boundary_iou"] for run in runs]),
            "oracle_miou": mean_std([run["adapted"]["oracle"]["mean_iou"] for run in runs]),
            "min_miou_along_curve": mean_std([min(p["mean_iou"] for p in run["adapted"]["history"]) for run in runs]),
        }
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "started": started,
        "scenario": own.scenario,
        "learning_rate": learning_rate,
        "seeds": args.seeds,
        "zero_shot": runs[0]["zero_shot"]["predicted_iou"],
        "results": results,
    }
    own.output.write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "| variant | overrides | mIoU | boundary IoU | oracle mIoU | lowest mIoU along the curve |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        cells = [f"{result[key]['mean']:.3f} ± {result[key]['std']:.3f}"
                 for key in ("miou", "boundary_iou", "oracle_miou", "min_miou_along_curve")]  # fmt: skip
        lines.append(f"| {name} | {result['config_overrides'] or ''} | {' | '.join(cells)} |")
    own.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

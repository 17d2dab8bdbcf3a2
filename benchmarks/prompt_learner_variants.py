"""Which prompt-learner design adapts a base SAM (issue 11): each design is a config option, identity at
initialisation, trained as `paper_claims.py` trains its `plm_head` method (same data, steps, batch, evaluation
prompts; one `examples/train.py` subprocess per run), on every base, scenario, seed and learning rate asked for.

| variant | what it adds to `plm_head` |
|---|---|
| `plm_head` | nothing: the paper's PLM on the sparse prompt tokens, with the point-matching head |
| `pre_norm` | pre-norm blocks, a final LayerNorm before the zero-initialised output (`prompt_learner_norm_first`) |
| `gate` | a per-channel gate at zero on a normally initialised output (`prompt_learner_gate`) |
| `task_tokens` | 8 learnable tokens the prompts read in the PLM's self-attention (`prompt_learner_num_task_tokens`) |
| `dense` | an update of the dense embedding, per image (`prompt_learner_update_dense`, MLP width 4 x hidden) |
| `depth2` | a second PLM block |
| `score_offsets` | a learnable offset per mask token on the predicted IoU (`prompt_learner_mask_score_offsets`) |
| `offsets_dense`, `offsets_pre_norm`, `offsets_dense_pre_norm` | the combinations (dense MLP width 4 x hidden) |
| `offsets_narrow_dense` | offsets and the dense update at its default width (hidden): the package's defaults |
| `decoder_ft` | the reference: plain SAM's mask decoder trained instead (`paper_claims.py`'s method) |

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/prompt_learner_variants.py \\
        --bases outputs/bases/v3-4081 --learning_rates 3e-3

Every run keeps its whole learning curve; the table gives the zero-shot score, the score at the last step and the
best score along the curve (validation mIoU of the model's own mask choice), and the boundary IoU at the last step.
Runs go to `outputs/prompt_learner_variants/<base weights' SHA-256 prefix>/` and are reused when their
`metrics.json` exists; results to `benchmarks/results/prompt_learner_variants-cpu.json` and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import paper_claims
from paper_claims import METHODS, in_parallel, mean_std, model_fingerprint, train

PLM_HEAD = METHODS["plm_head"][0]
# The prompt learner as the paper describes it (sparse tokens only); the package's defaults add the two below.
PAPER_PLM = "prompt_learner_update_dense=false,prompt_learner_mask_score_offsets=false"
VARIANTS = {
    "plm_head": (PLM_HEAD, PAPER_PLM),
    "pre_norm": (PLM_HEAD, f"{PAPER_PLM},prompt_learner_norm_first=true"),
    "gate": (PLM_HEAD, f"{PAPER_PLM},prompt_learner_gate=true"),
    "task_tokens": (PLM_HEAD, f"{PAPER_PLM},prompt_learner_num_task_tokens=8"),
    "dense": (
        PLM_HEAD,
        "prompt_learner_update_dense=true,prompt_learner_dense_mlp_dim=256,prompt_learner_mask_score_offsets=false",
    ),
    "depth2": (PLM_HEAD, f"{PAPER_PLM},prompt_learner_depth=2"),
    "score_offsets": (PLM_HEAD, "prompt_learner_update_dense=false,prompt_learner_mask_score_offsets=true"),
    "offsets_dense": (
        PLM_HEAD,
        "prompt_learner_mask_score_offsets=true,prompt_learner_update_dense=true,prompt_learner_dense_mlp_dim=256",
    ),
    "offsets_pre_norm": (
        PLM_HEAD,
        "prompt_learner_mask_score_offsets=true,prompt_learner_update_dense=false,prompt_learner_norm_first=true",
    ),
    "offsets_dense_pre_norm": (
        PLM_HEAD,
        "prompt_learner_mask_score_offsets=true,prompt_learner_update_dense=true,prompt_learner_norm_first=true,"
        "prompt_learner_dense_mlp_dim=256",
    ),
    "offsets_narrow_dense": (PLM_HEAD, None),  # the package's defaults since this study
    "decoder_ft": METHODS["decoder_ft"],
}


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bases", nargs="+", required=True, help="Base SAM checkpoints (directories or Hub ids).")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--scenarios", nargs="+", default=["plates", "face_parts", "banners"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--learning_rates", type=float, nargs="+", default=[3e-3])
    parser.add_argument("--max_train_steps", type=int, default=400)
    parser.add_argument("--eval_steps", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument(
        "--output", type=Path, default=paper_claims.REPO / "benchmarks/results/prompt_learner_variants-cpu.json"
    )
    own = parser.parse_args(argv)
    METHODS.update(VARIANTS)
    return own, [
        paper_claims.parse_args(
            ["--model", base, "--jobs", str(own.jobs), "--seeds", *map(str, own.seeds)]
            + ["--max_train_steps", str(own.max_train_steps), "--eval_steps", str(own.eval_steps)]
            + ["--runs_dir", str(paper_claims.REPO / "outputs/prompt_learner_variants" / model_fingerprint(base))]
        )
        for base in own.bases
    ]


def summarize(runs: list[dict]) -> dict:
    """Mean and std over seeds of what the table shows."""
    curves = [run["adapted"]["history"] for run in runs]
    return {
        "trainable_parameters": runs[0]["trainable_parameters"],
        "zero_shot_miou": runs[0]["zero_shot"]["predicted_iou"]["mean_iou"],
        "last_miou": mean_std([curve[-1]["mean_iou"] for curve in curves]),
        "best_miou": mean_std([max(p["mean_iou"] for p in curve if p["step"] > 0) for curve in curves]),
        "last_boundary_iou": mean_std([curve[-1]["mean_boundary_iou"] for curve in curves]),
        "curves": [[(point["step"], round(point["mean_iou"], 4)) for point in curve] for curve in curves],
    }


def main(argv: list[str] | None = None) -> None:
    own, per_base = parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    grid = [(v, s, seed, lr) for v in own.variants for s in own.scenarios for seed in own.seeds
            for lr in own.learning_rates]  # fmt: skip
    results = {}
    for base, args in zip(own.bases, per_base, strict=True):
        in_parallel(args, [(train, args, scenario, v, seed, lr) for v, scenario, seed, lr in grid])
        results[base] = {
            scenario: {
                f"{variant} lr {lr:g}": summarize([train(args, scenario, variant, seed, lr) for seed in own.seeds])
                for variant in own.variants
                for lr in own.learning_rates
            }
            for scenario in own.scenarios
        }
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "started": started,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "variants": {name: VARIANTS[name][1] for name in own.variants},
        "settings": {"seeds": own.seeds, "max_train_steps": own.max_train_steps, "eval_steps": own.eval_steps},
        "results": results,
    }
    own.output.parent.mkdir(parents=True, exist_ok=True)
    own.output.write_text(json.dumps(report, indent=2) + "\n")
    lines = []
    for base, by_scenario in results.items():
        lines += [f"base `{base}`", "", "| scenario | run | params | zero-shot | last | best along curve | bIoU last |"]
        lines.append("|---|---|---|---|---|---|---|")
        for scenario, arms in by_scenario.items():
            for name, row in arms.items():
                cells = [f"{row[key]['mean']:.3f} ± {row[key]['std']:.3f}"
                         for key in ("last_miou", "best_miou", "last_boundary_iou")]  # fmt: skip
                lines.append(
                    f"| {scenario} | {name} | {row['trainable_parameters']:,} | {row['zero_shot_miou']:.3f} | "
                    + " | ".join(cells)
                    + " |"
                )
        lines.append("")
    own.output.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

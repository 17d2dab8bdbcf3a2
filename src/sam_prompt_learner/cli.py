"""The `sam-prompt-learner` command.

    sam-prompt-learner evaluate --model facebook/sam-vit-base --dataset plates --split test --output scores.json
    sam-prompt-learner predict --model outputs/plates --image car.jpg --point 120,88 --output car-mask.png
    sam-prompt-learner push outputs/plates --repo-id your-name/sam-plates
    sam-prompt-learner demo --model outputs/plates

`evaluate` scores any SAM checkpoint (plain `sam` or adapted `sam_prompt_learner`; a plain SAM loads with an identity
prompt learner, so it answers exactly as SAM) on a dataset with the deterministic evaluation prompts of
`sam_prompt_learner.data`, and writes the metrics in the same structure as `examples/train.py`'s `metrics.json`.
"""

import argparse
import json
import sys
from pathlib import Path

from accelerate import Accelerator
from torch.utils.data import DataLoader

from .data import PromptConfig, build_embedding_cache, load_segmentation_dataset
from .data.formats import AnnotationFormat
from .data.prompts import POINT_PLACEMENTS, PROMPT_MODES
from .data.synthetic import SPLITS, SYNTHETIC_TASKS
from .demo import register_demo_command
from .evaluation import MASK_SELECTIONS, evaluate_model, prompt_robustness
from .hub import register_push_command
from .inference import register_predict_command
from .modeling_prompt_learner import load_prompt_learner_model
from .processing import load_processor
from .training import VALIDATION_SPLIT, detection_options, evaluation_collator, hold_out_validation, prepare_split


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", required=True, help=f"Hub id, local directory, or embedded task {sorted(SYNTHETIC_TASKS)}."
    )
    parser.add_argument("--dataset_config_name", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--image_column", default=None)
    parser.add_argument("--mask_column", default=None)
    parser.add_argument("--annotation_format", default=None, choices=[f.value for f in AnnotationFormat])
    parser.add_argument("--class_ids", type=int, nargs="+", default=None)
    parser.add_argument(
        "--mask_threshold", type=float, default=None,
        help="Binary masks: foreground = value >= this (default: non-zero; half range for JPEG masks).",
    )  # fmt: skip
    parser.add_argument("--max_samples", type=int, default=None)
    parser.add_argument(
        "--validation_split_percentage", type=float, default=10,
        help="--split validation on a dataset without one: the rows examples/train.py holds out of train.",
    )  # fmt: skip


def synthetic_split(args: argparse.Namespace) -> dict | None:
    """For an embedded task, generate only the split to score (and only `--max_samples` of it)."""
    if args.dataset not in SYNTHETIC_TASKS:
        return None
    if args.split not in SPLITS:
        raise ValueError(f"Split {args.split!r} not found; the dataset has {list(SPLITS)}.")
    return {f"num_{split}": 0 for split in SPLITS if split != args.split} | (
        {f"num_{args.split}": args.max_samples} if args.max_samples else {}
    )


def evaluate_command(args: argparse.Namespace) -> int:
    accelerator = Accelerator()
    try:
        model = load_prompt_learner_model(args.model)  # the family (SAM, SAM-HQ, SAM 2) is read from its config
        processor = load_processor(args.model, model.config)
        raw = load_segmentation_dataset(args.dataset, args.dataset_config_name, synthetic_options=synthetic_split(args))
        if args.split == VALIDATION_SPLIT:
            raw, held_out = hold_out_validation(raw, percentage=args.validation_split_percentage)
            if held_out:
                print(held_out, file=sys.stderr)
        with accelerator.main_process_first():
            dataset, report = prepare_split(raw, args.split, max_samples=args.max_samples, **detection_options(args))
    except (OSError, ValueError) as error:
        print(f"sam-prompt-learner evaluate: error: {error}", file=sys.stderr)
        return 2
    model.to(accelerator.device).eval()
    if args.cache_embeddings:
        dataset = build_embedding_cache(dataset, model, processor.image_processor, accelerator=accelerator)

    def dataloader(seed: int) -> DataLoader:
        prompts = PromptConfig(mode_weights={args.prompt_mode: 1.0}, point_placement=args.point_placement, seed=seed)
        return accelerator.prepare(
            DataLoader(dataset, batch_size=args.batch_size, collate_fn=evaluation_collator(processor, prompts))
        )

    scores = evaluate_model(model, dataloader(args.prompt_seed), accelerator, selections=args.selections)
    if args.robustness_draws > 1:
        draws = (dataloader(args.prompt_seed + draw) for draw in range(args.robustness_draws))
        scores["robustness"] = prompt_robustness(model, draws, accelerator)
    if accelerator.is_main_process:
        result = {
            "model": args.model,
            "dataset": args.dataset,
            "split": args.split,
            "prompts": {"mode": args.prompt_mode, "point_placement": args.point_placement, "seed": args.prompt_seed},
            "scores": scores,
            "skipped_data": report.to_dict(),
        }
        text = json.dumps(result, indent=2)
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(text + "\n")
        print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam-prompt-learner", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    evaluate = commands.add_parser("evaluate", help="Score a SAM or adapted checkpoint on a dataset.")
    evaluate.add_argument("--model", required=True, help="Checkpoint: Hub id or directory (plain SAM or adapted).")
    add_dataset_arguments(evaluate)
    evaluate.add_argument("--prompt_mode", default="points", choices=PROMPT_MODES)
    evaluate.add_argument("--point_placement", default="uniform", choices=POINT_PLACEMENTS)
    evaluate.add_argument("--prompt_seed", type=int, default=0, help="Seed of the deterministic evaluation prompts.")
    evaluate.add_argument(
        "--selections", nargs="+", default=["predicted_iou", "oracle"], choices=MASK_SELECTIONS,
        help="Which of SAM's masks to score: its own choice, the single-mask output, or the best (reference).",
    )  # fmt: skip
    evaluate.add_argument(
        "--robustness_draws", type=int, default=1,
        help="Score each object under this many prompt draws and report the IoU spread (1 = off).",
    )  # fmt: skip
    evaluate.add_argument("--batch_size", type=int, default=8)
    evaluate.add_argument("--cache_embeddings", action=argparse.BooleanOptionalAction, default=True)
    evaluate.add_argument("--output", type=Path, default=None, help="Write the JSON here too.")
    evaluate.set_defaults(handler=evaluate_command)

    register_predict_command(commands)
    register_push_command(commands)
    register_demo_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("batch_size", "robustness_draws", "max_samples"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())

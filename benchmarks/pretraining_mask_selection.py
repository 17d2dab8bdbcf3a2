"""How much of the gap between a tiny SAM's own mask choice and the best of its three masks other choice rules close.

For one click per object (the prompts of `sam-prompt-learner evaluate` and of the pre-training's evaluation), each of
SAM's three masks is scored against the object; a rule picks one mask per click without the ground truth:

- `predicted_iou`: the highest predicted IoU (SAM's own choice; what the card and the aims report),
- `stability`: the highest stability score (SAM's automatic mask generator's: the IoU between the mask thresholded at
  logit +1 and at -1; a mask whose edge sits on a steep logit slope is stable),
- `predicted_iou_x_stability`: their product,
- `best_of_3`: the oracle, for reference.

    .venv/bin/python benchmarks/pretraining_mask_selection.py --model src/sam_prompt_learner/pretrained/tiny-sam \
        --task generic --split validation --output benchmarks/results/pretraining/mask_selection-generic-validation.json

Reported over all objects, wholes whose click lands off their parts, and parts of nested objects (as
`benchmarks/pretraining_by_size.py` groups them); for the last two also per mask output (`by_output`): how often each
of the three is the best and how often the IoU head picks it, and how far its predicted IoU is from its actual IoU. A
measurement only: the package's own choice stays SAM's.
"""

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import SamModel

from sam_prompt_learner import processor_for_config
from sam_prompt_learner.data.prompts import POINT_PLACEMENTS
from sam_prompt_learner.metrics import mask_iou
from sam_prompt_learner.pretraining import Scenes
from sam_prompt_learner.pretraining.recipe import evaluation_prompts, nesting_flags, normalize_images

# SAM's automatic mask generator's default `stability_score_offset`.
STABILITY_OFFSET = 1.0


def stability_scores(logits: torch.Tensor, offset: float = STABILITY_OFFSET) -> torch.Tensor:
    """`(..., h, w)` logits -> `(...)`: |logits > offset| / |logits > -offset| (1 for an empty mask)."""
    inner = (logits > offset).flatten(-2).sum(-1).float()
    outer = (logits > -offset).flatten(-2).sum(-1).float()
    return torch.where(outer > 0, inner / outer.clamp(min=1), torch.ones_like(outer))


@torch.no_grad()
def mask_records(
    model: SamModel, scenes: Scenes, processor, point_placement: str = "interior", batch_size: int = 32
) -> dict[str, torch.Tensor]:
    """Per object: the IoU, predicted IoU and stability score of each of the three click masks `(N, 3)`, and the
    `is_part` / `click_on_part` flags `(N,)` of `sam_prompt_learner.pretraining.object_ious`."""
    model.eval()
    image_size = scenes.images.shape[-1]
    records: dict[str, list[torch.Tensor]] = {name: [] for name in ("iou", "predicted_iou", "stability")}
    records.update(is_part=[], click_on_part=[])
    for start in range(0, len(scenes), batch_size):
        stop = min(start + batch_size, len(scenes))
        embeddings = model.get_image_embeddings(normalize_images(scenes.images[start:stop], processor))
        for offset, image_index in enumerate(range(start, stop)):
            masks = scenes.object_masks(image_index)  # (M, S, S)
            points, _ = evaluation_prompts(masks, scenes.sample_ids[image_index], point_placement)  # (M, 1, 2)
            outputs = model(
                image_embeddings=embeddings[offset : offset + 1], input_points=points[None], multimask_output=True
            )
            logits = outputs.pred_masks[0].float()  # (M, 3, h, w)
            upsampled = F.interpolate(logits, size=image_size, mode="bilinear") > 0  # (M, 3, S, S)
            records["iou"].append(torch.stack([mask_iou(upsampled[:, k], masks) for k in range(3)], dim=1))
            records["predicted_iou"].append(outputs.iou_scores[0].float())
            records["stability"].append(stability_scores(logits))
            is_part, click_on_part = nesting_flags(masks, points)
            records["is_part"].append(is_part)
            records["click_on_part"].append(click_on_part)
    return {name: torch.cat(values) for name, values in records.items()}


def choices(records: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rule -> the chosen mask's IoU per object `(N,)`."""
    ranking = {
        "predicted_iou": records["predicted_iou"],
        "stability": records["stability"],
        "predicted_iou_x_stability": records["predicted_iou"] * records["stability"],
        "best_of_3": records["iou"],
    }
    return {rule: records["iou"].gather(1, scores.argmax(1, keepdim=True))[:, 0] for rule, scores in ranking.items()}


def output_statistics(records: dict[str, torch.Tensor], selected: torch.Tensor) -> list[dict]:
    """Per mask output (SAM's three multimask tokens) over the `selected` objects: how often it is the best of the
    three and how often the IoU head picks it, its mean IoU and predicted IoU, and the head's mean absolute error."""
    iou, predicted = records["iou"][selected].float(), records["predicted_iou"][selected].float()  # (N, 3)
    best, chosen = iou.argmax(1), predicted.argmax(1)
    return [
        {
            "output": k,
            "best": round(float((best == k).float().mean()), 3),
            "chosen": round(float((chosen == k).float().mean()), 3),
            "chosen_when_best": round(float((chosen[best == k] == k).float().mean()), 3) if (best == k).any() else None,
            "mean_iou": round(float(iou[:, k].mean()), 3),
            "mean_predicted_iou": round(float(predicted[:, k].mean()), 3),
            "abs_error": round(float((predicted[:, k] - iou[:, k]).abs().mean()), 3),
        }
        for k in range(iou.shape[1])
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A plain `sam` checkpoint directory.")
    parser.add_argument("--task", default="generic")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--num_images", type=int, default=200, help="The first rows of the split (the loop's 200).")
    parser.add_argument("--data_seed", type=int, default=0)
    parser.add_argument(
        "--point_placement",
        default="interior",
        choices=POINT_PLACEMENTS,
        help="Where the click falls: `interior` as `evaluate` places it; `uniform` as the pre-training does.",
    )
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)

    model = SamModel.from_pretrained(args.model)
    scenes = Scenes(args.task, args.split, args.num_images, model.config.vision_config.image_size, args.data_seed)
    records = mask_records(model, scenes, processor_for_config(model.config), args.point_placement)
    groups = {
        "all": torch.ones_like(records["is_part"]),
        "wholes, click off parts": ~records["is_part"] & ~records["click_on_part"],
        "parts of nested objects": records["is_part"],
    }
    rows = []
    for rule, ious in choices(records).items():
        row = {"rule": rule} | {group: round(float(ious[selected].mean()), 4) for group, selected in groups.items()}
        rows.append(row)
        print(f"{rule:<28}" + "".join(f"  {group} {value:.3f}" for group, value in list(row.items())[1:]))
    by_output = {group: output_statistics(records, groups[group]) for group in list(groups)[1:]}
    for group, statistics in by_output.items():
        print(group)
        for row in statistics:
            print("  " + "  ".join(f"{name} {value}" for name, value in row.items()))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        counts = {group: int(selected.sum()) for group, selected in groups.items()}
        args.output.write_text(
            json.dumps(
                {
                    "model": args.model,
                    "task": args.task,
                    "split": args.split,
                    "point_placement": args.point_placement,
                    "num_images": args.num_images,
                    "counts": counts,
                    "rows": rows,
                    "by_output": by_output,
                },
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()

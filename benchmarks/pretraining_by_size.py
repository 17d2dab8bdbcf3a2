"""Where a pre-trained tiny SAM fails: validation IoU by object size, and for wholes against parts of nested objects.

The pre-training's own evaluation (`sam_prompt_learner.pretraining.object_ious`: the prompts and mask choice of
`sam-prompt-learner evaluate`), broken down per object, for one or more checkpoints:

    .venv/bin/python benchmarks/pretraining_by_size.py --models "step 12,000=runs/tiny-sam-v3/best" \
        "shipped=src/sam_prompt_learner/pretrained/tiny-sam" --output benchmarks/results/pretraining/by_size.json

`--grid_ceilings 16 32 64` adds, per group, the IoU a mask keeps after a round trip through an R x R grid (its
area share per cell, upsampled bilinearly to the image and thresholded at one half, as the logits are): what a
model could score whose masks carry no more detail than R x R cells. No prompt and no model enter it.

A geometry whose embedding grid is too coarse shows as small objects scoring far below large ones at every step;
masks of the right object with a poor choice among the three show as own choice far below best of 3; for a whole
whose click lands on one of its parts, that choice is ambiguous by design (the click alone cannot say which is meant).
"""

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import SamModel

from sam_prompt_learner import processor_for_config
from sam_prompt_learner.metrics import mask_iou
from sam_prompt_learner.pretraining import Scenes, object_ious

# Object area as a share of the image: below 0.5% an object is under about 9 x 9 px at 128 px.
AREA_EDGES = (0.0, 0.005, 0.01, 0.03, 0.1, 1.0001)
SCORES = ("click_own", "click_best_of_3", "box")


def breakdown(per_object: dict[str, torch.Tensor], scores: tuple[str, ...] = SCORES) -> list[dict]:
    """Rows of mean IoU per area bucket, then for wholes and for parts, then over all objects."""
    groups = [
        (f"area {low:.1%}-{min(high, 1.0):.1%}", (per_object["area"] >= low) & (per_object["area"] < high))
        for low, high in zip(AREA_EDGES[:-1], AREA_EDGES[1:], strict=True)
    ]
    wholes, on_part = ~per_object["is_part"], per_object["click_on_part"]
    groups += [("wholes", wholes), ("wholes, click on a part", wholes & on_part)]
    groups += [("wholes, click off parts", wholes & ~on_part), ("parts of nested objects", per_object["is_part"])]
    groups += [("all", torch.ones_like(per_object["is_part"]))]
    rows = []
    for name, selected in groups:
        row = {"objects": name, "count": int(selected.sum()), "parts": int((selected & per_object["is_part"]).sum())}
        row.update({score: round(float(per_object[score][selected].mean()), 4) for score in scores if selected.any()})
        rows.append(row)
    return rows


def grid_round_trip_iou(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """`(M,)` IoU of each mask `(M, S, S)` with itself after a round trip through a `grid` x `grid` grid."""
    shares = F.adaptive_avg_pool2d(masks[:, None].float(), grid)  # (M, 1, grid, grid): area share per cell
    restored = F.interpolate(shares, size=masks.shape[-1], mode="bilinear")[:, 0] > 0.5  # (M, S, S)
    return mask_iou(restored, masks)


def print_rows(title: str, rows: list[dict], scores: tuple[str, ...]) -> None:
    print(f"\n{title}")
    for row in rows:
        figures = " / ".join(f"{row[score]:.3f}" for score in scores if score in row)
        print(f"  {row['objects']:<26} {row['count']:>5} objects ({row['parts']:>3} parts)  {figures}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        nargs="+",
        required=True,
        help="Plain `sam` checkpoint directories, each optionally as `LABEL=DIRECTORY`.",
    )
    parser.add_argument("--task", default="generic")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--num_images", type=int, default=200, help="The first rows of the split (the loop's 200).")
    parser.add_argument("--data_seed", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument(
        "--grid_ceilings",
        type=int,
        nargs="*",
        default=[],
        metavar="R",
        help="Also report the IoU each object keeps through an R x R grid (the groups of the first model).",
    )
    parser.add_argument("--output", type=Path, default=None, help="Write the rows as JSON here too.")
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)

    results, ceilings = {}, {}
    scenes = None
    for spec in args.models:
        label, _, path = spec.rpartition("=")
        label = label or path
        model = SamModel.from_pretrained(path)
        image_size = model.config.vision_config.image_size
        if scenes is None or scenes.images.shape[-1] != image_size:
            scenes = Scenes(args.task, args.split, args.num_images, image_size, args.data_seed)
        per_object = object_ious(model, scenes, processor_for_config(model.config))
        results[label] = breakdown(per_object)
        title = f"{label}: {args.task} {args.split}, {args.num_images} images, IoU click own / best of 3 / box"
        print_rows(title, results[label], SCORES)
        if not ceilings:
            for grid in args.grid_ceilings:
                round_trip = per_object | {"round_trip": grid_round_trip_iou(scenes.masks, grid)}
                ceilings[f"grid {grid} x {grid}"] = breakdown(round_trip, scores=("round_trip",))
                print_rows(f"ceiling: masks through a {grid} x {grid} grid", ceilings[f"grid {grid} x {grid}"],
                           ("round_trip",))  # fmt: skip
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"task": args.task, "split": args.split, "num_images": args.num_images,
                                           "results": results, "grid_ceilings": ceilings}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

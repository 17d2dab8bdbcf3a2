"""Can more training of a pre-trained tiny SAM's IoU prediction close the gap between its own mask choice and its
best of three?

`--train iou_head`: everything but `mask_decoder.iou_prediction_head` is frozen; the head trains on one-click prompts
(three masks each) against each mask's actual IoU on the logit grid, by MSE plus `--ranking_weight` times the ranking
hinge of the pre-training (`iou_ranking_loss`). Only the choice among the three masks can change: best of 3 and box
stay as they were.

`--train all`: the whole model continues the pre-training's own step (`training_step`: click, box and multi-click
prompts) at a constant `--learning_rate`, with `--iou_loss_weight` on the IoU head's MSE, so the features the IoU
token reads are shaped by it too (`--ranking_weight` applies there as well: pass 0 for the recipe's default). Compare
weights on the same seed: the fine-tuning itself moves every figure. The measurement in BENCHMARKS.md:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/iou_head_calibration.py \
        --model src/sam_prompt_learner/pretrained/tiny-sam --train all --iou_loss_weight 4 --ranking_weight 0 \
        --learning_rate 1e-4 --batch_size 16 --steps 600

Both train on the pre-training's train scenes (the batch mix past its curriculum). Validation scores
(`sam_prompt_learner.pretraining.evaluate`, as `sam-prompt-learner evaluate` reports them) before and after; the
head alone:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/iou_head_calibration.py \
        --model src/sam_prompt_learner/pretrained/tiny-sam --steps 1000 --ranking_weight 1 \
        --output benchmarks/results/pretraining/iou_head_calibration-ranking1.json
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import SamModel

from sam_prompt_learner import processor_for_config
from sam_prompt_learner.pretraining import PretrainingConfig, evaluate
from sam_prompt_learner.pretraining.recipe import decode, normalize_images, sample_batch, training_step
from sam_prompt_learner.pretraining.runner import make_optimizer
from sam_prompt_learner.pretraining.sampling import sample_mask_pixels
from sam_prompt_learner.pretraining.scenes import render_scenes


def head_losses(model: SamModel, train, processor, args: argparse.Namespace, generator) -> torch.Tensor:
    """One batch of one-click prompts, two objects per image: the IoU head's MSE + the ranking hinge."""
    config = PretrainingConfig(batch_size=args.batch_size, prompts_per_image=2)
    logits_size = 4 * model.config.prompt_encoder_config.image_embedding_size
    prompts = config.prompts_per_image
    images, masks = sample_batch(train, 10**6, config, generator)  # past the curriculum's ramp
    clicked = masks[:, :prompts].flatten(0, 1)  # (B*P, S, S)
    targets = F.adaptive_avg_pool2d(clicked.float().unsqueeze(1), logits_size)
    targets = targets.view(args.batch_size, prompts, logits_size, logits_size)
    with torch.no_grad():
        embeddings = model.get_image_embeddings(normalize_images(images, processor))
    clicks = sample_mask_pixels(clicked, 1, generator).view(args.batch_size, prompts, 1, 2)
    labels = torch.ones(args.batch_size, prompts, 1, dtype=torch.int64)
    # The pre-training's own scoring of a click: MSE of the IoU head and the ranking hinge, per prompt.
    losses = decode(model, embeddings, targets, multimask_output=True, input_points=clicks, input_labels=labels)
    return losses["iou"].mean() + args.ranking_weight * losses["ranking"].mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A plain `sam` checkpoint directory.")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--train", choices=("iou_head", "all"), default="iou_head")
    parser.add_argument("--ranking_weight", type=float, default=1.0)
    parser.add_argument("--iou_loss_weight", type=float, default=1.0, help="With --train all.")
    parser.add_argument("--learning_rate", type=float, default=3e-4)
    parser.add_argument(
        "--batch_size", type=int, default=32, help="Images per step (two clicked objects each with --train iou_head)."
    )
    parser.add_argument("--num_threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)

    model = SamModel.from_pretrained(args.model)
    processor = processor_for_config(model.config)
    image_size = model.config.vision_config.image_size
    train = render_scenes([("simple", "train", 2000), ("generic", "train", 4000)], image_size, 0, 2)
    validation = render_scenes([("simple", "validation", 200), ("generic", "validation", 200)], image_size, 0, 2)

    def scores() -> dict:
        return {bank.task: {k: round(v, 4) for k, v in evaluate(model, bank, processor).items()} for bank in validation}

    before = scores()
    print("before", json.dumps(before), flush=True)
    generator = torch.Generator().manual_seed(args.seed)
    if args.train == "all":
        config = PretrainingConfig(
            batch_size=args.batch_size,
            iou_loss_weight=args.iou_loss_weight,
            iou_ranking_weight=args.ranking_weight,
            learning_rate=args.learning_rate,
        )
        model.train()
        optimizer = make_optimizer(model, config)
    else:
        model.requires_grad_(False)
        head = model.mask_decoder.iou_prediction_head
        head.requires_grad_(True)
        optimizer = torch.optim.AdamW(head.parameters(), lr=args.learning_rate, weight_decay=0.0)
    start = time.time()
    for step in range(args.steps):
        if args.train == "all":
            loss = training_step(model, train, processor, 10**6, config, generator)["loss"]  # past the curriculum
        else:
            loss = head_losses(model, train, processor, args, generator)
        optimizer.zero_grad()
        loss.backward()
        if args.train == "all":
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1} loss {loss.item():.4f} ({(time.time() - start) / 60:.1f} min)", flush=True)
    model.eval()
    after = scores()
    print("after", json.dumps(after), flush=True)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                           "before": before, "after": after}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

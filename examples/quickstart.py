"""Quick start, fully offline: adapt a tiny SAM's prompts to a task and use the result like any transformers model.

    python examples/quickstart.py [--output_dir outputs/quickstart] [--steps 150]

What it does, in under a minute on a laptop CPU:
1. builds a tiny random SAM and saves it as a plain `sam` checkpoint (stand-in for `facebook/sam-vit-base`, which
   cannot be downloaded here);
2. loads it into `SamPromptLearnerModel` (the PLM starts as the identity, so it first answers exactly like SAM);
3. trains only the prompt learner and the point-matching head so that each click means what the "task" wants
   (here: the mask that SAM gives for another click), printing the loss terms;
4. saves the adapted checkpoint with its processor and reloads it with `AutoModel` and `pipeline("mask-generation")`.
"""

import argparse
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModel, SamConfig, SamModel, pipeline
from transformers.utils import logging

from sam_prompt_learner import SamPromptLearnerModel, processor_for_config


def tiny_sam_config() -> SamConfig:
    return SamConfig(
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=128,
            patch_size=16,
            output_channels=32,
            window_size=4,
            global_attn_indexes=[1],
            num_pos_feats=16,
            mlp_ratio=2.0,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=128, patch_size=16, mask_input_channels=8),
        mask_decoder_config=dict(
            hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32
        ),
        initializer_range=0.2,  # logits at a trained SAM's scale, so prompts can move them
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/quickstart"))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    logging.set_verbosity_error()
    torch.manual_seed(args.seed)

    base_dir = args.output_dir / "base-sam"
    base = SamModel(tiny_sam_config())
    base.save_pretrained(base_dir)
    processor = processor_for_config(base.config)
    processor.save_pretrained(base_dir)

    model = SamPromptLearnerModel.from_pretrained(base_dir).train()
    print(f"trainable parameters: {model.num_parameters(only_trainable=True):,} of {model.num_parameters():,}")

    generator = torch.Generator().manual_seed(args.seed)
    pixel_values = torch.randn(2, 3, 128, 128, generator=generator)
    with torch.no_grad():
        image_embeddings = model.get_image_embeddings(pixel_values)  # the frozen encoder runs once
    clicks = torch.rand(2, 4, 1, 2, generator=generator) * 128
    intended_clicks = torch.rand(2, 4, 1, 2, generator=generator) * 128
    click_labels = torch.ones(2, 4, 1, dtype=torch.long)
    with torch.no_grad():
        intended = base(image_embeddings=image_embeddings, input_points=intended_clicks, multimask_output=False)
    labels = (intended.pred_masks[:, :, 0] > 0).float()  # (B, P, 32, 32) what the task means by each click

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    start = time.perf_counter()
    for step in range(args.steps):
        output = model(
            image_embeddings=image_embeddings,
            input_points=clicks,
            input_labels=click_labels,
            labels=labels,
            multimask_output=False,
        )
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == args.steps - 1:
            terms = ", ".join(
                f"{name} {getattr(output, name).item():.3f}"
                for name in ("focal_loss", "dice_loss", "iou_loss", "point_matching_loss", "boundary_point_loss")
            )
            print(f"step {step:4d}  loss {output.loss.item():.3f}  ({terms})")
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.1f} s")

    adapted_dir = args.output_dir / "adapted"
    model.save_pretrained(adapted_dir)
    processor.save_pretrained(adapted_dir)
    reloaded = AutoModel.from_pretrained(adapted_dir)
    print(f"AutoModel.from_pretrained({str(adapted_dir)!r}) -> {type(reloaded).__name__}")

    generator_pipeline = pipeline("mask-generation", model=str(adapted_dir), device="cpu")
    image = (pixel_values[0].permute(1, 2, 0).sigmoid() * 255).to(torch.uint8).numpy()
    result = generator_pipeline(
        Image.fromarray(image), points_per_batch=16, pred_iou_thresh=0, stability_score_thresh=0
    )
    print(f"pipeline('mask-generation') -> {len(result['masks'])} masks of shape {result['masks'][0].shape}")
    print(f"adapted checkpoint: {adapted_dir}")


if __name__ == "__main__":
    main()

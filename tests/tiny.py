"""Tiny SAM geometry shared by the tests: 128 px images, 8x8 image embeddings, 32x32 mask logits."""

import torch
from transformers import SamConfig, SamModel

from sam_prompt_learner.processing import SamPromptLearnerImageProcessor, processor_for_config

IMAGE_SIZE = 128
MASK_SIZE = 32


def tiny_config(config_class=SamConfig, image_size: int = IMAGE_SIZE, **extra):
    return config_class(
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=16,
            output_channels=32,
            window_size=4,
            global_attn_indexes=[1],
            num_pos_feats=16,
            mlp_ratio=2.0,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=image_size, patch_size=16, mask_input_channels=8),
        mask_decoder_config=dict(
            hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32
        ),
        **extra,
    )


def tiny_image_processor(image_size: int = IMAGE_SIZE) -> SamPromptLearnerImageProcessor:
    return processor_for_config(tiny_config(image_size=image_size)).image_processor


def save_tiny_sam(directory, seed: int = 0):
    """Save a random tiny `SamModel` (model_type "sam") with its processor, as a stand-in for a SAM checkpoint.

    Two choices make it behave like a trained SAM rather than like transformers' from-scratch defaults: weights with
    `initializer_range=0.2` give logits of a few units (the default 0.02 gives ~1e-4, which no prompt can move), and a
    N(0, 1) random-Fourier positional matrix (as Meta's SAM uses) instead of std = hidden_size // 2, whose frequencies
    alias on an 8 x 8 grid so that no location can be learned.
    """
    torch.manual_seed(seed)
    model = SamModel(tiny_config(initializer_range=0.2))
    with torch.no_grad():
        model.shared_image_embedding.positional_embedding.normal_(0.0, 1.0)
    model.save_pretrained(directory)
    processor_for_config(model.config).save_pretrained(directory)
    return directory


def write_image_mask_folder(directory, num_images: int, *, empty_masks: bool = False):
    """An `images/` + `masks/` folder as the README describes, with only a train split: random 48 x 64 RGB PNGs, each
    with a 0/255 rectangle mask (all zero with `empty_masks`)."""
    import numpy as np
    from PIL import Image

    generator = np.random.default_rng(0)
    (directory / "images").mkdir(parents=True)
    (directory / "masks").mkdir()
    for index in range(num_images):
        Image.fromarray(generator.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
            directory / "images" / f"{index:03d}.png"
        )
        mask = np.zeros((48, 64), dtype=np.uint8)
        if not empty_masks:
            top, left = generator.integers(0, 24), generator.integers(0, 32)
            mask[top : top + 20, left : left + 24] = 255
        Image.fromarray(mask).save(directory / "masks" / f"{index:03d}.png")
    return directory

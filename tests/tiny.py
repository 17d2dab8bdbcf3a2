"""Tiny SAM, SAM-HQ and SAM 2 geometry shared by the tests: 128 px images, 8x8 image embeddings, 32x32 mask logits."""

import torch
from transformers import Sam2Config, SamConfig, SamHQConfig, SamModel

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


def tiny_sam_hq_config(config_class=SamHQConfig, image_size: int = IMAGE_SIZE, **extra):
    """SAM-HQ at the tiny SAM's geometry; the decoder's `vit_dim` is the ViT width (32)."""
    sam = tiny_config(image_size=image_size).to_dict()
    return config_class(
        vision_config=sam["vision_config"],
        prompt_encoder_config=sam["prompt_encoder_config"],
        mask_decoder_config={**sam["mask_decoder_config"], "vit_dim": 32},
        **extra,
    )


def tiny_sam2_config(config_class=Sam2Config, image_size: int = IMAGE_SIZE, **extra):
    """SAM 2 at the tiny SAM's geometry: a 5-block Hiera (strides 4, 8, 16, 32) whose FPN gives the decoder 32 x 32,
    16 x 16 and 8 x 8 features. Hiera's global-attention block must not start a stage (transformers divides by its
    window size of 0 there), hence two blocks in the third stage."""
    return config_class(
        vision_config=dict(
            model_type="sam2_vision_model",
            backbone_config=dict(
                model_type="sam2_hiera_det_model",
                hidden_size=8,
                num_attention_heads=1,
                image_size=[image_size, image_size],
                blocks_per_stage=[1, 1, 2, 1],
                embed_dim_per_stage=[8, 16, 32, 64],
                num_attention_heads_per_stage=[1, 1, 2, 2],
                window_size_per_stage=[4, 4, 4, 2],
                global_attention_blocks=[3],
                window_positional_embedding_background_size=[2, 2],
            ),
            backbone_channel_list=[64, 32, 16, 8],
            backbone_feature_sizes=[[image_size // size] * 2 for size in (4, 8, 16)],
            fpn_hidden_size=32,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=image_size, patch_size=16, mask_input_channels=8),
        mask_decoder_config=dict(
            hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32
        ),
        **extra,
    )


def prompts(batch_size=2, point_batch_size=3, points_per_prompt=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    points = torch.rand(batch_size, point_batch_size, points_per_prompt, 2, generator=generator) * IMAGE_SIZE
    labels = torch.randint(0, 2, (batch_size, point_batch_size, points_per_prompt), generator=generator)
    corner = torch.rand(batch_size, point_batch_size, 2, generator=generator) * IMAGE_SIZE / 2
    boxes = torch.cat([corner, corner + IMAGE_SIZE / 3], dim=-1)
    return points, labels, boxes


def disk_labels(batch_size=2, point_batch_size=3, size=IMAGE_SIZE):
    """A different disk per prompt, as binary ground-truth masks (B, P, size, size)."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = []
    for index in range(batch_size * point_batch_size):
        cx, cy, radius = 30 + 9 * index, 40 + 5 * index, 12 + 2 * index
        masks.append(((xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2).float())
    return torch.stack(masks).reshape(batch_size, point_batch_size, size, size)


def prompt_inputs(kinds: str) -> dict:
    """The `prompts()` of one kind as model inputs: `"points"`, `"boxes"` or `"both"`."""
    points, labels, boxes = prompts()
    inputs = {}
    if kinds in ("points", "both"):
        inputs.update(input_points=points, input_labels=labels)
    if kinds in ("boxes", "both"):
        inputs["input_boxes"] = boxes
    return inputs


def assert_save_load_round_trip(model, directory):
    """Save `model` and check that its class loads it back complete and bit-identical; returns the reloaded model."""
    state = model.state_dict()
    model.save_pretrained(directory)
    reloaded, info = type(model).from_pretrained(directory, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    reloaded_state = reloaded.state_dict()
    assert reloaded_state.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(reloaded_state[name], tensor), name
    return reloaded


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

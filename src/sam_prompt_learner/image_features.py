"""What each family's mask decoder reads from the image encoder: the per-image tensors the embedding cache stores
(one column each), how they are computed from pixels, and how a batch of them becomes the model's keyword arguments.

- SAM: `image_embeddings` `(C, E, E)`; the model takes `image_embeddings=`.
- SAM-HQ: `image_embeddings` and `intermediate_embeddings` `(E, E, D)`, the ViT output of the first global-attention
  block (the only one the HQ decoder reads); the model takes `image_embeddings=`, `intermediate_embeddings=[...]`.
- SAM 2: `image_embeddings`, `high_resolution_features_s0` `(C/8, 4E, 4E)` and `high_resolution_features_s1`
  `(C/4, 2E, 2E)`, the FPN levels after the decoder's two projections (what `get_image_embeddings` returns); the
  model takes `image_embeddings=[s0, s1, image_embeddings]`.

C is the decoder's width (256), E the embedding size (64 at 1024 px), D the ViT width (768 / 1024 / 1280 for ViT-B / L /
H). The family is read from the config (`SamConfig`, `SamHQConfig`, `Sam2Config` or a prompt-learner subclass); the
models may be transformers' own, the prompt-learner subclasses, or a `PeftModel` wrapping one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedConfig, Sam2Config, SamHQConfig

IMAGE_EMBEDDINGS_COLUMN = "image_embeddings"
INTERMEDIATE_EMBEDDINGS_COLUMN = "intermediate_embeddings"
HIGH_RESOLUTION_COLUMNS = ("high_resolution_features_s0", "high_resolution_features_s1")
IMAGE_FEATURE_COLUMNS = (IMAGE_EMBEDDINGS_COLUMN, INTERMEDIATE_EMBEDDINGS_COLUMN, *HIGH_RESOLUTION_COLUMNS)


def image_feature_shapes(config: PreTrainedConfig) -> dict[str, tuple[int, ...]]:
    """`{column: shape per image}` of the image features the decoder of a model with this config reads (the table
    above)."""
    if isinstance(config, Sam2Config):
        sizes = config.vision_config.backbone_feature_sizes  # [[4E, 4E], [2E, 2E], [E, E]]
        hidden = config.mask_decoder_config.hidden_size
        return {
            IMAGE_EMBEDDINGS_COLUMN: (config.vision_config.fpn_hidden_size, *sizes[2]),
            HIGH_RESOLUTION_COLUMNS[0]: (hidden // 8, *sizes[0]),
            HIGH_RESOLUTION_COLUMNS[1]: (hidden // 4, *sizes[1]),
        }
    vision = config.vision_config
    embedding_size = vision.image_size // vision.patch_size
    shapes = {IMAGE_EMBEDDINGS_COLUMN: (vision.output_channels, embedding_size, embedding_size)}
    if isinstance(config, SamHQConfig):
        shapes[INTERMEDIATE_EMBEDDINGS_COLUMN] = (embedding_size, embedding_size, vision.hidden_size)
    return shapes


def image_encoding_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Tensors outside `vision_encoder` that the cached features depend on: SAM 2's `no_memory_embedding` and the
    decoder's two high-resolution projections (`get_image_embeddings` applies them); none for SAM and SAM-HQ."""
    if not isinstance(model.config, Sam2Config):
        return {}
    named_tensors = {"no_memory_embedding": model.no_memory_embedding}
    for name in ("conv_s0", "conv_s1"):
        for key, tensor in getattr(model.mask_decoder, name).state_dict().items():
            named_tensors[f"mask_decoder.{name}.{key}"] = tensor
    return named_tensors


def encode_image_features(model: nn.Module, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
    """`{column: (B, ...) tensor}`: the model's `get_image_embeddings(pixel_values)` (no gradients), by column."""
    features = model.get_image_embeddings(pixel_values)
    if isinstance(model.config, Sam2Config):
        high_resolution_s0, high_resolution_s1, image_embeddings = features
        return {
            IMAGE_EMBEDDINGS_COLUMN: image_embeddings,
            HIGH_RESOLUTION_COLUMNS[0]: high_resolution_s0,
            HIGH_RESOLUTION_COLUMNS[1]: high_resolution_s1,
        }
    if isinstance(model.config, SamHQConfig):
        image_embeddings, intermediate_embeddings = features
        return {IMAGE_EMBEDDINGS_COLUMN: image_embeddings, INTERMEDIATE_EMBEDDINGS_COLUMN: intermediate_embeddings[0]}
    return {IMAGE_EMBEDDINGS_COLUMN: features}


def image_feature_inputs(features: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The model's keyword arguments for a batch of cached features `{column: (B, ...) tensor}`; the family is told by
    the columns present."""
    if HIGH_RESOLUTION_COLUMNS[0] in features:
        return {
            "image_embeddings": [
                features[HIGH_RESOLUTION_COLUMNS[0]],
                features[HIGH_RESOLUTION_COLUMNS[1]],
                features[IMAGE_EMBEDDINGS_COLUMN],
            ]
        }
    inputs: dict[str, Any] = {"image_embeddings": features[IMAGE_EMBEDDINGS_COLUMN]}
    if INTERMEDIATE_EMBEDDINGS_COLUMN in features:
        inputs["intermediate_embeddings"] = [features[INTERMEDIATE_EMBEDDINGS_COLUMN]]
    return inputs


def cached_bytes_per_image(config: PreTrainedConfig, bytes_per_value: int = 4) -> int:
    """Bytes the embedding cache stores per image for a model with this config (4 per value in float32, 2 in
    float16)."""
    return bytes_per_value * sum(torch.Size(shape).numel() for shape in image_feature_shapes(config).values())

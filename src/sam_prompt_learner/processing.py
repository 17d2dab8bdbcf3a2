"""Processing for SAM and [`SamPromptLearnerModel`] checkpoints without torchvision.

transformers' SAM image processors need torchvision for one step only: the box non-maximum suppression (NMS) that
`pipeline("mask-generation")` runs in `post_process_for_mask_generation`. [`SamPromptLearnerImageProcessor`] is
`SamImageProcessorPil` with that step in pure torch, so automatic mask generation works on any machine that has torch.
[`processor_for_config`] builds a `SamProcessor` whose resize/pad geometry matches a model config, and
[`check_processor_matches_config`] catches a processor saved for another SAM size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoProcessor, BaseImageProcessor, SamConfig, SamProcessor
from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil, _rle_to_mask
from transformers.utils import logging

from .configuration_prompt_learner import PROMPT_LEARNER_CONFIG_CLASSES

logger = logging.get_logger(__name__)


def box_iou(boxes: torch.Tensor, other_boxes: torch.Tensor) -> torch.Tensor:
    """
    Pairwise intersection over union of two sets of boxes.

    Args:
        boxes (`torch.Tensor` of shape `(N, 4)`):
            Boxes as `(x0, y0, x1, y1)` with `x0 <= x1` and `y0 <= y1`.
        other_boxes (`torch.Tensor` of shape `(M, 4)`):
            Boxes in the same format.

    Returns:
        `torch.Tensor` of shape `(N, M)`: the IoU of every pair. Two boxes whose union has zero area (degenerate
        boxes) get IoU 0, so NMS never suppresses one with the other (torchvision's 0/0 = NaN compares the same way).
    """
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (N,)
    other_areas = (other_boxes[:, 2] - other_boxes[:, 0]) * (other_boxes[:, 3] - other_boxes[:, 1])  # (M,)
    top_left = torch.maximum(boxes[:, None, :2], other_boxes[None, :, :2])  # (N, M, 2)
    bottom_right = torch.minimum(boxes[:, None, 2:], other_boxes[None, :, 2:])  # (N, M, 2)
    intersections = (bottom_right - top_left).clamp(min=0).prod(dim=-1)  # (N, M)
    unions = areas[:, None] + other_areas[None, :] - intersections  # (N, M)
    return torch.where(unions > 0, intersections / unions, torch.zeros_like(unions))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """
    Greedy non-maximum suppression, the same selection as `torchvision.ops.nms` (and `batched_nms` with one class):
    repeatedly keep the highest-scoring remaining box and drop every remaining box whose IoU with it is strictly
    greater than `iou_threshold`. Equal scores are visited in index order (a stable sort, as torchvision's CPU kernel).

    Args:
        boxes (`torch.Tensor` of shape `(N, 4)`):
            Boxes as `(x0, y0, x1, y1)`.
        scores (`torch.Tensor` of shape `(N,)`):
            Score of each box; higher is kept first.
        iou_threshold (`float`):
            Boxes overlapping a kept box by more than this IoU are suppressed.

    Returns:
        `torch.Tensor` of shape `(K,)` and dtype `int64`: indices of the kept boxes, by decreasing score.
    """
    boxes = boxes.float()
    order = torch.sort(scores, descending=True, stable=True).indices  # (N,) candidates, best first
    kept = []
    while order.numel() > 0:
        best, rest = order[0], order[1:]
        kept.append(best)
        rest_ious = box_iou(boxes[best].unsqueeze(0), boxes[rest])[0]  # (len(rest),)
        order = rest[rest_ious <= iou_threshold]
    if not kept:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    return torch.stack(kept)


class SamPromptLearnerImageProcessor(SamImageProcessorPil):
    r"""
    SAM's PIL-backend image processor (`SamImageProcessorPil`): identical preprocessing, mask post-processing and
    saved configuration, except that `post_process_for_mask_generation` runs its NMS in pure torch instead of
    importing torchvision. Use it wherever `pipeline("mask-generation")` must run without torchvision.

    Saved with `save_pretrained` (alone or inside a `SamProcessor`), a checkpoint records
    `"image_processor_type": "SamPromptLearnerImageProcessor"`; once `sam_prompt_learner` is imported (which calls
    [`register_processing`]), `AutoImageProcessor`, `AutoProcessor` and `pipeline("mask-generation", model=<dir>)`
    load this class from it, for `sam_prompt_learner` and plain `sam` checkpoints alike, without `trust_remote_code`.

    What `pipeline("mask-generation", ...)` needs from the user:
    - `model=<directory or Hub id>` saved with this processor: nothing else.
    - `model=<directory or Hub id>` saved with transformers' `SamImageProcessor` (e.g. `facebook/sam-vit-base`):
      pass `image_processor=SamPromptLearnerImageProcessor.from_pretrained(<same id>)`, which keeps the checkpoint's
      settings; passing a string here would load transformers' class again.
    - `model=<model object>`: the pipeline cannot find a processor from an object, so always pass
      `image_processor=` (e.g. `processor_for_config(model.config).image_processor`).
    """

    def post_process_for_mask_generation(
        self,
        all_masks: list[dict[str, Any]],
        all_scores: torch.Tensor,
        all_boxes: torch.Tensor,
        crops_nms_thresh: float,
    ) -> tuple[list[np.ndarray], torch.Tensor, list[dict[str, Any]], torch.Tensor]:
        """
        Remove duplicate masks with non-maximum suppression on their bounding boxes.

        Args:
            all_masks (`list[dict]` of length N):
                Predicted masks in uncompressed RLE (`{"size": [height, width], "counts": [...]}`), as produced by
                `filter_masks`.
            all_scores (`torch.Tensor` of shape `(N,)`):
                Predicted IoU score of each mask.
            all_boxes (`torch.Tensor` of shape `(N, 4)`):
                Bounding box `(x0, y0, x1, y1)` of each mask, in original-image pixels.
            crops_nms_thresh (`float`):
                Box IoU above which the lower-scoring mask is dropped.

        Returns:
            `tuple` of the K kept masks, by decreasing score, in the format of transformers' implementation: binary
            masks (`list` of `np.ndarray` of shape `(height, width)`, dtype bool), scores (`torch.Tensor` of shape
            `(K,)`), RLE masks (`list[dict]`) and boxes (`torch.Tensor` of shape `(K, 4)`).
        """
        keep = nms(all_boxes, all_scores, crops_nms_thresh)
        rle_masks = [all_masks[index] for index in keep.tolist()]
        return [_rle_to_mask(rle) for rle in rle_masks], all_scores[keep], rle_masks, all_boxes[keep]


def register_processing() -> None:
    """
    Register [`SamPromptLearnerImageProcessor`] and `SamProcessor` for every prompt-learner model type, so that
    `AutoImageProcessor` / `AutoProcessor.from_pretrained` resolve them without `trust_remote_code`. Registration is
    also what lets a saved `"image_processor_type": "SamPromptLearnerImageProcessor"` resolve to this class for any
    checkpoint (transformers looks registered classes up by name). Safe to call more than once.
    """
    # One implementation serves both backend names: with torchvision installed, auto classes ask for the
    # "torchvision" backend first and would otherwise warn about falling back.
    for config_class in PROMPT_LEARNER_CONFIG_CLASSES:
        AutoImageProcessor.register(
            config_class,
            image_processor_classes={
                "pil": SamPromptLearnerImageProcessor,
                "torchvision": SamPromptLearnerImageProcessor,
            },
            exist_ok=True,
        )
        AutoProcessor.register(config_class, SamProcessor, exist_ok=True)


def _expected_geometry(config: SamConfig) -> dict[tuple[str, str], int]:
    """Image-processor sizes implied by a SAM config, keyed by `(attribute, key)`.

    Images are resized so their longest side is the vision encoder's `image_size` and padded to a square of that
    size; the mask decoder predicts `4 * image_size / patch_size` square logits (two stride-2 upscalings of the image
    embedding), and segmentation maps are resized and padded to that size.
    """
    # The prompt encoder's geometry is the model's input frame in every family (SAM 2's vision config has no size).
    image_size = config.prompt_encoder_config.image_size
    mask_logits_size = 4 * (image_size // config.prompt_encoder_config.patch_size)
    return {
        ("size", "longest_edge"): image_size,
        ("pad_size", "height"): image_size,
        ("pad_size", "width"): image_size,
        ("mask_size", "longest_edge"): mask_logits_size,
        ("mask_pad_size", "height"): mask_logits_size,
        ("mask_pad_size", "width"): mask_logits_size,
    }


def processor_for_config(config: SamConfig) -> SamProcessor:
    """
    Build a `SamProcessor` whose geometry matches a model: images resized (longest side) and padded to
    `config.vision_config.image_size`, segmentation maps to the mask-logit size `4 * image_size / patch_size`. All
    other settings (resampling, ImageNet mean/std) are SAM's defaults. Its image processor is the torchvision-free
    [`SamPromptLearnerImageProcessor`]; save it next to the model (`processor.save_pretrained(model_dir)`) so that
    `pipeline("mask-generation", model=model_dir)` and `AutoProcessor.from_pretrained(model_dir)` find it.

    Args:
        config (`SamConfig`):
            Config of a `SamModel` or a [`SamPromptLearnerModel`] (any `SamConfig` subclass).

    Returns:
        `SamProcessor` wrapping a [`SamPromptLearnerImageProcessor`].
    """
    sizes: dict[str, dict[str, int]] = {}
    for (attribute, key), value in _expected_geometry(config).items():
        sizes.setdefault(attribute, {})[key] = value
    return SamProcessor(image_processor=SamPromptLearnerImageProcessor(**sizes))


def check_processor_matches_config(
    processor: SamProcessor | BaseImageProcessor,
    config: SamConfig,
) -> None:
    """
    Check that a processor's resize/pad geometry is the one a model expects. A processor saved for another SAM size
    silently produces prompts and masks in the wrong coordinate frame, so check before training or evaluating.

    Args:
        processor (`SamProcessor` or a SAM image processor):
            The processor, or its image processor, to check.
        config (`SamConfig`):
            Config of the model it will feed.

    Raises:
        `ValueError`: naming the first mismatching field (e.g. `pad_size['height']`), the processor's value and the
        value the config implies.
    """
    image_processor = getattr(processor, "image_processor", processor)
    for (attribute, key), expected in _expected_geometry(config).items():
        actual = getattr(image_processor, attribute).get(key)
        if actual != expected:
            raise ValueError(
                f"The image processor's `{attribute}['{key}']` is {actual}, but the model config expects {expected} "
                f"(image_size {config.prompt_encoder_config.image_size}, patch_size "
                f"{config.prompt_encoder_config.patch_size}). Build a matching processor with "
                "`processor_for_config(config)`."
            )


def load_processor(model_name_or_path: str, config) -> SamProcessor:
    """The checkpoint's own processor settings (with the torchvision-free image processor), or, when it ships none,
    `processor_for_config`; either way checked against the model's geometry."""
    try:
        processor = SamProcessor(SamPromptLearnerImageProcessor.from_pretrained(model_name_or_path))
    except OSError:  # no preprocessor/processor config in the checkpoint
        processor = processor_for_config(config)
    size = processor.image_processor.size
    if size.get("longest_edge") is None:
        # SAM 2 checkpoints ship `Sam2ImageProcessor` settings (a square resize, which needs torchvision); this package
        # feeds every family SAM's frame (longest side resized, padded), which SAM 2's decoder accepts as well.
        logger.warning(
            f"{model_name_or_path}'s image processor resizes to {size.get('height')} x {size.get('width')} (SAM 2's "
            "square resize); using SAM's resize-longest-side-and-pad frame of the same size instead."
        )
        processor = processor_for_config(config)
    check_processor_matches_config(processor, config)
    return processor

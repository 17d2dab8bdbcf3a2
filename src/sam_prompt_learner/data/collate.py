"""Collation: rows of a normalized dataset -> prompted, padded model batches in SAM's resized and padded frame."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import SamProcessor
from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

from ..image_features import IMAGE_EMBEDDINGS_COLUMN, IMAGE_FEATURE_COLUMNS, image_feature_inputs
from ..modeling_prompt_learner import POINT_PAD_LABEL
from .masks import decode_rle
from .prompts import PromptConfig, prompt_rng, sample_object_prompts, training_batch_rng


def masks_to_padded_frame(
    masks: np.ndarray, reshaped_size: tuple[int, int], image_size: int, mask_size: int
) -> torch.Tensor:
    """
    Put ground-truth masks in the model's frame, as the image processor puts images: resize to `reshaped_size` (the
    longest side becomes `image_size`), pad bottom/right to `image_size` square, then reduce to `mask_size` square.

    The resize is nearest-neighbour at pixel centres; the reduction is area averaging with a 0.5 threshold (a
    low-resolution pixel is foreground when at least half of it is), which keeps the frame exact: low-resolution pixel
    `i` covers padded-frame pixels `[i * image_size / mask_size, (i + 1) * image_size / mask_size)`, the same pixels
    from which `post_process_masks` upsamples SAM's mask logits.

    Args:
        masks (`np.ndarray` of shape `(num_masks, height, width)`): binary masks at the original image size.
        reshaped_size (`tuple[int, int]`): the resized `(height, width)` in the padded frame.
        image_size (`int`): side of the padded square frame.
        mask_size (`int`): side of the returned masks.

    Returns:
        `torch.Tensor` of shape `(num_masks, mask_size, mask_size)`, float32 in {0, 1}.
    """
    num_masks, height, width = masks.shape
    new_height, new_width = reshaped_size
    rows = np.minimum(((np.arange(new_height) + 0.5) * height / new_height).astype(np.int64), height - 1)
    columns = np.minimum(((np.arange(new_width) + 0.5) * width / new_width).astype(np.int64), width - 1)
    padded = torch.zeros(num_masks, image_size, image_size)  # (num_masks, S, S)
    padded[:, :new_height, :new_width] = torch.from_numpy(masks[:, rows[:, None], columns[None, :]]).float()
    if mask_size == image_size:
        return padded
    coverage = F.adaptive_avg_pool2d(padded.unsqueeze(1), mask_size).squeeze(1)  # (num_masks, R, R) in [0, 1]
    return (coverage >= 0.5).float()


class SamPromptCollator:
    r"""
    Collate rows of a normalized dataset (see `prepare_dataset`) into batches for [`SamPromptLearnerModel`].

    Per image, up to `max_objects_per_image` objects become prompts (a random subset in training, the first ones in
    evaluation). Each object gets simulated prompts (`sample_object_prompts`), all objects of a batch in one prompt
    mode (drawn from `prompt_config.mode_weights` per training batch; `prompt_config.evaluation_mode` in evaluation).
    Coordinates are mapped to the processor's frame exactly as `SamProcessor` does: the image is resized so its
    longest side is `image_size` (new size rounded with `int(x + 0.5)`), `x` is scaled by `new_width / width` and `y`
    by `new_height / height`, and the image is padded at the bottom and right. Ground-truth masks go to the same frame
    at `mask_size` resolution (`masks_to_padded_frame`).

    Training randomness depends only on `(seed, epoch, the batch's sample ids)` (`training_batch_rng`): call
    `set_epoch` at the start of every epoch for new prompts; a resumed run sees the prompts an uninterrupted one sees,
    whatever the data loader prefetched. Evaluation prompts depend only on `(prompt_config.seed, sample_id, object
    index)` (`prompt_rng`), so every method is scored on identical prompts.

    Args:
        processor (`SamProcessor` or `SamImageProcessorPil`):
            Gives the geometry (`size["longest_edge"]`, `mask_pad_size`) and, for rows without embeddings, the
            `pixel_values`. Use `processor_for_config(model.config)`.
        prompt_config (`PromptConfig`):
            How prompts are simulated.
        training (`bool`, *optional*, defaults to `True`):
            Random objects, prompts and modes (`True`), or deterministic ones (`False`).
        max_objects_per_image (`int`, *optional*, defaults to 8):
            Most prompts per image per batch; `None` takes every object.
        mask_size (`int`, *optional*):
            Side of the `labels` masks; defaults to the processor's `mask_pad_size["height"]`, the model's mask-logit
            size (4 x the image-embedding size).
        seed (`int`, *optional*, defaults to 0):
            Seed of the training randomness (the run's seed; evaluation prompts use `prompt_config.seed`).
        use_image_embeddings (`bool`, *optional*):
            Batch the rows' cached image features (`True`: `image_embeddings` and, for SAM-HQ and SAM 2, the further
            columns of `image_features.image_feature_shapes`) or process their `image` into `pixel_values`
            (`False`); by default, cached features when the rows have them.

    Returns (from `__call__`), a `dict` with:
        - `pixel_values` (`torch.FloatTensor` of shape `(B, 3, S, S)`) or the cached features as the model takes
          them (`image_feature_inputs`): `image_embeddings` (`(B, C, E, E)` float32; for SAM 2 the list
          `[s0, s1, image_embeddings]`), and for SAM-HQ `intermediate_embeddings` (`[(B, E, E, D)]`);
        - `input_points` (`(B, P, N, 2)` float32) and `input_labels` (`(B, P, N)` int64: 1 positive, 0 negative,
          -10 padding, with coordinates 0), in modes with points;
        - `input_boxes` (`(B, P, 4)` float32 `x_min, y_min, x_max, y_max`; zeros for padding prompts), in modes with
          boxes;
        - `labels` (`(B, P, R, R)` float32 in {0, 1}): ground-truth masks in the padded frame;
        - `prompt_mask` (`(B, P)` bool): `True` for real prompts, `False` for padding (images with fewer objects);
        - `object_indices` (`(B, P)` int64): index of each prompt's object in its row's `masks`, -1 for padding;
        - `original_sizes`, `reshaped_input_sizes` (`(B, 2)` int64, `(height, width)`), for `post_process_masks`;
        - `sample_ids` (`list[str]`).
    """

    def __init__(
        self,
        processor: SamProcessor | SamImageProcessorPil,
        prompt_config: PromptConfig,
        *,
        training: bool = True,
        max_objects_per_image: int | None = 8,
        mask_size: int | None = None,
        seed: int = 0,
        use_image_embeddings: bool | None = None,
    ):
        self.image_processor = getattr(processor, "image_processor", processor)
        self.prompt_config = prompt_config
        self.training = training
        if max_objects_per_image is not None and max_objects_per_image < 1:
            raise ValueError(f"max_objects_per_image must be at least 1 or None, got {max_objects_per_image}.")
        self.max_objects_per_image = max_objects_per_image
        self.image_size = self.image_processor.size["longest_edge"]
        self.mask_size = mask_size if mask_size is not None else self.image_processor.mask_pad_size["height"]
        self.use_image_embeddings = use_image_embeddings
        self.seed = seed
        self.epoch = 0
        # Checked here so that a config with several modes fails at construction, not at the first evaluation batch.
        self.evaluation_mode = None if training else prompt_config.evaluation_mode

    def set_epoch(self, epoch: int) -> None:
        """Start drawing the training prompts of `epoch`."""
        self.epoch = epoch

    def reshaped_size(self, original_size: tuple[int, int]) -> tuple[int, int]:
        """The `(height, width)` an image of `original_size` is resized to, as the image processor computes it."""
        return self.image_processor._get_preprocess_shape(original_size, longest_edge=self.image_size)

    def _choose_objects(self, num_objects: int, rng: np.random.Generator | None) -> list[int]:
        count = num_objects if self.max_objects_per_image is None else min(num_objects, self.max_objects_per_image)
        if rng is not None:
            return sorted(rng.choice(num_objects, size=count, replace=False).tolist())
        return list(range(count))

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if self.training:
            rng = training_batch_rng([str(row["sample_id"]) for row in rows], self.epoch, self.seed)
            mode = self.prompt_config.sample_mode(rng)
        else:
            rng, mode = None, self.evaluation_mode
        use_embeddings = self.use_image_embeddings
        if use_embeddings is None:
            use_embeddings = IMAGE_EMBEDDINGS_COLUMN in rows[0]

        sample_ids, original_sizes, reshaped_sizes, per_image = [], [], [], []
        for row in rows:
            sample_id = str(row["sample_id"])
            if len(row["masks"]) == 0:
                raise ValueError(f"Sample {sample_id!r} has no object; build the dataset with `prepare_dataset`.")
            object_indices = self._choose_objects(len(row["masks"]), rng)
            masks = np.stack([decode_rle(row["masks"][index]) for index in object_indices])  # (p, H, W)
            original_size = masks.shape[1:]
            input_key = IMAGE_EMBEDDINGS_COLUMN if use_embeddings else "image"
            if row.get(input_key) is None:
                raise ValueError(f"Sample {sample_id!r} has no {input_key!r}.")
            if not use_embeddings and (row["image"].height, row["image"].width) != original_size:
                raise ValueError(
                    f"Sample {sample_id!r}: image size {(row['image'].height, row['image'].width)} differs from its "
                    f"mask size {original_size}."
                )
            prompts = [
                sample_object_prompts(
                    mask,
                    self.prompt_config,
                    rng if rng is not None else prompt_rng(sample_id, index, self.prompt_config.seed),
                )
                for mask, index in zip(masks, object_indices, strict=True)
            ]
            reshaped_size = self.reshaped_size(original_size)
            sample_ids.append(sample_id)
            original_sizes.append(original_size)
            reshaped_sizes.append(reshaped_size)
            per_image.append(
                (object_indices, prompts, masks_to_padded_frame(masks, reshaped_size, self.image_size, self.mask_size))
            )

        batch_size = len(rows)
        num_prompts = max(len(object_indices) for object_indices, _, _ in per_image)
        num_points = max(len(prompt.points) for _, prompts, _ in per_image for prompt in prompts)
        input_points = torch.zeros(batch_size, num_prompts, num_points, 2)
        input_labels = torch.full((batch_size, num_prompts, num_points), POINT_PAD_LABEL, dtype=torch.long)
        input_boxes = torch.zeros(batch_size, num_prompts, 4)
        labels = torch.zeros(batch_size, num_prompts, self.mask_size, self.mask_size)
        prompt_mask = torch.zeros(batch_size, num_prompts, dtype=torch.bool)
        prompt_object_indices = torch.full((batch_size, num_prompts), -1, dtype=torch.long)
        for image_index, ((object_indices, prompts, frame_masks), original_size, reshaped_size) in enumerate(
            zip(per_image, original_sizes, reshaped_sizes, strict=True)
        ):
            # SamProcessor._normalize_coordinates: x * new_width / width, y * new_height / height.
            scale = torch.tensor(
                [reshaped_size[1] / original_size[1], reshaped_size[0] / original_size[0]], dtype=torch.float64
            )
            count = len(object_indices)
            for prompt_index, prompt in enumerate(prompts):
                num_object_points = len(prompt.points)
                input_points[image_index, prompt_index, :num_object_points] = (
                    torch.from_numpy(prompt.points) * scale
                ).float()
                input_labels[image_index, prompt_index, :num_object_points] = torch.from_numpy(prompt.labels)
                input_boxes[image_index, prompt_index] = (
                    (torch.from_numpy(prompt.box).view(2, 2) * scale).view(4).float()
                )
            labels[image_index, :count] = frame_masks
            prompt_mask[image_index, :count] = True
            prompt_object_indices[image_index, :count] = torch.tensor(object_indices)

        batch: dict[str, Any] = {}
        if use_embeddings:
            columns = [column for column in IMAGE_FEATURE_COLUMNS if column in rows[0]]
            features = {
                column: torch.stack([torch.as_tensor(row[column]).float() for row in rows]) for column in columns
            }
            batch.update(image_feature_inputs(features))
        else:
            batch["pixel_values"] = self.image_processor([row["image"] for row in rows], return_tensors="pt")[
                "pixel_values"
            ]
        if mode in ("points", "points_and_box"):
            batch["input_points"] = input_points
            batch["input_labels"] = input_labels
        if mode in ("box", "points_and_box"):
            batch["input_boxes"] = input_boxes
        batch.update(
            labels=labels,
            prompt_mask=prompt_mask,
            object_indices=prompt_object_indices,
            original_sizes=torch.tensor(original_sizes, dtype=torch.long),
            reshaped_input_sizes=torch.tensor(reshaped_sizes, dtype=torch.long),
            sample_ids=sample_ids,
        )
        return batch

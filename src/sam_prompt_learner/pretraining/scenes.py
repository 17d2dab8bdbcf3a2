"""Rendered synthetic scenes held in memory for pre-training: rendered once, sampled every step."""

from __future__ import annotations

import numpy as np
import torch

from ..data.synthetic import generate_scene


class Scenes:
    """The first `count` rows of one split of an embedded synthetic task, in memory.

    Rows are exactly those of `load_synthetic_task(task, seed=seed)` (same `generate_scene` calls), and each row's
    evaluation prompts are drawn from its `sample_id` as `prepare_dataset` names it (the row index: the synthetic
    sets have no id column), so in-loop scores and `sam-prompt-learner evaluate` see the same images and prompts.

    Attributes:
        task: the synthetic task's name.
        images: `(num_images, 3, S, S)` uint8.
        masks: `(num_objects, S, S)` bool, all objects of all images.
        first_object: `(num_images + 1,)` int64; image `i` owns `masks[first_object[i]:first_object[i + 1]]`.
        sample_ids: `num_images` strings, the rows' `sample_id` after `prepare_dataset`.
    """

    def __init__(self, task: str, split: str, count: int, image_size: int, seed: int):
        images, masks, counts = [], [], []
        for index in range(count):
            scene = generate_scene(task, split=split, index=index, image_size=image_size, seed=seed)
            images.append(scene.image)
            masks.extend(scene_object.mask for scene_object in scene.objects)
            counts.append(len(scene.objects))
        self.task = task
        empty = np.zeros((0, image_size, image_size), dtype=np.uint8)  # np.stack needs one array; a split may be empty
        self.images = torch.from_numpy(np.stack(images) if images else empty[..., None].repeat(3, -1))
        self.images = self.images.permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S)
        self.masks = torch.from_numpy(np.stack(masks) if masks else empty.astype(bool))
        self.first_object = torch.tensor([0, *np.cumsum(counts)], dtype=torch.int64)
        self.sample_ids = [str(index) for index in range(count)]

    def __len__(self) -> int:
        return len(self.images)

    def object_masks(self, image_index: int) -> torch.Tensor:
        """`(M, S, S)` bool: the objects of image `image_index`."""
        return self.masks[self.first_object[image_index] : self.first_object[image_index + 1]]

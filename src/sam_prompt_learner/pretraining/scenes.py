"""Rendered synthetic scenes held in memory for pre-training: rendered once, sampled every step."""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import torch

from ..data.synthetic import generate_scene

logger = logging.getLogger(__name__)


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

    def __init__(self, task: str, split: str, count: int, image_size: int, seed: int, rows: RenderedRows | None = None):
        """Render rows `0..count-1` here, or take them as `render_scenes` rendered them (`rows`, in row order)."""
        images, masks, counts = rows if rows is not None else _render_rows(task, split, 0, count, image_size, seed)
        self.task = task
        self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S)
        self.masks = torch.from_numpy(masks)
        self.first_object = torch.tensor([0, *np.cumsum(counts)], dtype=torch.int64)
        self.sample_ids = [str(index) for index in range(count)]

    def __len__(self) -> int:
        return len(self.images)

    def object_masks(self, image_index: int) -> torch.Tensor:
        """`(M, S, S)` bool: the objects of image `image_index`."""
        return self.masks[self.first_object[image_index] : self.first_object[image_index + 1]]


def render_scenes(
    requests: list[tuple[str, str, int]], image_size: int, seed: int, num_workers: int = 1
) -> list[Scenes]:
    """`Scenes(task, split, count, image_size, seed)` for each request, rendered in `num_workers` processes.

    Each row has its own random stream, so the rows are the same however they are spread. One pool serves all
    requests: a spawned worker pays the package's import once.
    """
    jobs = [(index, task, split, start, stop) for index, (task, split, count) in enumerate(requests)
            for start, stop in _chunks(count, num_workers)]  # fmt: skip
    parts = None
    if num_workers > 1:
        try:
            # "spawn": the parent holds torch's thread pools, which a forked child must not inherit.
            with ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = [pool.submit(_render_rows, task, split, start, stop, image_size, seed)
                           for _, task, split, start, stop in jobs]  # fmt: skip
                parts = [future.result() for future in futures]
        except BrokenProcessPool:
            logger.warning(
                "Rendering in worker processes failed (a script that starts pre-training needs an "
                "`if __name__ == '__main__':` guard for them); rendering in this process instead."
            )
    if parts is None:
        parts = [_render_rows(task, split, start, stop, image_size, seed) for _, task, split, start, stop in jobs]
    scenes = []
    for index, (task, split, count) in enumerate(requests):
        own = [part for (job_index, *_), part in zip(jobs, parts, strict=True) if job_index == index]
        rows = (np.concatenate([images for images, _, _ in own]), np.concatenate([masks for _, masks, _ in own]),
                [number for _, _, counts in own for number in counts])  # fmt: skip
        scenes.append(Scenes(task, split, count, image_size, seed, rows=rows))
    return scenes


def _chunks(count: int, num_workers: int) -> list[tuple[int, int]]:
    """`[start, stop)` row ranges of about equal size, one per worker, none empty (at least one range)."""
    bounds = np.linspace(0, count, max(1, min(num_workers, count)) + 1).round().astype(int)
    return [(int(start), int(stop)) for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]


# Rows of one split as `_render_rows` returns them.
RenderedRows = tuple[np.ndarray, np.ndarray, list[int]]


def _render_rows(task: str, split: str, start: int, stop: int, image_size: int, seed: int) -> RenderedRows:
    """Rows `start..stop-1`: images `(n, S, S, 3)` uint8, all their object masks `(k, S, S)` bool, objects per row."""
    images, masks, counts = [], [], []
    for index in range(start, stop):
        scene = generate_scene(task, split=split, index=index, image_size=image_size, seed=seed)
        images.append(scene.image)
        masks.extend(scene_object.mask for scene_object in scene.objects)
        counts.append(len(scene.objects))
    # np.concatenate needs one array per part, and a split may be empty.
    image_array = np.stack(images) if images else np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    return image_array, np.stack(masks) if masks else np.zeros((0, image_size, image_size), dtype=bool), counts

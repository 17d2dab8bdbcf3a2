"""Prompt simulation: the clicks and boxes a user would give for an object, drawn from its ground-truth mask.

All coordinates are in original-image pixels, as pixel indices (`x` = column, `y` = row): SAM's prompt encoder adds
0.5 to reach pixel centres, and the collator maps them to the model's resized and padded frame. Training draws
prompts from a shared generator; evaluation draws each object's prompts from a generator seeded by
(`PromptConfig.seed`, sample id, object index) only ([`prompt_rng`]), so every method, batch size and run is scored
on identical prompts.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from .masks import mask_to_box

# A batch uses one mode so that its prompt tensors are rectangular; "points_and_box" gives each object both.
PROMPT_MODES = ("points", "box", "points_and_box")
# "uniform": any mask pixel; "interior": probability proportional to the distance to the background; "edge": only
# pixels within `edge_width` of the background, where a click is most ambiguous.
POINT_PLACEMENTS = ("uniform", "interior", "edge")


@dataclass
class PromptConfig:
    """
    How prompts are simulated from ground-truth masks.

    Args:
        mode_weights (`dict[str, float]`, *optional*, defaults to `{"points": 1.0}`):
            Relative frequency of each prompt mode (`PROMPT_MODES`) in training batches. Evaluation needs exactly one
            mode with a positive weight.
        num_positive_points (`tuple[int, int]`, *optional*, defaults to `(1, 1)`):
            Inclusive range of the number of positive points per object, drawn uniformly per object; at least 1.
        num_negative_points (`tuple[int, int]`, *optional*, defaults to `(0, 0)`):
            Inclusive range of the number of negative points per object, placed outside the mask, near it.
        point_placement (`str`, *optional*, defaults to `"uniform"`):
            Where positive points fall (`POINT_PLACEMENTS`).
        edge_width (`float`, *optional*, defaults to 0.1):
            `"edge"` placement: width of the band along the boundary, as a fraction of `sqrt(object area)` (at least
            one pixel). The image border counts as boundary.
        negative_margin (`float`, *optional*, defaults to 0.2):
            Negative points lie within this distance of the mask, as a fraction of `sqrt(object area)` (at least one
            pixel). An object covering all of that ring gets fewer (possibly no) negatives.
        box_jitter (`float`, *optional*, defaults to 0.0):
            Each box coordinate moves by a uniform amount up to this fraction of the box width (x) or height (y),
            then is clipped to the image.
        seed (`int`, *optional*, defaults to 0):
            Base seed of evaluation prompts.
    """

    mode_weights: dict[str, float] = field(default_factory=lambda: {"points": 1.0})
    num_positive_points: tuple[int, int] = (1, 1)
    num_negative_points: tuple[int, int] = (0, 0)
    point_placement: str = "uniform"
    edge_width: float = 0.1
    negative_margin: float = 0.2
    box_jitter: float = 0.0
    seed: int = 0

    def __post_init__(self):
        unknown_modes = set(self.mode_weights) - set(PROMPT_MODES)
        if unknown_modes:
            raise ValueError(f"Unknown prompt modes {sorted(unknown_modes)}; choose from {PROMPT_MODES}.")
        if any(weight < 0 for weight in self.mode_weights.values()) or sum(self.mode_weights.values()) <= 0:
            raise ValueError(f"mode_weights must be non-negative with a positive sum, got {self.mode_weights}.")
        self.num_positive_points = tuple(self.num_positive_points)
        self.num_negative_points = tuple(self.num_negative_points)
        for name, (low, high), minimum in (
            ("num_positive_points", self.num_positive_points, 1),
            ("num_negative_points", self.num_negative_points, 0),
        ):
            if not minimum <= low <= high:
                raise ValueError(
                    f"{name} must be a range (low, high) with {minimum} <= low <= high, got {(low, high)}."
                )
        if self.point_placement not in POINT_PLACEMENTS:
            raise ValueError(f"point_placement must be one of {POINT_PLACEMENTS}, got {self.point_placement!r}.")
        if self.edge_width <= 0 or self.negative_margin <= 0 or self.box_jitter < 0:
            raise ValueError("edge_width and negative_margin must be positive and box_jitter non-negative.")
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}.")

    @property
    def max_points(self) -> int:
        """The largest number of points an object can get."""
        return self.num_positive_points[1] + self.num_negative_points[1]

    @property
    def evaluation_mode(self) -> str:
        """The prompt mode of evaluation batches: the only mode with a positive weight."""
        modes = [mode for mode, weight in self.mode_weights.items() if weight > 0]
        if len(modes) != 1:
            raise ValueError(
                f"Evaluation uses one prompt mode, but mode_weights has {modes}; evaluate each mode with its own "
                "PromptConfig(mode_weights={mode: 1.0})."
            )
        return modes[0]

    def sample_mode(self, rng: np.random.Generator) -> str:
        """Draw the prompt mode of a training batch from `mode_weights`."""
        modes = list(self.mode_weights)
        weights = np.array([self.mode_weights[mode] for mode in modes], dtype=np.float64)
        return modes[rng.choice(len(modes), p=weights / weights.sum())]


class ObjectPrompts(NamedTuple):
    """The simulated prompts of one object, in original-image pixel indices."""

    points: np.ndarray  # (num_points, 2) float64 x, y; positives first
    labels: np.ndarray  # (num_points,) int64: 1 positive, 0 negative
    box: np.ndarray  # (4,) float64 x_min, y_min, x_max, y_max


def prompt_rng(sample_id: str, object_index: int, seed: int = 0) -> np.random.Generator:
    """
    The generator of one object's evaluation prompts: a function of its arguments only, identical across processes,
    runs and Python versions.

    Args:
        sample_id (`str`): the sample's id (`sample_id` column of a normalized dataset).
        object_index (`int`): the object's index in the sample's `masks`.
        seed (`int`, *optional*, defaults to 0): base seed (`PromptConfig.seed`).

    Returns:
        `np.random.Generator`.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, object_index, *_text_digest(sample_id)]))


def training_batch_rng(sample_ids: Sequence[str], epoch: int, seed: int = 0) -> np.random.Generator:
    """
    The generator of a training batch's random choices (objects, prompt mode, prompts): a function of the batch's
    sample ids, the epoch and the seed only. Unlike a draw from a global generator, it does not depend on how many
    batches were collated before, so a run resumed mid-epoch (whose data loader may have prefetched batches before it
    was killed) sees exactly the prompts an uninterrupted run sees; every epoch draws new prompts.

    Args:
        sample_ids (`Sequence[str]`): the batch's sample ids, in order.
        epoch (`int`): the training epoch.
        seed (`int`, *optional*, defaults to 0): the run's seed.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, *_text_digest("\x00".join(sample_ids))]))


def _text_digest(text: str) -> list[int]:
    """SHA-256 of `text` as eight 32-bit words: stable across processes, runs and Python versions (Python's `hash()`
    is salted per process)."""
    return np.frombuffer(hashlib.sha256(text.encode("utf-8")).digest(), dtype=np.uint32).tolist()


def _tight_crop(mask: np.ndarray, margin: int = 0) -> tuple[np.ndarray, int, int]:
    """The mask's bounding box grown by `margin` pixels (clipped to the image): `(crop, x_offset, y_offset)`."""
    x_min, y_min, x_max, y_max = mask_to_box(mask).astype(int)
    y_start, x_start = max(y_min - margin, 0), max(x_min - margin, 0)
    return mask[y_start : y_max + margin + 1, x_start : x_max + margin + 1], x_start, y_start


def _draw_pixels(weights: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` pixels drawn with probability proportional to `weights` (2D), as `(count, 2)` x, y indices.

    Without replacement when there are enough candidates, so that several clicks are distinct.
    """
    flat_weights = weights.ravel()
    candidates = np.flatnonzero(flat_weights > 0)
    probabilities = flat_weights[candidates] / flat_weights[candidates].sum()
    chosen = rng.choice(candidates, size=count, replace=count > candidates.size, p=probabilities)
    rows, columns = np.divmod(chosen, weights.shape[1])
    return np.stack([columns, rows], axis=1).astype(np.float64)


def sample_positive_points(
    mask: np.ndarray, count: int, placement: str, edge_width: float, rng: np.random.Generator
) -> np.ndarray:
    """
    Draw positive points inside a mask.

    Args:
        mask (`np.ndarray` of shape `(height, width)`): a non-empty binary mask.
        count (`int`): number of points.
        placement (`str`): one of `POINT_PLACEMENTS`.
        edge_width (`float`): `"edge"` band width as a fraction of `sqrt(area)`, at least one pixel.
        rng (`np.random.Generator`): the random generator.

    Returns:
        `np.ndarray` of shape `(count, 2)`, float64 `x, y` pixel indices, all on mask pixels.
    """
    crop, x_offset, y_offset = _tight_crop(mask)
    if placement == "uniform":
        weights = crop.astype(np.float64)
    else:
        # Zero padding makes the image border count as background: an object cut by the border has its edge there.
        distance = ndimage.distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]  # (h, w), >= 1 on the mask
        if placement == "interior":
            weights = distance
        else:
            band = max(1.0, edge_width * math.sqrt(crop.sum()))
            weights = (crop & (distance <= band)).astype(np.float64)
    points = _draw_pixels(weights, count, rng)
    return points + np.array([x_offset, y_offset], dtype=np.float64)


def sample_negative_points(mask: np.ndarray, count: int, margin: float, rng: np.random.Generator) -> np.ndarray:
    """
    Draw negative points outside a mask, within `margin * sqrt(area)` pixels of it (at least one pixel).

    Args:
        mask (`np.ndarray` of shape `(height, width)`): a non-empty binary mask.
        count (`int`): number of points wanted.
        margin (`float`): distance bound as a fraction of `sqrt(area)`.
        rng (`np.random.Generator`): the random generator.

    Returns:
        `np.ndarray` of shape `(n, 2)`, float64 `x, y` pixel indices off the mask; `n == count`, or 0 when no pixel
        of the image lies within the margin outside the mask.
    """
    if count == 0:
        return np.zeros((0, 2), dtype=np.float64)
    band = max(1.0, margin * math.sqrt(mask.sum()))
    crop, x_offset, y_offset = _tight_crop(mask, margin=math.ceil(band))
    distance_to_mask = ndimage.distance_transform_edt(crop == 0)  # (h, w), 0 on the mask; the crop holds the whole mask
    ring = (distance_to_mask > 0) & (distance_to_mask <= band)
    if not ring.any():
        return np.zeros((0, 2), dtype=np.float64)
    return _draw_pixels(ring.astype(np.float64), count, rng) + np.array([x_offset, y_offset], dtype=np.float64)


def jittered_box(mask: np.ndarray, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """
    The mask's bounding box with each coordinate moved by up to `jitter` times the box width (x) or height (y),
    clipped to the image. The box size is counted in pixels (`x_max - x_min + 1`), so a one-pixel object jitters too.

    Args:
        mask (`np.ndarray` of shape `(height, width)`): a non-empty binary mask.
        jitter (`float`): maximum shift as a fraction of the box size.
        rng (`np.random.Generator`): the random generator.

    Returns:
        `np.ndarray` of shape `(4,)`, float64 `x_min, y_min, x_max, y_max` with `x_min <= x_max`, `y_min <= y_max`.
        Each coordinate is within `jitter` box sizes of the tight box's (clipping only moves it closer).
    """
    box = mask_to_box(mask)
    height, width = mask.shape
    box_width, box_height = box[2] - box[0] + 1, box[3] - box[1] + 1
    box = box + rng.uniform(-1.0, 1.0, size=4) * jitter * np.array([box_width, box_height, box_width, box_height])
    box = np.clip(box, 0, [width - 1, height - 1, width - 1, height - 1])
    # Large jitter can cross two sides; sorting keeps every coordinate within the bound (see docstring).
    return np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])])


def sample_object_prompts(mask: np.ndarray, config: PromptConfig, rng: np.random.Generator) -> ObjectPrompts:
    """
    Simulate the prompts of one object: its points (positives, then negatives) and its box. Both are always drawn, in
    a fixed order, so an object's prompts do not depend on the batch's prompt mode.

    Args:
        mask (`np.ndarray` of shape `(height, width)`): the object's non-empty binary mask.
        config (`PromptConfig`): how to simulate.
        rng (`np.random.Generator`): the random generator ([`prompt_rng`] for evaluation).

    Returns:
        [`ObjectPrompts`].
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("Cannot simulate prompts for an empty mask.")
    num_positive = int(rng.integers(config.num_positive_points[0], config.num_positive_points[1] + 1))
    num_negative = int(rng.integers(config.num_negative_points[0], config.num_negative_points[1] + 1))
    positives = sample_positive_points(mask, num_positive, config.point_placement, config.edge_width, rng)
    negatives = sample_negative_points(mask, num_negative, config.negative_margin, rng)
    box = jittered_box(mask, config.box_jitter, rng)
    labels = np.concatenate([np.ones(len(positives), dtype=np.int64), np.zeros(len(negatives), dtype=np.int64)])
    return ObjectPrompts(np.concatenate([positives, negatives]), labels, box)

"""Prompt and augmentation sampling for pre-training a SAM from rendered scenes (batched torch, one generator).

Everything here draws from an explicit `torch.Generator`, so a pre-training run is a function of its seed, and a
resumed run (which restores the generator's state) continues exactly where the interrupted one stood.
"""

from __future__ import annotations

import torch

from ..modeling_prompt_learner import POINT_PAD_LABEL


def sample_mask_pixels(masks: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` pixels drawn uniformly (with replacement) from each mask, as `(N, count, 2)` float `x, y` indices.

    Rows of `masks` must be non-empty.
    """
    num_masks, height, width = masks.shape
    index = torch.multinomial(masks.flatten(1).float(), count, replacement=True, generator=generator)  # (N, count)
    return torch.stack([index % width, index // width], dim=-1).float()


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes `(N, 4)` float `x_min, y_min, x_max, y_max` (inclusive pixel indices) of non-empty masks."""
    rows, columns = masks.any(dim=2), masks.any(dim=1)  # (N, H), (N, W)
    height, width = masks.shape[1:]

    def first_last(occupied: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(size)
        first = torch.where(occupied, positions, size).amin(dim=1)
        last = torch.where(occupied, positions, -1).amax(dim=1)
        return first, last

    x_min, x_max = first_last(columns, width)
    y_min, y_max = first_last(rows, height)
    return torch.stack([x_min, y_min, x_max, y_max], dim=1).float()


def jitter_boxes(boxes: torch.Tensor, jitter: float, size: int, generator: torch.Generator) -> torch.Tensor:
    """Move each coordinate by up to `jitter` times the box width (x) or height (y), clipped to the image."""
    extent = (boxes[:, 2:] - boxes[:, :2] + 1).repeat(1, 2)  # (N, 4): width, height, width, height
    noise = (torch.rand(boxes.shape, generator=generator) * 2 - 1) * jitter * extent
    moved = (boxes + noise).clamp(0, size - 1)
    return torch.cat([torch.minimum(moved[:, :2], moved[:, 2:]), torch.maximum(moved[:, :2], moved[:, 2:])], dim=1)


def sample_multi_clicks(masks: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Refinement-style prompts: 1-3 positive clicks plus, half the time, one negative click near the object (in its
    box grown by 20%, off the mask). At least two real clicks per object; unused slots are padding.

    Returns:
        points `(N, 4, 2)` float `x, y`; labels `(N, 4)` int64 (1 positive, 0 negative, `POINT_PAD_LABEL` padding).
    """
    num_masks, height, width = masks.shape
    positives = sample_mask_pixels(masks, 3, generator)  # (N, 3, 2)
    boxes = masks_to_boxes(masks)
    margin = 0.2 * (boxes[:, 2:] - boxes[:, :2] + 1)  # (N, 2)
    grown = torch.cat([boxes[:, :2] - margin, boxes[:, 2:] + margin], dim=1)
    xs, ys = torch.arange(width).view(1, 1, width), torch.arange(height).view(1, height, 1)
    near = (xs >= grown[:, 0, None, None]) & (xs <= grown[:, 2, None, None])
    near = near & (ys >= grown[:, 1, None, None]) & (ys <= grown[:, 3, None, None]) & ~masks  # (N, H, W)
    has_ring = near.flatten(1).any(dim=1)
    # Objects without any nearby background sample from anywhere and get no negative click.
    negatives = sample_mask_pixels(near | ~has_ring.view(-1, 1, 1), 1, generator)  # (N, 1, 2)
    with_negative = (torch.rand(num_masks, generator=generator) < 0.5) & has_ring
    num_positive = torch.randint(1, 4, (num_masks,), generator=generator)
    num_positive = torch.where(with_negative, num_positive, num_positive.clamp(min=2))
    slots = torch.arange(3).view(1, 3)
    positive_labels = torch.where(slots < num_positive.view(-1, 1), 1, POINT_PAD_LABEL)  # (N, 3)
    negative_labels = torch.where(with_negative, 0, POINT_PAD_LABEL).view(-1, 1)
    labels = torch.cat([positive_labels, negative_labels], dim=1)
    points = torch.cat([positives, negatives], dim=1) * (labels != POINT_PAD_LABEL).unsqueeze(-1)
    return points, labels


def augment(images: torch.Tensor, masks: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random flip and quarter turn on an image `(3, S, S)` and its masks `(M, S, S)`."""
    turns = int(torch.randint(4, (1,), generator=generator))
    images, masks = torch.rot90(images, turns, (-2, -1)), torch.rot90(masks, turns, (-2, -1))
    if torch.rand(1, generator=generator) < 0.5:
        images, masks = images.flip(-1), masks.flip(-1)
    return images, masks

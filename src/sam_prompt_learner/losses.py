"""Training losses of [`SamPromptLearnerModel`]: SAM's mask losses, the IoU-head loss and the two point-matching
(boundary) losses, with the contour and boundary-band sampling they need.

Every mask-level function takes flattened masks: `logits` `(N, H, W)` and binary `targets` `(N, H, W)` on the same
grid, and returns one value per mask `(N,)` so callers can select and average over valid prompts themselves.
Point coordinates are `(x, y)` normalised to `[0, 1]` over that grid (pixel `(i, j)` has centre
`((j + 0.5) / W, (i + 0.5) / H)`), the same frame as the padded model input.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from .metrics import binary_erosion


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0):
    """Focal loss (Lin et al. 2017) averaged over pixels, as SAM trains its masks. Returns `(N,)`."""
    targets = targets.to(logits.dtype)
    probs = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probs * targets + (1 - probs) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * (1 - p_t) ** gamma * bce).flatten(1).mean(1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft dice loss on sigmoid probabilities. Returns `(N,)`."""
    probs = logits.sigmoid().flatten(1)
    targets = targets.to(probs.dtype).flatten(1)
    intersection = (probs * targets).sum(1)
    return 1 - (2 * intersection + smooth) / (probs.sum(1) + targets.sum(1) + smooth)


def _pixel_centres(height: int, width: int, device, dtype) -> torch.Tensor:
    """Normalised `(x, y)` centres of every pixel of an `H x W` grid in raster order, `(H*W, 2)`."""
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2)


def _dilate(masks: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Binary dilation with a `(2w+1)` square. `(N, H, W)` bool."""
    return F.max_pool2d(masks.float().unsqueeze(1), 2 * width + 1, stride=1, padding=width).squeeze(1) > 0.5


def _contour(masks: torch.Tensor) -> torch.Tensor:
    """Mask pixels with a background pixel (or the grid edge) among their 4 neighbours: the thinnest 8-connected
    contour, whose pixel centres lie within one pixel of the true boundary. `(N, H, W)` bool."""
    padded = F.pad(masks.float(), (1, 1, 1, 1), value=0.0)
    interior = padded[:, :-2, 1:-1] * padded[:, 2:, 1:-1] * padded[:, 1:-1, :-2] * padded[:, 1:-1, 2:]
    return masks & (interior < 0.5)


def sample_contour_points(masks: torch.Tensor, num_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `num_points` points spread evenly along each mask's contour.

    The contour is the set of mask pixels with a background pixel (or the grid edge) among their 4 neighbours; points
    are chosen by farthest-point sampling over it, starting from the first contour pixel in raster order, so the
    result is deterministic and covers every part of the contour (several components included).

    Args:
        masks (`torch.Tensor` of shape `(N, H, W)`): binary masks.
        num_points (`int`): K, points per mask. A contour with fewer than K pixels repeats points.

    Returns:
        points `(N, K, 2)`: normalised `(x, y)` pixel centres; has_contour `(N,)` bool, False for empty masks (their
        points are meaningless and must be ignored).
    """
    masks = masks.bool()
    num_masks, height, width = masks.shape
    contour = _contour(masks).flatten(1)  # (N, H*W)
    lengths = contour.sum(dim=1)  # (N,)
    # Work on the contour pixels only (a few hundred, not H*W): each row's contour pixels first, in raster order (a
    # stable sort keeps it), padded to the longest contour.
    longest = max(int(lengths.max()) if num_masks else 0, 1)
    order = torch.sort(contour.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :longest]
    is_contour = torch.arange(longest, device=masks.device).unsqueeze(0) < lengths.unsqueeze(1)  # (N, L)
    candidates = _pixel_centres(height, width, masks.device, torch.float32)[order]  # (N, L, 2)
    rows = torch.arange(num_masks, device=masks.device)
    # Squared distance of every contour pixel to the chosen set; -1 marks padding, which may never be chosen.
    distance = torch.where(is_contour, float("inf"), -1.0)
    chosen = []
    for _ in range(num_points):
        index = distance.argmax(dim=1)  # the first +inf, i.e. the first contour pixel in raster order, on pass one
        point = candidates[rows, index]  # (N, 2)
        chosen.append(point)
        new_distance = (candidates - point.unsqueeze(1)).square().sum(-1)  # (N, L)
        distance = torch.where(is_contour, torch.minimum(distance, new_distance), distance)
    return torch.stack(chosen, dim=1), lengths > 0


def hungarian_point_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance between predicted and target point sets after optimal one-to-one matching.

    The assignment (Hungarian algorithm on the pairwise L1 cost, as DETR-style set losses do) is computed without
    gradient; the loss is differentiable in the predicted points.

    Args:
        predicted (`torch.Tensor` of shape `(N, K, 2)`): predicted points.
        target (`torch.Tensor` of shape `(N, K, 2)`): ground-truth points (order irrelevant).

    Returns:
        `(N,)` loss per point set.
    """
    cost = torch.cdist(predicted.detach().float(), target.float(), p=1).cpu().numpy()  # (N, K, K)
    # Non-finite points (a diverged head) cannot be matched, and scipy refuses them: any assignment will do, since
    # their loss is non-finite whatever it is, and the training loop stops on it naming the term.
    cost = np.nan_to_num(cost, nan=0.0, posinf=0.0, neginf=0.0)
    permutations = np.stack([linear_sum_assignment(c)[1] for c in cost]) if len(cost) else np.zeros((0, 0), int)
    index = torch.as_tensor(permutations, device=target.device, dtype=torch.long)  # predicted k <-> target index[k]
    matched = torch.gather(target, 1, index.unsqueeze(-1).expand(-1, -1, 2))
    return (predicted - matched.to(predicted.dtype)).abs().sum(-1).mean(-1)


def sample_boundary_band_points(
    masks: torch.Tensor, num_points: int, band_width: int = 2, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample points in the band around each mask's boundary: half just inside (target 1), half just outside (0).

    Args:
        masks (`torch.Tensor` of shape `(N, H, W)`): binary masks.
        num_points (`int`): points per mask (split evenly between the inner and outer band).
        band_width (`int`): band half-width in pixels.
        generator (`torch.Generator`, *optional*): random source (the global one by default).

    Returns:
        points `(N, M, 2)` normalised `(x, y)`; targets `(N, M)` float in {0, 1}; valid `(N, M)` bool (False where a
        band is empty, e.g. an empty mask, or a mask that fills the grid has no outer band).
    """
    masks = masks.bool()
    num_masks, height, width = masks.shape
    inner = (masks & ~binary_erosion(masks, band_width)).flatten(1)
    outer = (_dilate(masks, band_width) & ~masks).flatten(1)
    centres = _pixel_centres(height, width, masks.device, torch.float32)
    points, targets, valid = [], [], []
    for band, target, count in ((inner, 1.0, num_points - num_points // 2), (outer, 0.0, num_points // 2)):
        has_band = band.any(dim=1)
        # Uniform weights over the band; rows without a band sample anything and are marked invalid.
        weights = torch.where(has_band.unsqueeze(1), band.float(), torch.ones_like(band, dtype=torch.float32))
        index = torch.multinomial(weights, count, replacement=True, generator=generator)  # (N, count)
        points.append(centres[index])
        targets.append(torch.full((num_masks, count), target, device=masks.device))
        valid.append(has_band.unsqueeze(1).expand(-1, count))
    return torch.cat(points, 1), torch.cat(targets, 1), torch.cat(valid, 1)


def point_logits(logits: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample mask logits `(N, H, W)` at normalised points `(N, M, 2)`. Returns `(N, M)`."""
    grid = (2 * points - 1).unsqueeze(1).to(logits.dtype)  # (N, 1, M, 2), grid_sample's [-1, 1] frame
    return F.grid_sample(logits.unsqueeze(1), grid, mode="bilinear", align_corners=False).reshape(points.shape[:2])


def boundary_point_loss(
    logits: torch.Tensor, points: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Binary cross-entropy of the mask logits sampled at boundary-band points. Returns `(N,)` (0 with no point)."""
    sampled = point_logits(logits, points)
    bce = F.binary_cross_entropy_with_logits(sampled, targets.to(sampled.dtype), reduction="none")
    valid = valid.to(bce.dtype)
    return (bce * valid).sum(1) / valid.sum(1).clamp(min=1)

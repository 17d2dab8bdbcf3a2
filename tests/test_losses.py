import math

import pytest
import torch

from sam_prompt_learner.losses import (
    boundary_point_loss,
    dice_loss,
    hungarian_point_loss,
    point_logits,
    sample_boundary_band_points,
    sample_contour_points,
    sigmoid_focal_loss,
)


def disk(size=64, centre=(30.0, 26.0), radius=14.0):
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    return ((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= radius**2).unsqueeze(0)


def test_contour_points_of_a_disk_lie_on_its_radius_and_spread_around_it():
    size, centre, radius = 64, (30.0, 26.0), 14.0
    points, has_contour = sample_contour_points(disk(size, centre, radius), num_points=16)
    assert has_contour.tolist() == [True]
    pixels = points[0] * size  # back to pixel units
    distances = (pixels - torch.tensor(centre)).norm(dim=-1)
    assert ((distances - radius).abs() <= 1.0).all(), distances
    # Evenly spread: the angles cover the circle with no gap much larger than 360/16 degrees.
    angles = torch.atan2(pixels[:, 1] - centre[1], pixels[:, 0] - centre[0]).sort().values
    gaps = torch.diff(torch.cat([angles, angles[:1] + 2 * math.pi]))
    assert gaps.max() < 2.0 * (2 * math.pi / 16)


def test_contour_of_an_empty_mask_is_flagged():
    _, has_contour = sample_contour_points(torch.zeros(2, 16, 16, dtype=torch.bool), num_points=4)
    assert has_contour.tolist() == [False, False]


def test_hungarian_loss_is_zero_for_a_permuted_copy_and_positive_otherwise():
    target = torch.rand(3, 16, 2, generator=torch.Generator().manual_seed(0))
    permuted = target[:, torch.randperm(16, generator=torch.Generator().manual_seed(1))]
    assert torch.allclose(hungarian_point_loss(permuted, target), torch.zeros(3), atol=1e-7)
    shifted = permuted + torch.tensor([0.1, -0.2])
    # Every point moved by the same offset: the optimal matching keeps pairs and the mean L1 is |0.1| + |-0.2|.
    assert torch.allclose(hungarian_point_loss(shifted, target), torch.full((3,), 0.3), atol=1e-5)


def test_hungarian_loss_gradient_flows_to_predictions():
    target = torch.rand(2, 8, 2)
    predicted = torch.rand(2, 8, 2, requires_grad=True)
    hungarian_point_loss(predicted, target).sum().backward()
    assert predicted.grad is not None and predicted.grad.abs().sum() > 0


def test_focal_and_dice_against_hand_computed_values():
    logits = torch.tensor([[[0.0, 2.0], [-2.0, 0.0]]])
    targets = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    p = torch.sigmoid(torch.tensor(2.0)).item()
    # Pixels: (p=.5,t=1) (p=sig2,t=1) (p=sig(-2),t=0) (p=.5,t=0)
    expected_focal = (
        0.25 * 0.25 * math.log(2)
        + 0.25 * (1 - p) ** 2 * -math.log(p)
        + 0.75 * (1 - p) ** 2 * -math.log(p)
        + 0.75 * 0.25 * math.log(2)
    ) / 4
    assert sigmoid_focal_loss(logits, targets).item() == pytest.approx(expected_focal, rel=1e-5)
    probabilities = [0.5, p, 1 - p, 0.5]
    expected_dice = 1 - (2 * (0.5 + p) + 1) / (sum(probabilities) + 2 + 1)
    assert dice_loss(logits, targets).item() == pytest.approx(expected_dice, rel=1e-5)


def test_boundary_band_points_sit_inside_and_outside_the_boundary():
    mask = disk(64, (32.0, 32.0), 12.0)
    points, targets, valid = sample_boundary_band_points(
        mask, 40, band_width=2, generator=torch.Generator().manual_seed(0)
    )
    assert valid.all()
    distances = (points[0] * 64 - 32.0).norm(dim=-1)
    inside, outside = targets[0] == 1, targets[0] == 0
    assert inside.sum() == 20 and outside.sum() == 20
    assert (distances[inside] <= 12.0).all() and (distances[inside] >= 12.0 - 3.5).all()
    assert (distances[outside] > 12.0).all() and (distances[outside] <= 12.0 + 3.5).all()
    _, _, valid_empty = sample_boundary_band_points(torch.zeros(1, 16, 16, dtype=torch.bool), 8)
    assert not valid_empty.any()


def test_point_logits_read_pixel_centres_exactly_and_boundary_loss_prefers_correct_logits():
    logits = torch.arange(16.0).reshape(1, 4, 4)
    centres = torch.tensor([[[0.125, 0.125], [0.875, 0.375]]])  # pixels (row 0, col 0) and (row 1, col 3)
    assert point_logits(logits, centres).tolist() == [[0.0, 7.0]]
    mask = disk(32, (16.0, 16.0), 8.0)
    points, targets, valid = sample_boundary_band_points(mask, 32)
    good = torch.where(mask, 5.0, -5.0)
    assert boundary_point_loss(good, points, targets, valid) < boundary_point_loss(-good, points, targets, valid)


def test_contour_sampling_is_farthest_point_sampling_from_the_first_contour_pixel():
    """Against a plain per-mask reference: greedy farthest-point sampling over the 4-neighbour contour pixels."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(6, 1, 24, 20, generator=generator)
    masks = torch.nn.functional.avg_pool2d(noise, 5, 1, 2).squeeze(1) > 0.5  # blobs, several components
    masks[0] = True  # the contour is the grid edge
    points, has_contour = sample_contour_points(masks, num_points=7)
    for mask, sampled in zip(masks, points, strict=True):
        padded = torch.nn.functional.pad(mask, (1, 1, 1, 1))
        interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        ys, xs = torch.nonzero(mask & ~interior, as_tuple=True)  # raster order
        contour = torch.stack([(xs + 0.5) / 20, (ys + 0.5) / 24], dim=1)
        expected = [contour[0]]
        for _ in range(6):
            distance = (contour.unsqueeze(1) - torch.stack(expected)).square().sum(-1).min(dim=1).values
            expected.append(contour[distance.argmax()])
        torch.testing.assert_close(sampled, torch.stack(expected))
    assert has_contour.all()


def test_hungarian_point_loss_of_non_finite_points_is_non_finite_instead_of_a_scipy_error():
    predicted = torch.rand(3, 4, 2)
    predicted[1, 2, 0] = float("nan")
    predicted[2, 0, 1] = float("inf")
    loss = hungarian_point_loss(predicted, torch.rand(3, 4, 2))
    assert torch.isfinite(loss[0]) and not torch.isfinite(loss[1:]).any()

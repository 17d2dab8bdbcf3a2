import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from sam_prompt_learner.metrics import (
    PromptSegmentationMetric,
    binary_erosion,
    boundary_dilation,
    boundary_iou,
    boundary_region,
    iou_spread_per_object,
    mask_dice,
    mask_iou,
    segmentation_statistics,
)


def _square(size: int, top: int, left: int, height: int, width: int) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top : top + height, left : left + width] = True
    return mask


def _counts(*rows: tuple[int, int, int, int]) -> dict[str, list[int]]:
    """Metric input from (intersection, union, boundary intersection, boundary union) rows chosen by hand."""
    columns = ("intersection", "union", "boundary_intersection", "boundary_union")
    return {name: [row[index] for row in rows] for index, name in enumerate(columns)}


# ---- plain functions, hand-computed values ----


def test_iou_and_dice_of_hand_computed_masks():
    # 4 x 4 grid: top two rows (8 px) vs left two columns (8 px) overlap in the 2 x 2 corner.
    top_rows = torch.zeros(4, 4, dtype=torch.bool)
    top_rows[:2] = True
    left_columns = torch.zeros(4, 4, dtype=torch.bool)
    left_columns[:, :2] = True
    # A 3-px prediction inside a 6-px reference: I = 3, U = 6.
    inner = torch.zeros(4, 4, dtype=torch.long)
    inner[0, :3] = 1
    outer = torch.zeros(4, 4, dtype=torch.long)
    outer[0, :3] = outer[1, :3] = 1
    predictions = torch.stack([top_rows, inner.bool(), top_rows]).reshape(3, 1, 4, 4)  # leading dims are kept
    references = torch.stack([left_columns, outer.bool(), top_rows]).reshape(3, 1, 4, 4)

    iou = mask_iou(predictions, references)
    dice = mask_dice(predictions, references)

    assert iou.shape == dice.shape == (3, 1)
    torch.testing.assert_close(iou.flatten(), torch.tensor([4 / 12, 3 / 6, 1.0], dtype=torch.float64))
    torch.testing.assert_close(dice.flatten(), torch.tensor([8 / 16, 6 / 9, 1.0], dtype=torch.float64))
    # 0/1 integer masks give the same scores as bool masks.
    torch.testing.assert_close(mask_iou(inner, outer), torch.tensor(0.5, dtype=torch.float64))


def test_empty_mask_conventions():
    empty = torch.zeros(10, 10, dtype=torch.bool)
    square = _square(10, 2, 2, 5, 5)
    predictions = torch.stack([empty, empty, square])
    references = torch.stack([empty, square, empty])
    expected = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)  # both empty -> 1, exactly one empty -> 0

    torch.testing.assert_close(mask_iou(predictions, references), expected)
    torch.testing.assert_close(mask_dice(predictions, references), expected)
    torch.testing.assert_close(boundary_iou(predictions, references), expected)
    assert not boundary_region(empty).any()


def test_boundary_dilation_follows_the_image_diagonal():
    assert boundary_dilation(10, 10) == 1  # 0.02 * 14.1 rounds to 0, raised to the 1 px minimum
    assert boundary_dilation(1000, 1000) == 28  # 0.02 * 1414.2 = 28.3
    assert boundary_dilation(300, 400, dilation_ratio=0.1) == 50  # 0.1 * 500
    with pytest.raises(ValueError, match="dilation_ratio"):
        boundary_dilation(10, 10, dilation_ratio=-0.1)


def test_boundary_region_is_the_inner_ring_and_includes_the_image_border():
    inside = _square(10, 2, 2, 6, 6)
    ring = boundary_region(inside)  # d = 1: the 6 x 6 square minus its 4 x 4 interior
    assert ring.sum() == 36 - 16
    assert not ring[3:7, 3:7].any() and ring[2, 2:8].all() and ring[2:8, 7].all()

    # A mask cut by the grid edge has a boundary along the edge (pixels outside the grid are background): the 4 x 4
    # corner square minus its 2 x 2 interior, not the 7 px of its right and bottom sides only.
    corner = boundary_region(_square(10, 0, 0, 4, 4))
    assert corner.sum() == 16 - 4
    assert corner[0, :4].all() and corner[:4, 0].all()


@pytest.mark.parametrize("width", [1, 2, 5])
def test_binary_erosion_matches_scipy(width):
    generator = torch.Generator().manual_seed(width)
    masks = torch.rand(4, 23, 31, generator=generator) > 0.2
    masks[:, 3:20, 4:25] = True  # a solid block so that something survives the erosion

    expected = np.stack(
        [
            ndimage.binary_erosion(mask, structure=np.ones((3, 3)), iterations=width, border_value=0)
            for mask in masks.numpy()
        ]
    )

    eroded = binary_erosion(masks, width)
    assert eroded.any()
    np.testing.assert_array_equal(eroded.numpy(), expected)


def test_boundary_iou_is_much_lower_than_iou_for_a_shifted_edge():
    # 12 x 12 grid (d = 1). Reference: the 10 x 10 square at rows 1-10, columns 1-10. Prediction: the same square one
    # column to the right. IoU = 90 / 110. Each boundary is the square's 36-px outer ring; they share only the 9 px of
    # the top row and the 9 px of the bottom row in columns 2-10 (the left/right sides are disjoint columns 1, 10 vs
    # 2, 11), so boundary IoU = 18 / (36 + 36 - 18) = 1 / 3.
    reference = _square(12, 1, 1, 10, 10)
    prediction = _square(12, 1, 2, 10, 10)

    statistics = segmentation_statistics(prediction, reference)

    assert statistics == {
        "intersection": torch.tensor(90),
        "union": torch.tensor(110),
        "boundary_intersection": torch.tensor(18),
        "boundary_union": torch.tensor(54),
    }
    assert math.isclose(mask_iou(prediction, reference).item(), 9 / 11)
    assert math.isclose(boundary_iou(prediction, reference).item(), 1 / 3)


def test_boundary_iou_is_lower_than_iou_for_a_thin_notch():
    # Same 10 x 10 reference; the prediction has a 1-px wide, 5-px deep notch cut down from the top edge at column 5
    # (rows 1-5). IoU = 95 / 100. The prediction's boundary loses the notch's top pixel (1, 5) from the reference's
    # 36-px ring and gains the pixels beside the notch that are not on the ring: columns 4 and 6 of rows 2-6 (10 px)
    # and (6, 5) below it, 11 px. Boundary IoU = 35 / (36 + 11) = 35 / 47.
    reference = _square(12, 1, 1, 10, 10)
    prediction = reference.clone()
    prediction[1:6, 5] = False

    assert math.isclose(mask_iou(prediction, reference).item(), 0.95)
    assert math.isclose(boundary_iou(prediction, reference).item(), 35 / 47)


def test_bad_masks_are_rejected_with_the_mask_index():
    masks = torch.zeros(2, 3, 4, 4)
    soft = masks.clone()
    soft[1, 2, 0, 0] = 0.7  # a probability, not a binary mask
    with pytest.raises(ValueError, match=r"predictions\[1, 2\] is not a binary mask"):
        mask_iou(soft, masks)
    with pytest.raises(ValueError, match="same shape"):
        mask_dice(masks, masks[:, :2])
    with pytest.raises(ValueError, match=r"\(\.\.\., height, width\)"):
        boundary_region(torch.ones(5))


def test_iou_spread_per_object():
    ious = torch.tensor([0.8, 0.5, 0.8, 1.0, 0.8])
    spread = iou_spread_per_object(ious, ["a", "b", "a", "b", "a"])

    assert spread["object_ids"] == ["a", "b"]
    assert spread["num_prompts"].tolist() == [3, 2]
    torch.testing.assert_close(spread["iou_mean"], torch.tensor([0.8, 0.75], dtype=torch.float64))
    torch.testing.assert_close(spread["iou_std"], torch.tensor([0.0, 0.25], dtype=torch.float64))  # population std
    torch.testing.assert_close(spread["iou_range"], torch.tensor([0.0, 0.5], dtype=torch.float64))
    with pytest.raises(ValueError, match="5 IoUs but 2 object ids"):
        iou_spread_per_object(ious, ["a", "b"])


# ---- the evaluate.Metric ----


def test_metric_add_batch_and_compute_equal_the_plain_functions(tmp_path):
    generator = torch.Generator().manual_seed(0)
    predictions = torch.rand(7, 24, 20, generator=generator) > 0.6
    references = torch.rand(7, 24, 20, generator=generator) > 0.6
    predictions[0] = references[0] = False  # both empty
    predictions[1] = False  # prediction empty
    # Cache files on disk, the path `evaluate` uses across processes (keep_in_memory is single-process only).
    metric = PromptSegmentationMetric(cache_dir=str(tmp_path))

    metric.add_batch(**segmentation_statistics(predictions[:4], references[:4]))
    metric.add_batch(**segmentation_statistics(predictions[4:], references[4:]))
    results = metric.compute()

    expected = {
        "iou": mask_iou(predictions, references),
        "dice": mask_dice(predictions, references),
        "boundary_iou": boundary_iou(predictions, references),
    }
    assert results["num_masks"] == 7
    for name, values in expected.items():
        assert results[f"per_mask_{name}"] == pytest.approx(values.tolist(), abs=1e-12)
        assert results[f"mean_{name}"] == pytest.approx(values.mean().item(), abs=1e-12)
    assert results["per_mask_iou"][:2] == [1.0, 0.0]
    assert "per_group" not in results and "num_objects" not in results
    # The plain call `compute(**counts)` gives the same result.
    counts = segmentation_statistics(predictions, references)
    assert PromptSegmentationMetric(keep_in_memory=True).compute(**counts) == results


def test_metric_per_group_means():
    metric = PromptSegmentationMetric(keep_in_memory=True)
    # IoU 1, 1/2 in group "faces"; IoU 0 in group "plates". Dice = 2I / (I + U); boundary IoU = 1/4, 1/2, 0.
    metric.add_batch(**_counts((4, 4, 1, 4), (2, 4, 1, 2)), group=["faces", "faces"])
    metric.add(intersection=0, union=5, boundary_intersection=0, boundary_union=3, group="plates")

    results = metric.compute()

    assert results["mean_iou"] == pytest.approx(0.5)
    assert results["per_group"]["faces"] == pytest.approx(
        {"num_masks": 2, "mean_iou": 0.75, "mean_dice": (1 + 4 / 6) / 2, "mean_boundary_iou": 0.375}
    )
    assert results["per_group"]["plates"] == pytest.approx(
        {"num_masks": 1, "mean_iou": 0.0, "mean_dice": 0.0, "mean_boundary_iou": 0.0}
    )


def test_metric_prompt_robustness():
    square = _square(16, 4, 4, 8, 8)
    # Object 7: three jittered prompts that all give the same mask (IoU 1/2): no spread.
    # Object 9: two prompts with IoU 1/2 and 1: mean 3/4, population std 1/4, range 1/2.
    half = _square(16, 4, 4, 8, 4)
    predictions = torch.stack([half, half, half, half, square])
    references = square.expand(5, 16, 16)
    metric = PromptSegmentationMetric(keep_in_memory=True)

    metric.add_batch(
        **segmentation_statistics(predictions, references),
        object_id=torch.tensor([7, 7, 7, 9, 9]),  # e.g. gathered integer ids
        group=["banners"] * 5,
    )
    results = metric.compute()

    assert results["num_masks"] == 5 and results["num_objects"] == 2
    assert results["per_object_robustness"] == {
        "7": {"num_prompts": 3, "iou_mean": 0.5, "iou_std": 0.0, "iou_range": 0.0},
        "9": {"num_prompts": 2, "iou_mean": 0.75, "iou_std": 0.25, "iou_range": 0.5},
    }
    assert results["robustness_iou_mean"] == pytest.approx(0.625)  # mean over objects, not over prompts (0.6)
    assert results["mean_iou"] == pytest.approx(0.6)
    assert results["robustness_iou_std"] == pytest.approx(0.125)
    assert results["robustness_iou_range"] == pytest.approx(0.25)
    assert results["per_group"]["banners"]["robustness_iou_std"] == pytest.approx(0.125)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ({**_counts()}, "No masks were added"),
        ({**_counts((3, 2, 0, 1))}, "Mask 0 has inconsistent counts"),
        ({**_counts((1, 2, 0, 1), (1, 2, 2, 1))}, "Mask 1 has inconsistent counts"),
        ({**_counts((1, 2, 0, 1), (1, 2, 0, 1)), "group": ["faces", ""]}, "group is missing for mask 1"),
        ({**_counts((1, 2, 0, 1), (1, 2, 0, 1)), "object_id": [None, 4]}, "object_id is missing for mask 0"),
        (
            {**_counts((1, 2, 0, 1), (1, 2, 0, 1)), "object_id": [4, 4], "group": ["faces", "plates"]},
            "Object '4' is in group 'faces' and, at mask 1, in group 'plates'",
        ),
    ],
)
def test_metric_rejects_bad_rows_by_index(batch, message):
    metric = PromptSegmentationMetric(keep_in_memory=True)
    metric.add_batch(**batch)
    with pytest.raises(ValueError, match=message):
        metric.compute()


def test_metric_rejects_a_key_column_of_the_wrong_length():
    metric = PromptSegmentationMetric(keep_in_memory=True)
    with pytest.raises(ValueError, match="group has 1 entries but the batch has 2 masks"):
        metric.add_batch(**_counts((1, 2, 0, 1), (1, 2, 0, 1)), group=["faces"])

"""Segmentation metrics for promptable segmentation: IoU, Dice and boundary IoU per predicted mask, their means (over
all masks and per group), and the spread of IoU over several jittered prompts of the same object.

Two layers, one implementation:

- plain tensor functions (`mask_iou`, `mask_dice`, `boundary_iou`, `boundary_region`, `segmentation_statistics`,
  `iou_spread_per_object`) that a training loop calls on batched masks, on any device, without going through Arrow;
- [`PromptSegmentationMetric`], an `evaluate.Metric` built on those functions, for accumulating results over an
  evaluation (`add_batch` + `compute`, multi-process through `evaluate`'s own cache files).

Every score is a ratio of two pixel counts, so the metric stores the **per-mask counts** from
`segmentation_statistics`, not the masks. Storing masks would need `List(List(Value("bool")))` features, which
`compute` reads back as nested Python lists: measured with evaluate 0.4.6 / datasets 5.2, about 3 ms and 0.5 MB per
256 x 256 mask and 5.7 MB per 1024 x 1024 mask, i.e. gigabytes for an evaluation split, and `gather_for_metrics` would
have to move whole masks between processes. Four integers per mask carry exactly the same information.

Conventions (the same in every function): a mask is binary, `(..., height, width)`; a score whose denominator is 0
(prediction and reference both empty) is 1, since there was nothing to find and nothing was found; if exactly one of
them is empty the score is 0 (the non-empty one has a non-empty boundary region too, so boundary IoU is 0 as well).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import datasets
import evaluate
import torch
import torch.nn.functional as F

# Cheng et al. (2021) use 2% of the image diagonal as the boundary width for instance segmentation benchmarks.
DEFAULT_DILATION_RATIO = 0.02

_CITATION = """\
@inproceedings{cheng2021boundary,
  title={Boundary {IoU}: Improving Object-Centric Image Segmentation Evaluation},
  author={Cheng, Bowen and Girshick, Ross and Doll{\\'a}r, Piotr and Berg, Alexander C. and Kirillov, Alexander},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2021}
}
"""

_DESCRIPTION = """\
Mask IoU, Dice and boundary IoU (Cheng et al. 2021) of predicted binary masks against reference masks, averaged over
masks and per group, plus prompt robustness: the mean, standard deviation and range (max - min) of the IoU over the
several prompts given for one object, averaged over objects. Inputs are per-mask pixel counts from
`sam_prompt_learner.metrics.segmentation_statistics`.
"""

_INPUTS_DESCRIPTION = """
Args:
    intersection (`list[int]` or `torch.Tensor` of shape `(num_masks,)`):
        `|prediction & reference|` of each mask.
    union (`list[int]` or `torch.Tensor` of shape `(num_masks,)`):
        `|prediction | reference|` of each mask.
    boundary_intersection (`list[int]` or `torch.Tensor` of shape `(num_masks,)`):
        Intersection of the boundary regions of prediction and reference.
    boundary_union (`list[int]` or `torch.Tensor` of shape `(num_masks,)`):
        Union of the boundary regions of prediction and reference.
    group (`list[str]`, *optional*):
        A group name per mask (scenario, task, category): adds `per_group` means. Give it for all masks or none (an
        empty string counts as not given).
    object_id (`list[str | int]` or `torch.Tensor`, *optional*):
        The object each mask was predicted for: masks sharing an id are predictions from different prompts for the
        same object, and the result gains the prompt-robustness entries. Give it for all masks or none (an empty
        string counts as not given); integer ids are stored as their decimal strings.

Returns:
    `dict` with `mean_iou`, `mean_dice`, `mean_boundary_iou` (means over masks), `num_masks`, and `per_mask_iou`,
    `per_mask_dice`, `per_mask_boundary_iou` (lists in the order the masks were added); with `object_id`:
    `num_objects`, `robustness_iou_mean`, `robustness_iou_std`, `robustness_iou_range` (per-object values averaged
    over objects) and `per_object_robustness` (`{object_id: {num_prompts, iou_mean, iou_std, iou_range}}`); with
    `group`: `per_group` (`{group: {num_masks, mean_iou, mean_dice, mean_boundary_iou, ...}}`, the robustness means
    included when `object_id` is given).

Example:
    >>> metric = PromptSegmentationMetric(keep_in_memory=True)
    >>> metric.add_batch(**segmentation_statistics(predicted_masks, reference_masks), group=["faces"] * num_masks)
    >>> results = metric.compute()
"""

_COUNT_COLUMNS = ("intersection", "union", "boundary_intersection", "boundary_union")
_SPREAD_STATISTICS = ("iou_mean", "iou_std", "iou_range")


def _as_binary_masks(masks: torch.Tensor, name: str) -> torch.Tensor:
    """Check that `masks` `(..., H, W)` holds only 0 and 1 and return it as bool, naming the first offending mask."""
    masks = torch.as_tensor(masks)
    if masks.ndim < 2:
        raise ValueError(f"{name} must have shape (..., height, width), got shape {tuple(masks.shape)}.")
    if masks.dtype == torch.bool:
        return masks
    not_binary = ((masks != 0) & (masks != 1)).flatten(-2).any(-1)  # (...)
    if not_binary.any():
        index = tuple(not_binary.nonzero()[0].tolist())
        raise ValueError(
            f"{name}{list(index)} is not a binary mask (values other than 0 and 1); threshold logits first, e.g. "
            "`logits > 0`."
        )
    return masks.bool()


def _check_pair(predictions: torch.Tensor, references: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    predictions = _as_binary_masks(predictions, "predictions")
    references = _as_binary_masks(references, "references")
    if predictions.shape != references.shape:
        raise ValueError(
            f"predictions and references must have the same shape, got {tuple(predictions.shape)} and "
            f"{tuple(references.shape)}."
        )
    return predictions, references


def _overlap_counts(first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Intersection and union pixel counts of two bool mask batches `(..., H, W)`. Returns two int64 `(...)`."""
    intersection = (first & second).flatten(-2).sum(-1)
    union = (first | second).flatten(-2).sum(-1)
    return intersection, union


def iou_from_counts(intersection: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """IoU `intersection / union`, 1 where the union is empty (both masks empty). Returns float64 `(...)`."""
    intersection, union = intersection.double(), union.double()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def dice_from_counts(intersection: torch.Tensor, union: torch.Tensor) -> torch.Tensor:
    """Dice `2|P & G| / (|P| + |G|)`, written with `|P| + |G| = union + intersection`; 1 where both masks are empty.
    Returns float64 `(...)`."""
    intersection, union = intersection.double(), union.double()
    total_area = union + intersection
    return torch.where(total_area > 0, 2 * intersection / total_area.clamp(min=1), torch.ones_like(total_area))


def boundary_dilation(height: int, width: int, dilation_ratio: float = DEFAULT_DILATION_RATIO) -> int:
    """Boundary width d in pixels for an `height x width` image: `round(dilation_ratio * diagonal)`, at least 1, as in
    the reference implementation of Cheng et al."""
    if dilation_ratio < 0:
        raise ValueError(f"dilation_ratio must be non-negative, got {dilation_ratio}.")
    return max(1, round(dilation_ratio * math.hypot(height, width)))


def binary_erosion(masks: torch.Tensor, width: int) -> torch.Tensor:
    """
    Erode binary masks by a `(2 * width + 1)` square: keep the pixels whose every pixel within Chebyshev distance
    `width` is foreground. Pixels outside the grid count as background, so a mask cut by the image border has a
    boundary there too (as in Cheng et al.).

    The square is applied as a row max-pool then a column max-pool on the background, which gives the same result as
    one 2-D pool in O(width) instead of O(width^2) per pixel (d is about 29 px at 1024 x 1024).

    Args:
        masks (`torch.Tensor` of shape `(..., H, W)`): bool masks.
        width (`int`): erosion radius in pixels, at least 1.

    Returns:
        `torch.Tensor` of shape `(..., H, W)`, bool.
    """
    *leading, height, width_px = masks.shape
    kernel = 2 * width + 1
    background = (~masks).reshape(-1, 1, height, width_px).float()  # (N, 1, H, W)
    background = F.pad(background, (width, width, width, width), value=1.0)  # (N, 1, H + 2w, W + 2w)
    background = F.max_pool2d(background, (1, kernel), stride=1)  # (N, 1, H + 2w, W)
    background = F.max_pool2d(background, (kernel, 1), stride=1)  # (N, 1, H, W)
    return (background < 0.5).reshape(*leading, height, width_px)


def boundary_region(masks: torch.Tensor, dilation_ratio: float = DEFAULT_DILATION_RATIO) -> torch.Tensor:
    """
    The boundary region of each mask (Cheng et al. 2021): the mask pixels within distance d of its contour,
    `G_d & G = G & ~erode(G, d)`, with d = `boundary_dilation(H, W, dilation_ratio)`.

    Args:
        masks (`torch.Tensor` of shape `(..., H, W)`): binary masks (bool or 0/1).
        dilation_ratio (`float`, *optional*, defaults to 0.02): d as a fraction of the image diagonal.

    Returns:
        `torch.Tensor` of shape `(..., H, W)`, bool; empty exactly where the mask is empty.
    """
    masks = _as_binary_masks(masks, "masks")
    dilation = boundary_dilation(masks.shape[-2], masks.shape[-1], dilation_ratio)
    return masks & ~binary_erosion(masks, dilation)


def segmentation_statistics(
    predictions: torch.Tensor, references: torch.Tensor, dilation_ratio: float = DEFAULT_DILATION_RATIO
) -> dict[str, torch.Tensor]:
    """
    Per-mask pixel counts from which IoU, Dice and boundary IoU follow; the inputs of [`PromptSegmentationMetric`].

    Compute them where the masks are (e.g. on the accelerator, before `gather_for_metrics`). For boundary IoU as the
    paper defines it, give masks in the original image frame (e.g. after the processor's `post_process_masks`): d
    follows the grid's diagonal, and the grid border counts as an edge of the object.

    Args:
        predictions (`torch.Tensor` of shape `(..., H, W)`): predicted binary masks (bool or 0/1).
        references (`torch.Tensor` of shape `(..., H, W)`): reference binary masks, same shape.
        dilation_ratio (`float`, *optional*, defaults to 0.02): boundary width as a fraction of the image diagonal.

    Returns:
        `dict` of int64 tensors of shape `(...)`: `intersection`, `union`, `boundary_intersection`, `boundary_union`.
    """
    predictions, references = _check_pair(predictions, references)
    intersection, union = _overlap_counts(predictions, references)
    boundary_intersection, boundary_union = _overlap_counts(
        boundary_region(predictions, dilation_ratio), boundary_region(references, dilation_ratio)
    )
    return {
        "intersection": intersection,
        "union": union,
        "boundary_intersection": boundary_intersection,
        "boundary_union": boundary_union,
    }


def mask_iou(predictions: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """IoU of binary masks `(..., H, W)`; 1 when both are empty. Returns float64 `(...)`."""
    return iou_from_counts(*_overlap_counts(*_check_pair(predictions, references)))


def mask_dice(predictions: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Dice coefficient of binary masks `(..., H, W)`; 1 when both are empty. Returns float64 `(...)`."""
    return dice_from_counts(*_overlap_counts(*_check_pair(predictions, references)))


def boundary_iou(
    predictions: torch.Tensor, references: torch.Tensor, dilation_ratio: float = DEFAULT_DILATION_RATIO
) -> torch.Tensor:
    """Boundary IoU (Cheng et al. 2021) of binary masks `(..., H, W)`: the IoU of their `boundary_region`s; 1 when
    both masks are empty, 0 when exactly one is. Returns float64 `(...)`."""
    statistics = segmentation_statistics(predictions, references, dilation_ratio)
    return iou_from_counts(statistics["boundary_intersection"], statistics["boundary_union"])


def iou_spread_per_object(ious: torch.Tensor, object_ids: Sequence[Hashable]) -> dict[str, Any]:
    """
    Prompt robustness: group the IoUs of several prompts by the object they were given for, and describe each group.

    Args:
        ious (`torch.Tensor` of shape `(num_masks,)`): IoU of each prompt's predicted mask.
        object_ids (`Sequence` of length `num_masks`): the object of each prompt.

    Returns:
        `dict` with `object_ids` (the distinct ids, in order of first appearance) and, per object, tensors of shape
        `(num_objects,)`: `num_prompts`, `iou_mean`, `iou_std` (population standard deviation, 0 for identical IoUs
        or a single prompt) and `iou_range` (max - min).
    """
    if len(object_ids) != len(ious):
        raise ValueError(f"Got {len(ious)} IoUs but {len(object_ids)} object ids.")
    position_of_object: dict[Hashable, int] = {}
    object_index = torch.tensor(
        [position_of_object.setdefault(object_id, len(position_of_object)) for object_id in object_ids],
        dtype=torch.long,
        device=ious.device,
    )  # (num_masks,)
    num_objects = len(position_of_object)
    ious = ious.double()
    num_prompts = torch.bincount(object_index, minlength=num_objects)  # (num_objects,)
    iou_mean = torch.zeros(num_objects, dtype=ious.dtype, device=ious.device).index_add_(0, object_index, ious)
    iou_mean = iou_mean / num_prompts
    squared_deviation = (ious - iou_mean[object_index]).square()
    iou_variance = torch.zeros_like(iou_mean).index_add_(0, object_index, squared_deviation) / num_prompts
    iou_max = torch.zeros_like(iou_mean).scatter_reduce_(0, object_index, ious, "amax", include_self=False)
    iou_min = torch.zeros_like(iou_mean).scatter_reduce_(0, object_index, ious, "amin", include_self=False)
    return {
        "object_ids": list(position_of_object),
        "num_prompts": num_prompts,
        "iou_mean": iou_mean,
        "iou_std": iou_variance.sqrt(),
        "iou_range": iou_max - iou_min,
    }


def _key_column(values: Any, name: str, num_rows: int) -> list[str]:
    """A `group` / `object_id` column as strings, checked against the batch length. `evaluate` only accepts `str` in a
    string column, so "not given" is stored as the empty string."""
    if values is None:
        return [""] * num_rows
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    values = ["" if value is None else str(value) for value in values]
    if len(values) != num_rows:
        raise ValueError(f"{name} has {len(values)} entries but the batch has {num_rows} masks.")
    return values


def _present_or_absent(values: list[str], name: str) -> bool:
    """Whether a key column was given; it must be given (non-empty) for every mask or for none."""
    missing = [index for index, value in enumerate(values) if not value]
    if missing and len(missing) < len(values):
        raise ValueError(f"{name} is missing for mask {missing[0]} but given for others: give it for all or none.")
    return not missing


class PromptSegmentationMetric(evaluate.Metric):
    """
    IoU, Dice and boundary IoU of promptable-segmentation predictions, with per-group means and prompt robustness,
    as an `evaluate.Metric` that runs offline (instantiate it; there is no Hub script to `evaluate.load`).

    Each row is one predicted mask scored against its reference, given as the counts of [`segmentation_statistics`]
    (see the module docstring for why counts rather than masks). Rows may carry a `group` (per-group means) and an
    `object_id` (rows sharing an id are different prompts for one object: prompt-robustness mode). The constructor
    takes `evaluate.Metric`'s arguments (`keep_in_memory`, `cache_dir`, `num_process`, `process_id`,
    `experiment_id`, ...).

    Example:

    ```python
    >>> metric = PromptSegmentationMetric(keep_in_memory=True)
    >>> for batch in eval_dataloader:
    ...     logits = model(**batch, multimask_output=False).pred_masks[:, :, 0]  # (B, P, 4E, 4E)
    ...     logits = F.interpolate(logits, size=batch["labels"].shape[-2:], mode="bilinear")  # (B, P, H, W)
    ...     real = batch["prompt_mask"]  # (B, P), False for padding prompts
    ...     statistics = segmentation_statistics(logits[real] > 0, batch["labels"][real])  # each (num_real,)
    ...     metric.add_batch(**accelerator.gather_for_metrics(statistics))
    >>> metric.compute()["mean_iou"]
    ```
    """

    def _info(self) -> evaluate.MetricInfo:
        counts = {column: datasets.Value("int64") for column in _COUNT_COLUMNS}
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_INPUTS_DESCRIPTION,
            features=datasets.Features(
                {**counts, "group": datasets.Value("string"), "object_id": datasets.Value("string")}
            ),
            reference_urls=["https://arxiv.org/abs/2103.16562"],
        )

    def add_batch(
        self,
        *,
        intersection: Sequence[int] | torch.Tensor,
        union: Sequence[int] | torch.Tensor,
        boundary_intersection: Sequence[int] | torch.Tensor,
        boundary_union: Sequence[int] | torch.Tensor,
        group: Sequence[str] | None = None,
        object_id: Sequence[str | int] | torch.Tensor | None = None,
    ) -> None:
        """Add a batch of per-mask counts (the output of `segmentation_statistics`, flattened to one dimension); `group`
        and `object_id` are optional, unlike the other columns, so `evaluate`'s own `add_batch` gets them filled.
        """
        num_rows = len(intersection)
        super().add_batch(
            intersection=intersection,
            union=union,
            boundary_intersection=boundary_intersection,
            boundary_union=boundary_union,
            group=_key_column(group, "group", num_rows),
            object_id=_key_column(object_id, "object_id", num_rows),
        )

    def add(
        self,
        *,
        intersection: int,
        union: int,
        boundary_intersection: int,
        boundary_union: int,
        group: str | None = None,
        object_id: str | int | None = None,
    ) -> None:
        """Add the counts of one mask (see `add_batch`)."""
        self.add_batch(
            intersection=[intersection],
            union=[union],
            boundary_intersection=[boundary_intersection],
            boundary_union=[boundary_union],
            group=None if group is None else [group],
            object_id=None if object_id is None else [object_id],
        )

    def _compute(
        self,
        intersection: list[int],
        union: list[int],
        boundary_intersection: list[int],
        boundary_union: list[int],
        group: list[str],
        object_id: list[str],
    ) -> dict[str, Any]:
        if not intersection:
            raise ValueError("No masks were added to the metric.")
        counts = torch.tensor([intersection, union, boundary_intersection, boundary_union], dtype=torch.long)
        # Counts from anywhere but `segmentation_statistics` may be inconsistent; a wrong score would pass unnoticed.
        invalid = (counts < 0).any(0) | (counts[0] > counts[1]) | (counts[2] > counts[3])  # (num_masks,)
        if invalid.any():
            row = int(invalid.nonzero()[0])
            raise ValueError(
                f"Mask {row} has inconsistent counts {counts[:, row].tolist()} (intersection, union, boundary "
                "intersection, boundary union): counts must be non-negative and each intersection at most its union."
            )
        scores = {
            "iou": iou_from_counts(counts[0], counts[1]),
            "dice": dice_from_counts(counts[0], counts[1]),
            "boundary_iou": iou_from_counts(counts[2], counts[3]),
        }  # each (num_masks,)
        has_objects = _present_or_absent(object_id, "object_id")
        has_groups = _present_or_absent(group, "group")

        results = self._summarize(scores, object_id if has_objects else None, with_per_object=True)
        results.update({f"per_mask_{name}": values.tolist() for name, values in scores.items()})
        if has_groups:
            if has_objects:
                group_of_object: dict[str, str] = {}
                for row, (row_object, row_group) in enumerate(zip(object_id, group, strict=True)):
                    if group_of_object.setdefault(row_object, row_group) != row_group:
                        raise ValueError(
                            f"Object {row_object!r} is in group {group_of_object[row_object]!r} and, at mask {row}, "
                            f"in group {row_group!r}: all prompts of an object must share its group."
                        )
            results["per_group"] = {}
            for group_name in dict.fromkeys(group):
                rows = [row for row, row_group in enumerate(group) if row_group == group_name]
                results["per_group"][group_name] = self._summarize(
                    {name: values[rows] for name, values in scores.items()},
                    [object_id[row] for row in rows] if has_objects else None,
                    with_per_object=False,
                )
        return results

    @staticmethod
    def _summarize(
        scores: dict[str, torch.Tensor], object_ids: list[str] | None, with_per_object: bool
    ) -> dict[str, Any]:
        """Means over the given masks and, with object ids, the prompt-robustness means over their objects."""
        summary: dict[str, Any] = {"num_masks": len(scores["iou"])}
        summary.update({f"mean_{name}": values.mean().item() for name, values in scores.items()})
        if object_ids is None:
            return summary
        spread = iou_spread_per_object(scores["iou"], object_ids)
        summary["num_objects"] = len(spread["object_ids"])
        for statistic in _SPREAD_STATISTICS:
            summary[f"robustness_{statistic}"] = spread[statistic].mean().item()
        if with_per_object:
            summary["per_object_robustness"] = {
                object_name: {
                    "num_prompts": int(spread["num_prompts"][index]),
                    **{statistic: spread[statistic][index].item() for statistic in _SPREAD_STATISTICS},
                }
                for index, object_name in enumerate(spread["object_ids"])
            }
        return summary

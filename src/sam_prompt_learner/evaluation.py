"""Scoring a SAM (plain or adapted) on prompted evaluation batches: per-object IoU, Dice and boundary IoU, gathered
across processes, and prompt robustness over several jittered prompts per object.

Masks are compared at the model's input resolution (`image_size`, e.g. 1024) in the processor's resized frame, on
the image region only (the padding is cropped): the low-resolution logits are upsampled bilinearly to the padded frame
as `SamProcessor.post_process_masks` does, and the collator's ground truth is requested at that resolution.
"""

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader

from .image_features import encode_image_features, image_feature_inputs
from .metrics import dice_from_counts, iou_from_counts, iou_spread_per_object, segmentation_statistics
from .modeling_prompt_learner import resize_masks

MODEL_INPUT_KEYS = (
    "pixel_values",
    "image_embeddings",
    "intermediate_embeddings",  # SAM-HQ's cached ViT features
    "input_points",
    "input_labels",
    "input_boxes",
)
PROMPT_INPUT_KEYS = ("input_points", "input_labels", "input_boxes")  # (B, P, ...): one entry per prompt
# Prompts scored per forward pass. Memory per prompt grows with the square of the input size (SAM's three masks, their
# upsampling to it, the boundary regions), so an image with hundreds of objects is scored a chunk of prompts at a time.
DEFAULT_PROMPTS_PER_FORWARD = 16
MASK_SELECTIONS = ("predicted_iou", "single", "oracle")
STATISTICS = ("intersection", "union", "boundary_intersection", "boundary_union")


def model_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The entries of a collated batch that the model's `forward` takes."""
    return {key: batch[key] for key in MODEL_INPUT_KEYS if key in batch}


def select_masks(
    pred_masks: torch.Tensor, iou_scores: torch.Tensor, selection: str, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """Pick one mask per prompt from `pred_masks` `(B, P, M, h, w)`.

    Args:
        selection: `"predicted_iou"` (the mask the model rates best: SAM's own choice), `"single"` (the only mask of
            `multimask_output=False`), or `"oracle"` (the mask closest to `labels` `(B, P, h, w)`, a reference upper
            bound that needs the ground truth).

    Returns:
        `(B, P, h, w)` logits.
    """
    if selection == "single" or pred_masks.shape[2] == 1:
        if pred_masks.shape[2] != 1:
            raise ValueError("The single-mask selection needs the output of `multimask_output=False`.")
        return pred_masks[:, :, 0]
    if selection == "predicted_iou":
        index = iou_scores.argmax(dim=2)
    elif selection == "oracle":
        if labels is None:
            raise ValueError("The oracle mask selection needs the ground-truth labels.")
        candidates = pred_masks > 0  # (B, P, M, h, w)
        truth = resize_masks(labels, pred_masks.shape[-2:]).unsqueeze(2)  # (B, P, 1, h, w), the logits' grid
        intersection = (candidates & truth).flatten(3).sum(-1).float()
        union = (candidates | truth).flatten(3).sum(-1).float()
        index = torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union)).argmax(dim=2)
    else:
        raise ValueError(f"Unknown mask selection {selection!r}; choose among {MASK_SELECTIONS}.")
    return torch.gather(pred_masks, 2, index[:, :, None, None, None].expand(-1, -1, 1, *pred_masks.shape[-2:]))[:, :, 0]


def batch_statistics(
    masks: torch.Tensor, labels: torch.Tensor, reshaped_input_sizes: torch.Tensor, dilation_ratio: float = 0.02
) -> torch.Tensor:
    """Per-prompt overlap counts on the image region of each padded frame.

    Args:
        masks (`torch.Tensor` of shape `(B, P, h, w)`): mask logits (any resolution; upsampled bilinearly to `labels`).
        labels (`torch.Tensor` of shape `(B, P, S, S)`): binary ground truth in the padded frame.
        reshaped_input_sizes (`torch.Tensor` of shape `(B, 2)`): `(height, width)` of the image region of each frame,
            at the processor's `image_size`; scaled to `S` when the labels are smaller.

    Returns:
        `(B, P, 4)` int64: intersection, union, boundary intersection and boundary union (see `metrics.STATISTICS`).
    """
    size = labels.shape[-1]
    predicted = F.interpolate(masks.float(), size=(size, size), mode="bilinear", align_corners=False) > 0
    statistics = torch.zeros(*labels.shape[:2], len(STATISTICS), dtype=torch.long, device=labels.device)
    for index, (height, width) in enumerate(reshaped_input_sizes.tolist()):
        scale = size / max(height, width, size)  # reshaped sizes are at image_size >= S
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
        counts = segmentation_statistics(
            predicted[index, :, :height, :width], labels[index, :, :height, :width].bool(), dilation_ratio
        )
        statistics[index] = torch.stack([counts[name] for name in STATISTICS], dim=-1)
    return statistics


def chunked_batch_statistics(
    model: torch.nn.Module,
    batch: dict[str, Any],
    selections: Iterable[str],
    accelerator: Accelerator,
    *,
    dilation_ratio: float = 0.02,
    prompts_per_forward: int = DEFAULT_PROMPTS_PER_FORWARD,
) -> dict[str, torch.Tensor]:
    """
    Per-prompt statistics (see `batch_statistics`) of each selection for one collated batch, scoring at most
    `prompts_per_forward` prompts per image at a time: the image embeddings are computed once, and each chunk's
    masks are reduced to four counts per prompt before the next chunk runs, so memory stays flat in the number of
    objects. SAM decodes each prompt independently of the others, so the counts are those of one pass over all.

    Returns:
        `{selection: (B, P, 4) int64}`.
    """
    if prompts_per_forward < 1:
        raise ValueError(f"prompts_per_forward must be at least 1, got {prompts_per_forward}.")
    inputs = model_inputs(batch)
    num_prompts = batch["labels"].shape[1]
    if "pixel_values" in inputs and num_prompts > prompts_per_forward:
        # Encoded once for all chunks, as every family's decoder reads it (SAM-HQ's ViT features, SAM 2's maps too).
        features = encode_image_features(accelerator.unwrap_model(model), inputs.pop("pixel_values"))
        inputs.update(image_feature_inputs(features))
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in selections}
    for start in range(0, num_prompts, prompts_per_forward):
        prompts = slice(start, start + prompts_per_forward)
        chunk_inputs = {key: value[:, prompts] if key in PROMPT_INPUT_KEYS else value for key, value in inputs.items()}
        labels = batch["labels"][:, prompts]  # (B, p, S, S)
        outputs = {
            multimask: model(**chunk_inputs, multimask_output=multimask)
            for multimask in {name != "single" for name in selections}
        }
        for name in selections:
            output = outputs[name != "single"]
            masks = select_masks(output.pred_masks, output.iou_scores, name, labels)
            chunks[name].append(batch_statistics(masks, labels, batch["reshaped_input_sizes"], dilation_ratio))
    return {name: torch.cat(parts, dim=1) for name, parts in chunks.items()}


@torch.no_grad()
def collect_statistics(
    model: torch.nn.Module,
    dataloader: DataLoader,
    accelerator: Accelerator,
    *,
    selections: Iterable[str] = ("predicted_iou",),
    dilation_ratio: float = 0.02,
    prompts_per_forward: int = DEFAULT_PROMPTS_PER_FORWARD,
) -> dict[str, Any]:
    """Run `model` over `dataloader` and gather, on every process, the per-object statistics of each selection
    (`"single"` runs the model with `multimask_output=False`, the others with SAM's three masks), at most
    `prompts_per_forward` prompts per image at a time (see `chunked_batch_statistics`).

    Returns:
        `{"object_ids": list[str] ("<sample_id>/<object index>"), "<selection>": (num_objects, 4) int64 tensor}`.
    """
    selections = list(selections)
    was_training = model.training
    model.eval()
    gathered: dict[str, list] = {"object_ids": [], **{name: [] for name in selections}}
    for batch in dataloader:
        per_selection = chunked_batch_statistics(
            model,
            batch,
            selections,
            accelerator,
            dilation_ratio=dilation_ratio,
            prompts_per_forward=prompts_per_forward,
        )
        # Prompt counts differ between processes' batches: pad to a common P before gathering; padding is invalid.
        valid = accelerator.pad_across_processes(batch["prompt_mask"], dim=1, pad_index=0)
        valid = accelerator.gather_for_metrics(valid).bool()
        object_indices = accelerator.gather_for_metrics(
            accelerator.pad_across_processes(batch["object_indices"], dim=1, pad_index=-1)
        )
        sample_ids = accelerator.gather_for_metrics(batch["sample_ids"], use_gather_object=True)
        for name, statistics in per_selection.items():
            statistics = accelerator.gather_for_metrics(accelerator.pad_across_processes(statistics, dim=1))
            gathered[name].append(statistics[valid].cpu())
        for sample_id, indices, row_valid in zip(sample_ids, object_indices.tolist(), valid.tolist(), strict=True):
            gathered["object_ids"].extend(
                f"{sample_id}/{index}" for index, is_valid in zip(indices, row_valid, strict=True) if is_valid
            )
    model.train(was_training)
    return {
        "object_ids": gathered["object_ids"],
        **{
            name: torch.cat(gathered[name]) if gathered[name] else torch.zeros(0, 4, dtype=torch.long)
            for name in selections
        },
    }


def summarize_statistics(statistics: torch.Tensor) -> dict[str, float]:
    """Mean IoU, Dice and boundary IoU over objects from `(num_objects, 4)` counts."""
    intersection, union, boundary_intersection, boundary_union = statistics.unbind(-1)
    iou = iou_from_counts(intersection, union)
    return {
        "mean_iou": iou.mean().item(),
        "mean_dice": dice_from_counts(intersection, union).mean().item(),
        "mean_boundary_iou": iou_from_counts(boundary_intersection, boundary_union).mean().item(),
        "num_objects": int(statistics.shape[0]),
    }


def evaluate_model(
    model: torch.nn.Module,
    dataloader: DataLoader,
    accelerator: Accelerator,
    *,
    selections: Iterable[str] = ("predicted_iou",),
    dilation_ratio: float = 0.02,
    prompts_per_forward: int = DEFAULT_PROMPTS_PER_FORWARD,
) -> dict[str, dict[str, float]]:
    """Mean IoU / Dice / boundary IoU of `model` on `dataloader`, per mask selection (see `select_masks`), at most
    `prompts_per_forward` prompts per image per forward pass."""
    collected = collect_statistics(
        model,
        dataloader,
        accelerator,
        selections=selections,
        dilation_ratio=dilation_ratio,
        prompts_per_forward=prompts_per_forward,
    )
    return {name: summarize_statistics(collected[name]) for name in selections}


def prompt_robustness(
    model: torch.nn.Module,
    dataloaders: Iterable[DataLoader],
    accelerator: Accelerator,
    *,
    selection: str = "predicted_iou",
) -> dict[str, float]:
    """IoU spread of each object over several prompt draws (one evaluation dataloader per draw, e.g. with different
    `PromptConfig.seed`), averaged over objects: `iou_mean`, `iou_std`, `iou_range`."""
    object_ids, ious = [], []
    for dataloader in dataloaders:
        collected = collect_statistics(model, dataloader, accelerator, selections=[selection])
        object_ids.extend(collected["object_ids"])
        counts = collected[selection]
        ious.append(iou_from_counts(counts[:, 0], counts[:, 1]))
    spread = iou_spread_per_object(torch.cat(ious), object_ids)
    return {
        "iou_mean": spread["iou_mean"].mean().item(),
        "iou_std": spread["iou_std"].mean().item(),
        "iou_range": spread["iou_range"].mean().item(),
        "num_objects": len(spread["object_ids"]),
    }

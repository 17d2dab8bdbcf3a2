"""Building blocks of `examples/train.py`: what to train, data preparation with skip accounting, and the run's
outputs. The script keeps the readable shape of transformers' `*_no_trainer.py` examples; the logic lives here."""

import copy
import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from peft import PeftModel, get_peft_model
from transformers import SamProcessor

from .configuration_prompt_learner import PROMPT_LEARNER_FIELDS, PromptLearnerConfig
from .data import (
    PromptConfig,
    SamPromptCollator,
    SkipReport,
    decode_rle,
    prepare_dataset,
    prompt_rng,
    sample_object_prompts,
)
from .data.formats import AnnotationSpec, to_rgb
from .inference import predict_mask
from .lora import LORA_TARGETS, sam_lora_config
from .modeling_prompt_learner import TRAINABLE_PARTS, load_prompt_learner_model
from .processing import load_processor
from .visualization import PredictionExample

LORA = "lora"
TRAINABLE_CHOICES = (*TRAINABLE_PARTS, LORA)


@dataclass
class TrainablePlan:
    """What a run trains, decided from `--trainable` and `--lora_targets` before any heavy work."""

    parts: tuple[str, ...]
    lora_targets: tuple[str, ...] = ()

    @property
    def uses_lora(self) -> bool:
        return bool(self.lora_targets)

    @property
    def encoder_trains(self) -> bool:
        """Whether gradients flow through the image encoder (then embeddings cannot be cached)."""
        return "vision_encoder" in self.parts or "vision_encoder" in self.lora_targets


def plan_trainable(trainable: Sequence[str], lora_targets: Sequence[str] = ("mask_decoder",)) -> TrainablePlan:
    """Validate `--trainable` (names among `TRAINABLE_CHOICES`) into a plan. With `lora`, LoRA adapts
    `lora_targets` and the prompt learner and point-matching head, where the model has them, train in full (peft
    `modules_to_save`)."""
    trainable = list(dict.fromkeys(trainable))
    unknown = sorted(set(trainable) - set(TRAINABLE_CHOICES))
    if unknown or not trainable:
        raise ValueError(f"--trainable takes one or more of {list(TRAINABLE_CHOICES)}, got {trainable}.")
    if LORA not in trainable:
        return TrainablePlan(parts=tuple(trainable))
    fully_trained = [part for part in trainable if part not in (LORA, "prompt_learner", "point_matching_head")]
    if fully_trained:
        raise ValueError(
            f"--trainable lora cannot be combined with training {fully_trained} in full; LoRA adapts "
            f"--lora_targets ({list(lora_targets)}) and trains the prompt learner and point-matching head."
        )
    unknown_targets = sorted(set(lora_targets) - set(LORA_TARGETS))
    if unknown_targets or not lora_targets:
        raise ValueError(f"--lora_targets takes one or more of {sorted(LORA_TARGETS)}, got {list(lora_targets)}.")
    return TrainablePlan(parts=("prompt_learner", "point_matching_head"), lora_targets=tuple(lora_targets))


def parse_config_overrides(overrides: str | None) -> dict[str, Any]:
    """`"prompt_learner_depth=2,focal_loss_weight=10"` -> typed keyword arguments for `PromptLearnerConfig`. Only the
    fields this package adds can be overridden (SAM's own sizes must match the checkpoint)."""
    if not overrides:
        return {}
    fields = {f.name: f for f in dataclasses.fields(PromptLearnerConfig) if f.name in PROMPT_LEARNER_FIELDS}
    parsed = {}
    for item in overrides.split(","):
        name, separator, value = item.partition("=")
        name = name.strip()
        if not separator or name not in fields:
            raise ValueError(f"--config_overrides: {item!r} is not 'field=value' with a field among {sorted(fields)}.")
        default = fields[name].default
        kind = type(default) if default is not None else int
        if kind is bool:
            if value.strip().lower() not in ("true", "false"):
                raise ValueError(f"--config_overrides: {name} takes true or false, got {value!r}.")
            parsed[name] = value.strip().lower() == "true"
        else:
            try:
                parsed[name] = kind(value)
            except ValueError:
                raise ValueError(f"--config_overrides: {name} takes a {kind.__name__}, got {value!r}.") from None
    PromptLearnerConfig(**parsed)  # the config's own validation, before any heavy work
    return parsed


def load_model_and_processor(
    model_name_or_path: str, plan: TrainablePlan, *, lora_rank: int = 8, **config_overrides: Any
) -> tuple[Any, SamProcessor]:
    """Load any SAM, SAM-HQ or SAM 2 checkpoint into its family's prompt-learner class, make exactly the planned parts
    trainable (wrapping it with peft LoRA when planned), and return it with a processor that matches its geometry (the
    checkpoint's own when it ships one, else `processor_for_config`)."""
    model = load_prompt_learner_model(model_name_or_path, **config_overrides)
    processor = load_processor(model_name_or_path, model.config)
    present = [part for part in plan.parts if getattr(model, part) is not None]
    if plan.uses_lora:
        # LoRA's plan trains the prompt learner and head in full where the config has them (without them: plain LoRA).
        model = get_peft_model(model, sam_lora_config(plan.lora_targets, rank=lora_rank, modules_to_save=present))
    else:
        missing = sorted(set(plan.parts) - set(present))
        if missing:
            raise ValueError(f"--trainable {missing}: this model's config disables them.")
        model.set_trainable(plan.parts)
    return model, processor


VALIDATION_SPLIT = "validation"
# The held-out rows do not follow `--seed`: runs with different seeds are scored on the same images.
VALIDATION_SPLIT_SEED = 0


def hold_out_validation(
    raw: datasets.DatasetDict, train_split: str = "train", percentage: float = 10.0
) -> tuple[datasets.DatasetDict, str | None]:
    """
    Give a dataset without a `validation` split one, as transformers' example scripts do: `percentage`% of the rows
    of `train_split`, drawn with a fixed seed (`VALIDATION_SPLIT_SEED`), so every run (a resumed one, one with another
    `--seed`, and `sam-prompt-learner evaluate --split validation`) holds out the same rows.

    Args:
        raw (`datasets.DatasetDict`): the raw (not yet normalized) splits.
        train_split (`str`, *optional*, defaults to `"train"`): the split to hold rows out of.
        percentage (`float`, *optional*, defaults to 10): percentage of its rows to hold out; 0 turns this off.

    Returns:
        `tuple` of the splits (unchanged when there is a `validation` split already, no `train_split`, or `percentage`
        is 0; else with `train_split` minus the held-out rows and a new `validation` split) and a sentence for the log
        saying what was held out (`None` when nothing was).

    Raises:
        `ValueError`: when `percentage` is not in [0, 100), or `train_split` has too few rows to keep some of each.
    """
    if not 0 <= percentage < 100:
        raise ValueError(f"--validation_split_percentage must be in [0, 100), got {percentage}.")
    if VALIDATION_SPLIT in raw or train_split not in raw or percentage == 0:
        return raw, None
    num_rows = len(raw[train_split])
    num_held_out = math.ceil(num_rows * percentage / 100)  # as `train_test_split` rounds
    if num_rows - num_held_out < 1:
        raise ValueError(
            f"The dataset has no {VALIDATION_SPLIT!r} split, and its {train_split!r} split has {num_rows} rows: too "
            f"few to hold out {percentage:g}% for validation. Add a validation split, or pass --eval_split "
            f"{train_split} to score on the training rows."
        )
    parts = raw[train_split].train_test_split(test_size=num_held_out, seed=VALIDATION_SPLIT_SEED)
    splits = datasets.DatasetDict({**raw, train_split: parts["train"], VALIDATION_SPLIT: parts["test"]})
    message = (
        f"The dataset has no {VALIDATION_SPLIT!r} split: held out {num_held_out} of the {num_rows} {train_split!r} "
        f"rows ({percentage:g}%, --validation_split_percentage; seed {VALIDATION_SPLIT_SEED}, the same rows on every "
        f"run) as {VALIDATION_SPLIT!r}."
    )
    return splits, message


def detection_options(args) -> dict[str, Any]:
    """The annotation-detection flags that `examples/train.py` and `sam-prompt-learner evaluate` share, as keyword
    arguments of `detect_annotation_spec`."""
    options = dict(
        image_column=args.image_column, mask_column=args.mask_column, annotation_format=args.annotation_format
    )
    if args.class_ids:
        options["class_ids"] = args.class_ids
    if args.mask_threshold is not None:
        options["mask_threshold"] = args.mask_threshold
    return options


def prepare_split(
    raw: datasets.DatasetDict,
    split: str,
    *,
    spec: AnnotationSpec | None = None,
    max_samples: int | None = None,
    **detect_options: Any,
) -> tuple[datasets.Dataset, SkipReport]:
    """
    Normalize one split (see `prepare_dataset`), keeping the first `max_samples` rows when given.

    Raises:
        `ValueError`: for a split the dataset does not have (listing those it has), or one left without any usable
        image (with its skip summary), so that a run stops right after the data check.
    """
    if split not in raw:
        hint = ""
        if split == VALIDATION_SPLIT:
            hint = " (--validation_split_percentage holds one out of the training split when it is above 0)"
        raise ValueError(f"Split {split!r} not found; the dataset has {sorted(raw)}{hint}.")
    dataset = raw[split]
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError(f"Split {split!r} has no rows.")
    if spec is not None:
        normalized, report = prepare_dataset(dataset, spec)
    else:
        normalized, report = prepare_dataset(dataset, **detect_options)
    if report.kept_images == 0:
        raise ValueError(f"Split {split!r} has no usable image: nothing to train or score on.\n{report.summary()}")
    return normalized, report


LOSS_TERMS = ("focal_loss", "dice_loss", "iou_loss", "point_matching_loss", "boundary_point_loss")
CHECKED_OUTPUTS = ("pred_masks", "iou_scores", "pred_boundary_points")


def non_finite_loss(accelerator: Accelerator, output, step: int) -> str | None:
    """
    `None` when the loss of every process is finite; else what to tell the user: the step, every loss term, and which
    of the model's outputs (masks, IoU scores, the point-matching head's points) hold non-finite values. Every
    process takes part (so that all stop together, none waiting for the others in a gradient all-reduce).

    Args:
        accelerator (`Accelerator`): the run's accelerator.
        output ([`SamPromptLearnerOutput`]): the training forward's output, with its loss terms.
        step (`int`): the optimizer step being computed (1-based), for the message.
    """
    finite = torch.isfinite(output.loss.detach()).reshape(1)
    if accelerator.gather(finite).all():
        return None
    terms = ", ".join(
        f"{name}={getattr(output, name).item():.4g}" for name in LOSS_TERMS if getattr(output, name) is not None
    )
    bad_outputs = [
        name
        for name in CHECKED_OUTPUTS
        if getattr(output, name) is not None and not torch.isfinite(getattr(output, name)).all()
    ]
    where = f"non-finite values in {', '.join(bad_outputs)}" if bad_outputs else "the model's outputs are finite"
    return (
        f"the loss is not finite at step {step} (process {accelerator.process_index}): loss={output.loss.item():.4g} "
        f"({terms}); {where}. Training stopped; the checkpoints written so far are from before. Lower "
        "--learning_rate, or check the data and --config_overrides loss weights."
    )


@dataclass
class RunSummary:
    """What `metrics.json` holds."""

    base_model: str
    dataset: str
    trainable: list[str]
    trainable_parameters: int
    total_parameters: int
    completed_steps: int
    train_wall_time_seconds: float
    zero_shot: dict[str, Any]
    adapted: dict[str, Any]
    skipped_data: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)
    # Of `train_wall_time_seconds`, the part spent in evaluations during training (absent from older files).
    eval_wall_time_seconds: float = 0.0
    # Which step `adapted` is and why (`delivery_decision`); absent from older files.
    delivered: dict[str, Any] | None = None
    # `{"split", "zero_shot", "adapted"}` on the dataset's test split, which chooses nothing; None without one.
    test: dict[str, Any] | None = None

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.__dict__, indent=2, default=str) + "\n")
        return path


def save_adapted_model(accelerator: Accelerator, model, processor: SamProcessor, directory: Path) -> None:
    """`save_pretrained` the trained model with its processor, from every process (only the main one writes). A peft
    model is saved twice: its adapter under `directory/adapter`, and merged into a plain prompt-learner model
    (a copy: the training model keeps its adapters) so that `from_pretrained` alone loads the result."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if isinstance(unwrapped, PeftModel):
        if accelerator.is_main_process:
            unwrapped.save_pretrained(directory / "adapter")
        unwrapped = copy.deepcopy(unwrapped).merge_and_unload()
    unwrapped.save_pretrained(directory, is_main_process=accelerator.is_main_process, save_function=accelerator.save)
    if accelerator.is_main_process:
        processor.save_pretrained(directory)


def grid_examples(dataset: datasets.Dataset, prompt_config: PromptConfig, count: int) -> list[PredictionExample]:
    """The first `count` images of a normalized dataset, each with its first object's evaluation prompt and ground
    truth, for `predictions.png` (predictions are filled in later)."""
    mode = prompt_config.evaluation_mode
    examples = []
    for index in range(min(count, len(dataset))):
        row = dataset[index]
        mask = decode_rle(row["masks"][0])
        prompts = sample_object_prompts(mask, prompt_config, prompt_rng(str(row["sample_id"]), 0, prompt_config.seed))
        with_points = mode in ("points", "points_and_box")
        examples.append(
            PredictionExample(
                image=to_rgb(row["image"]),
                ground_truth=mask,
                predictions={},
                points=prompts.points if with_points else None,
                point_labels=prompts.labels if with_points else None,
                box=prompts.box if mode in ("box", "points_and_box") else None,
                title=str(row["sample_id"]),
            )
        )
    return examples


@torch.no_grad()
def predict_grid_masks(model, processor: SamProcessor, examples: Sequence[PredictionExample]) -> list[np.ndarray]:
    """The model's own choice of mask (highest predicted IoU) for each example's prompt, at the image's size."""
    was_training = model.training
    model.eval()
    masks = [
        predict_mask(model, processor, example.image, example.points, example.point_labels, example.box).mask
        for example in examples
    ]
    model.train(was_training)
    return masks


def evaluation_collator(processor: SamProcessor, prompt_config, max_objects_per_image: int | None = None):
    """Deterministic prompts; ground truth at the model's input resolution, so scores are taken at full detail."""
    image_size = processor.image_processor.size["longest_edge"]
    return SamPromptCollator(
        processor, prompt_config, training=False, max_objects_per_image=max_objects_per_image, mask_size=image_size
    )


class BestWeights:
    """The trainable parameters at the best evaluation so far, copied to CPU memory. Registered with
    `accelerator.register_for_checkpointing`, they are part of every resumable checkpoint, so a resumed run still
    delivers the best weights of its first part. Only trainable parameters change during a run (buffers do not), so
    restoring them restores the model as it was at that evaluation."""

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}

    def capture(self, model: torch.nn.Module) -> None:
        self.tensors = {
            name: parameter.detach().to("cpu", copy=True)
            for name, parameter in model.named_parameters()
            if parameter.requires_grad
        }

    @torch.no_grad()
    def restore(self, model: torch.nn.Module) -> None:
        parameters = dict(model.named_parameters())
        for name, tensor in self.tensors.items():
            parameters[name].copy_(tensor)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.tensors)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.tensors = dict(state)


def delivery_decision(history: Sequence[dict[str, Any]], best_step: int, load_best: bool) -> dict[str, Any]:
    """Which step a run delivers and why, for `metrics.json`. `history` holds every evaluation (step 0 = zero-shot
    first) with its `mean_iou`; `best_step` is the step of the highest one (the earliest among equals)."""
    last = history[-1]
    scores = {point["step"]: point["mean_iou"] for point in history}
    if not load_best:
        return {"step": last["step"], "reason": "the last step (--no-load_best_model_at_end)"}
    if best_step == 0:
        reason = (
            f"no evaluation during training beat the zero-shot model (mIoU {scores[0]:.4f}; the best of the "
            f"{len(history) - 1} later ones: {max(p['mean_iou'] for p in history[1:]):.4f}), so the delivered model "
            "is the base unchanged"
            if len(history) > 1
            else "no evaluation after step 0"
        )
    elif best_step == last["step"]:
        reason = f"the last step had the best eval-split mIoU ({scores[best_step]:.4f}) of {len(history)} evaluations"
    else:
        reason = (
            f"step {best_step} had the best eval-split mIoU ({scores[best_step]:.4f}) of {len(history)} evaluations, "
            f"step 0 (zero-shot, {scores[0]:.4f}) included; the last step scored {last['mean_iou']:.4f}"
        )
    return {"step": best_step, "reason": reason}


# The learning rate of each trainable part (every `TRAINABLE_CHOICES` entry) when `--learning_rate` is not given: the
# prompt learner and the point-matching head start from zero / random weights and need a larger step than SAM's
# pretrained weights, which a large step damages (measured on the embedded tiny SAM: BENCHMARKS.md, "Learning rates by
# what is trained").
PART_LEARNING_RATES = {
    "prompt_learner": 3e-3,
    "point_matching_head": 3e-3,
    "mask_decoder": 1e-3,
    "prompt_encoder": 1e-4,
    "vision_encoder": 1e-5,
    LORA: 1e-3,
}
PEFT_PREFIX = "base_model.model."


def part_of_parameter(name: str) -> str:
    """The trainable part (`TRAINABLE_PARTS`) or `"lora"` a parameter name belongs to, for plain and peft models."""
    if ".lora_" in name:
        return LORA
    return name.removeprefix(PEFT_PREFIX).split(".")[0]


def parameter_groups(
    model: torch.nn.Module, learning_rate: float | None = None, weight_decay: float = 0.0
) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: one per trainable part, each at `learning_rate` when given, else at its
    part's rate (`PART_LEARNING_RATES`). Each group carries its `"name"` (for the log)."""
    by_part: dict[str, list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            by_part.setdefault(part_of_parameter(name), []).append(parameter)
    return [
        {
            "name": part,
            "params": parameters,
            "lr": PART_LEARNING_RATES[part] if learning_rate is None else learning_rate,
            "weight_decay": weight_decay,
        }
        for part, parameters in by_part.items()
    ]

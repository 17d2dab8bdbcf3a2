"""Building blocks of `examples/train.py`: what to train, data preparation with skip accounting, and the run's
outputs. The script keeps the readable shape of transformers' `*_no_trainer.py` examples; the logic lives here."""

import copy
import dataclasses
import json
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


def prepare_split(
    raw: datasets.DatasetDict,
    split: str,
    *,
    spec: AnnotationSpec | None = None,
    max_samples: int | None = None,
    **detect_options: Any,
) -> tuple[datasets.Dataset, SkipReport]:
    """Normalize one split (see `prepare_dataset`), keeping the first `max_samples` rows when given."""
    if split not in raw:
        raise ValueError(f"Split {split!r} not found; the dataset has {sorted(raw)}.")
    dataset = raw[split]
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if spec is not None:
        return prepare_dataset(dataset, spec)
    return prepare_dataset(dataset, **detect_options)


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

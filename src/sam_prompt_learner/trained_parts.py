"""Small checkpoints that hold only what an adaptation trained, and load over their base SAM in one call.

An adapted [`SamPromptLearnerModel`] differs from its base SAM only in the parts that trained: by default the prompt
learner and the point-matching head (tens of thousands of parameters against SAM's 90+ million), plus the mask
decoder when it was fine-tuned. [`save_trained_parts`] writes those tensors alone, next to a small JSON that says
which base they go over, in the spirit of peft's `adapter_config.json` / `adapter_model.safetensors`:

    trained_parts_config.json    base model id or path, the parts saved, the prompt learner's config fields
    trained_parts.safetensors    the tensors of those parts (`prompt_learner.*`, `point_matching_head.*`, ...)

[`load_trained_parts`] is the one documented call that rebuilds the adapted model:

```python
from sam_prompt_learner.trained_parts import load_trained_parts, save_trained_parts

save_trained_parts(model, "plates-parts/", parts=["prompt_learner", "point_matching_head"],
                   base_model_name_or_path="facebook/sam-vit-base")
model = load_trained_parts("plates-parts/")  # the base named in the JSON; or base_model_name_or_path="<id or dir>"
```

LoRA runs need no second format: the peft adapter directory (`adapter_config.json` + `adapter_model.safetensors`,
written by `peft_model.save_pretrained(dir)`; `examples/train.py` writes it to `<output_dir>/adapter/`) already holds
only the LoRA weights and the fully trained modules, and `load_trained_parts` loads it too (merging LoRA into the
returned model).

Only safetensors are read or written, so loading never unpickles anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .configuration_prompt_learner import PROMPT_LEARNER_FIELDS
from .modeling_prompt_learner import PromptLearnerMixin, load_prompt_learner_model

TRAINED_PARTS_CONFIG_NAME = "trained_parts_config.json"
TRAINED_PARTS_WEIGHTS_NAME = "trained_parts.safetensors"
PEFT_ADAPTER_CONFIG_NAME = "adapter_config.json"
PEFT_ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"

# Parts whose tensors all live under their own module prefix. A trained image or prompt encoder also changes the
# random-Fourier matrix it shares with the other encoder (`shared_image_embedding`), and such a checkpoint is most of
# SAM anyway: save the full model with `save_pretrained` instead.
SAVABLE_PARTS = ("prompt_learner", "point_matching_head", "mask_decoder")


@dataclasses.dataclass
class TrainedPartsConfig:
    """
    Contents of `trained_parts_config.json`.

    Args:
        base_model_name_or_path (`str`):
            Hub id or directory of the SAM checkpoint the parts were trained over (plain `sam` or `sam_prompt_learner`).
        parts (`list[str]`):
            The saved parts, names among `SAVABLE_PARTS`.
        prompt_learner_config (`dict[str, Any]`):
            Values of the `PromptLearnerConfig` fields that `SamConfig` lacks (`PROMPT_LEARNER_FIELDS`), applied
            over the base's config when loading.
    """

    base_model_name_or_path: str
    parts: list[str]
    prompt_learner_config: dict[str, Any]

    def save(self, directory: Path) -> Path:
        path = directory / TRAINED_PARTS_CONFIG_NAME
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: Path) -> TrainedPartsConfig:
        path = directory / TRAINED_PARTS_CONFIG_NAME
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        expected = {field.name for field in dataclasses.fields(cls)}
        if not isinstance(values, dict) or set(values) != expected:
            found = sorted(values) if isinstance(values, dict) else type(values).__name__
            raise ValueError(f"{path} must be a JSON object with exactly the keys {sorted(expected)}, got {found}.")
        _check_parts(values["parts"], source=str(path))
        unknown_fields = sorted(set(values["prompt_learner_config"]) - set(PROMPT_LEARNER_FIELDS))
        if unknown_fields:
            raise ValueError(f"{path}: unknown prompt_learner_config fields {unknown_fields}.")
        return cls(**values)


def _check_parts(parts: Any, source: str) -> list[str]:
    if isinstance(parts, str) or not isinstance(parts, Iterable):
        raise ValueError(f"{source}: `parts` must be a list of names among {list(SAVABLE_PARTS)}, got {parts!r}.")
    parts = list(parts)
    unsupported = [part for part in parts if part not in SAVABLE_PARTS]
    if not parts or unsupported or len(set(parts)) != len(parts):
        raise ValueError(
            f"{source}: `parts` must be distinct names among {list(SAVABLE_PARTS)}, got {parts}. A model whose image "
            "or prompt encoder trained has no small checkpoint: save it in full with `save_pretrained`."
        )
    return parts


def _part_prefixes(parts: Iterable[str]) -> tuple[str, ...]:
    return tuple(f"{part}." for part in parts)


def save_trained_parts(
    model: PromptLearnerMixin,
    save_directory: str | os.PathLike,
    parts: Iterable[str],
    base_model_name_or_path: str | None = None,
) -> Path:
    """
    Save only the tensors of the parts that trained, with the JSON that [`load_trained_parts`] needs.

    Args:
        model ([`SamPromptLearnerModel`], [`SamHQPromptLearnerModel`] or [`Sam2PromptLearnerModel`]):
            The adapted model. For a peft (LoRA) model, call its own `save_pretrained(dir)` instead: the adapter it
            writes is already the small checkpoint, and `load_trained_parts` loads it.
        save_directory (`str` or `os.PathLike`):
            Directory to write `trained_parts_config.json` and `trained_parts.safetensors` into (created if needed).
        parts (`Iterable[str]`):
            What trained, among `SAVABLE_PARTS` (`"prompt_learner"`, `"point_matching_head"`, `"mask_decoder"`): the
            run's `--trainable` parts. Every tensor (parameters and buffers) under these modules is saved.
        base_model_name_or_path (`str`, *optional*):
            Hub id or directory of the base SAM the parts go over. Defaults to the checkpoint `model` was loaded from
            (`model.name_or_path`); pass it when that was a local directory that users of the parts will not have.

    Returns:
        `Path` of the written directory.

    Raises:
        `ValueError`: for a peft model, an unknown or unsupported part, a part this model does not have, or no known
        base.
    """
    if not isinstance(model, PromptLearnerMixin):
        raise ValueError(
            f"save_trained_parts expects a prompt-learner model (e.g. SamPromptLearnerModel), got "
            f"{type(model).__name__}. A peft (LoRA) model's "
            "adapter already is its small checkpoint: call `model.save_pretrained(directory)`."
        )
    parts = _check_parts(parts, source="save_trained_parts")
    absent = [part for part in parts if getattr(model, part) is None]
    if absent:
        raise ValueError(f"Cannot save {absent}: this model's config disables them.")
    base_model_name_or_path = base_model_name_or_path or model.name_or_path
    if not base_model_name_or_path:
        raise ValueError(
            "The model was not loaded from a checkpoint, so its base is unknown: pass `base_model_name_or_path`."
        )

    prefixes = _part_prefixes(parts)
    # Copies on CPU: safetensors needs contiguous tensors that share no storage.
    tensors = {
        name: tensor.detach().to("cpu", copy=True).contiguous()
        for name, tensor in model.state_dict().items()
        if name.startswith(prefixes)
    }
    save_directory = Path(save_directory)
    save_directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, save_directory / TRAINED_PARTS_WEIGHTS_NAME, metadata={"format": "pt"})
    config = TrainedPartsConfig(
        base_model_name_or_path=str(base_model_name_or_path),
        parts=parts,
        prompt_learner_config={name: getattr(model.config, name) for name in PROMPT_LEARNER_FIELDS},
    )
    config.save(save_directory)
    return save_directory


def is_trained_parts_directory(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory that [`load_trained_parts`] loads (this module's format or a peft adapter)."""
    path = Path(path)
    return (path / TRAINED_PARTS_CONFIG_NAME).is_file() or (path / PEFT_ADAPTER_CONFIG_NAME).is_file()


def trained_parts_base(directory: str | os.PathLike) -> str:
    """The base model recorded in a trained-parts or peft adapter directory (e.g. to load its processor from)."""
    directory = Path(directory)
    if (directory / TRAINED_PARTS_CONFIG_NAME).is_file():
        return TrainedPartsConfig.load(directory).base_model_name_or_path
    from peft import PeftConfig

    base = PeftConfig.from_pretrained(str(directory)).base_model_name_or_path
    if not base:
        raise ValueError(f"{directory / PEFT_ADAPTER_CONFIG_NAME} records no `base_model_name_or_path`.")
    return base


def load_trained_parts(
    directory: str | os.PathLike,
    base_model_name_or_path: str | None = None,
    **from_pretrained_kwargs: Any,
) -> PromptLearnerMixin:
    """
    Rebuild an adapted model: load the base into its family's prompt-learner class ([`SamPromptLearnerModel`],
    [`SamHQPromptLearnerModel`] or [`Sam2PromptLearnerModel`], read from the base's config) and put the saved parts
    over it.

    The check is strict: the file must hold every tensor of the parts it names and nothing else, each with the
    shape the model built from the base expects; all other tensors stay exactly as the base checkpoint holds them.

    Args:
        directory (`str` or `os.PathLike`):
            A directory written by [`save_trained_parts`], or a peft adapter directory (`adapter_config.json` +
            `adapter_model.safetensors`); the latter is loaded with peft and its LoRA merged into the model.
        base_model_name_or_path (`str`, *optional*):
            Hub id or directory of the base SAM. Defaults to the one recorded in the directory; pass it when the
            base moved (e.g. a local directory on another machine).
        from_pretrained_kwargs:
            Passed to the prompt-learner class's `from_pretrained` for the base (e.g. `torch_dtype`, `revision`);
            `use_safetensors` is always True.

    Returns:
        The prompt-learner model of the base's family in eval mode, its trainable parts set to the package default.

    Raises:
        `ValueError`: the directory is not a trained-parts or adapter directory, its JSON is malformed, or its
        tensors do not fit the base (e.g. parts trained over a SAM of another size).
    """
    directory = Path(directory)
    if (directory / TRAINED_PARTS_CONFIG_NAME).is_file():
        config = TrainedPartsConfig.load(directory)
    elif (directory / PEFT_ADAPTER_CONFIG_NAME).is_file():
        return _load_peft_adapter(directory, base_model_name_or_path, from_pretrained_kwargs)
    else:
        raise ValueError(
            f"{directory} holds neither {TRAINED_PARTS_CONFIG_NAME} (from `save_trained_parts`) nor "
            f"{PEFT_ADAPTER_CONFIG_NAME} (a peft adapter)."
        )
    weights_path = directory / TRAINED_PARTS_WEIGHTS_NAME
    if not weights_path.is_file():
        raise ValueError(f"{directory} has {TRAINED_PARTS_CONFIG_NAME} but no {TRAINED_PARTS_WEIGHTS_NAME}.")
    base = base_model_name_or_path or config.base_model_name_or_path
    model = load_prompt_learner_model(
        base, **{**from_pretrained_kwargs, **config.prompt_learner_config, "use_safetensors": True}
    )
    tensors = load_file(weights_path)
    _check_tensors_fit(model, tensors, config.parts, weights_path, base)
    model.load_state_dict(tensors, strict=False)  # strict about the parts above; the rest stays the base's
    return model


def _check_tensors_fit(
    model: PromptLearnerMixin, tensors: dict[str, torch.Tensor], parts: list[str], source: Path, base: str
) -> None:
    """Raise `ValueError` unless `tensors` are exactly the state of `parts` in `model`, with matching shapes."""
    absent = [part for part in parts if getattr(model, part) is None]
    if absent:
        raise ValueError(f"{source} holds {absent}, which the model built from base {base!r} does not have.")
    prefixes = _part_prefixes(parts)
    expected = {name: tensor for name, tensor in model.state_dict().items() if name.startswith(prefixes)}
    unexpected = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors))
    if unexpected or missing:
        raise ValueError(
            f"{source} does not hold exactly the tensors of parts {parts} of the model built from base {base!r}: "
            f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}, "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}."
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"{source}: `{name}` has shape {tuple(tensor.shape)} but the model built from base {base!r} expects "
                f"{tuple(expected[name].shape)}; these parts were trained over another SAM (a different size)."
            )


def _load_peft_adapter(
    directory: Path, base_model_name_or_path: str | None, from_pretrained_kwargs: dict[str, Any]
) -> PromptLearnerMixin:
    """The base with a peft adapter merged in; only `adapter_model.safetensors` is read (peft would otherwise fall
    back to unpickling `adapter_model.bin`)."""
    from peft import PeftModel

    if not (directory / PEFT_ADAPTER_WEIGHTS_NAME).is_file():
        raise ValueError(f"{directory} has {PEFT_ADAPTER_CONFIG_NAME} but no {PEFT_ADAPTER_WEIGHTS_NAME}.")
    base = base_model_name_or_path or trained_parts_base(directory)
    model = load_prompt_learner_model(base, **{**from_pretrained_kwargs, "use_safetensors": True})
    merged = PeftModel.from_pretrained(model, str(directory)).merge_and_unload()
    merged.set_default_trainable()  # peft froze every base parameter
    return merged.eval()

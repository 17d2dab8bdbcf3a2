"""Share an adapted model on the Hugging Face Hub.

    sam-prompt-learner push outputs/plates --repo-id <user>/sam-plates

[`push_to_hub`] uploads what `examples/train.py` wrote to its output directory (weights, config, processor config,
`metrics.json`, `predictions.png`, and the LoRA adapter when there is one) together with a model card that
[`model_card`] renders from `model_cards/template.md` and the run's `metrics.json`, in one commit. Resumable training
states (`checkpoints/`), the best intermediate model (`best_model/`) and pickled files are never uploaded. The output
directory is only read: a push that fails leaves it as it was, and can be retried.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError, HTTPError
from huggingface_hub.utils import validate_repo_id

from .data.synthetic import SYNTHETIC_TASKS
from .modeling_prompt_learner import PromptLearnerMixin, SamPromptLearnerModel, prompt_learner_class_for_model_type
from .training import RunSummary

# Not `library_name: transformers`: the Hub would then offer a transformers-only snippet, which fails because
# transformers knows the `sam_prompt_learner` model type only once this package is imported. The `transformers` tag
# still lists the models among transformers-compatible ones.
LIBRARY_NAME = "sam-prompt-learner"
PIPELINE_TAG = "mask-generation"
TAGS = ["segment-anything", "sam", "prompt-learning", "image-segmentation", "sam-prompt-learner", "transformers"]
# The card template's path inside the package (package data). `model_cards/template.md` at the repository root is the
# copy people edit; tests/test_hub.py checks that the packaged copy is identical.
MODEL_CARD_TEMPLATE = "model_cards/template.md"
DEFAULT_COMMIT_MESSAGE = "Upload model adapted with sam-prompt-learner"

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PROCESSOR_CONFIG_NAMES = ("processor_config.json", "preprocessor_config.json")
METRICS_NAME = "metrics.json"
PREDICTIONS_NAME = "predictions.png"
ADAPTER_FILES = ("adapter/adapter_config.json", "adapter/adapter_model.safetensors")
MODEL_CARD_NAME = "README.md"

# (metrics.json key, model-index metric type, display name) of the scores reported in the card's metadata.
REPORTED_METRICS = (
    ("mean_iou", "mean_iou", "mIoU"),
    ("mean_dice", "dice", "Dice"),
    ("mean_boundary_iou", "boundary_iou", "Boundary IoU"),
)
# Mask selections of the card's table: the model's own choice among its three masks, and the best of three.
CARD_SELECTIONS = ("predicted_iou", "oracle")


class PushToHubError(OSError):
    """A push to the Hub failed (network, authentication, permissions, server); the local output is unchanged."""


def files_to_upload(output_dir: str | os.PathLike) -> list[str]:
    """
    The files of a training output directory that [`push_to_hub`] uploads, besides the generated `README.md`.

    Args:
        output_dir (`str` or `os.PathLike`):
            A directory written by `examples/train.py`.

    Returns:
        `list[str]`: sorted paths relative to `output_dir`, with `/` separators: `config.json`, the safetensors
        weights (`model.safetensors`, or the shards named by `model.safetensors.index.json` and the index), the
        processor configuration, `metrics.json`, and, when present, `predictions.png` and the LoRA adapter's
        `adapter/adapter_config.json` and `adapter/adapter_model.safetensors`.

    Raises:
        `ValueError`: when the directory lacks the config, safetensors weights, a processor configuration or
        `metrics.json`, or holds an incomplete sharded checkpoint or LoRA adapter.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise ValueError(f"{output_dir} is not a directory.")

    def missing(detail: str) -> ValueError:
        return ValueError(f"{output_dir} is not a complete training output: {detail}")

    for name in (CONFIG_NAME, METRICS_NAME):
        if not (output_dir / name).is_file():
            raise missing(f"no {name}.")
    files = [CONFIG_NAME, METRICS_NAME]
    if (output_dir / WEIGHTS_INDEX_NAME).is_file():
        index = json.loads((output_dir / WEIGHTS_INDEX_NAME).read_text())
        shards = sorted(set(index["weight_map"].values()))
        absent = [shard for shard in shards if not (output_dir / shard).is_file()]
        if absent:
            raise missing(f"{WEIGHTS_INDEX_NAME} names shards that are not there: {absent}.")
        files += [WEIGHTS_INDEX_NAME, *shards]
    elif (output_dir / WEIGHTS_NAME).is_file():
        files.append(WEIGHTS_NAME)
    else:
        raise missing(f"no {WEIGHTS_NAME} (only safetensors weights are uploaded, never pickled ones).")
    processor_configs = [name for name in PROCESSOR_CONFIG_NAMES if (output_dir / name).is_file()]
    if not processor_configs:
        raise missing(f"no processor configuration ({' or '.join(PROCESSOR_CONFIG_NAMES)}).")
    files += processor_configs

    if (output_dir / PREDICTIONS_NAME).is_file():
        files.append(PREDICTIONS_NAME)
    adapter_present = [name for name in ADAPTER_FILES if (output_dir / name).is_file()]
    if adapter_present and len(adapter_present) != len(ADAPTER_FILES):
        raise missing(f"the LoRA adapter is incomplete: found {adapter_present}, expected {list(ADAPTER_FILES)}.")
    return sorted(files + adapter_present)


def read_run_summary(path: str | os.PathLike) -> RunSummary:
    """Read a `metrics.json` written by `examples/train.py` into a [`RunSummary`], naming the file when it is not one.

    Raises:
        `ValueError`: when the file is not JSON, lacks one of `RunSummary`'s fields, or lacks a score the model card
        reports (mIoU, Dice, boundary IoU and object count, for the zero-shot and adapted models and both mask
        selections).
    """
    path = Path(path)
    try:
        summary = RunSummary(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as error:
        raise ValueError(f"{path} is not a metrics.json written by examples/train.py: {error}") from None
    score_keys = [key for key, _, _ in REPORTED_METRICS] + ["num_objects"]
    for stage in ("zero_shot", "adapted"):
        for selection in CARD_SELECTIONS:
            scores = getattr(summary, stage).get(selection, {})
            absent = [key for key in score_keys if key not in scores]
            if absent:
                raise ValueError(f"{path}: `{stage}.{selection}` lacks {absent}; the model card reports them.")
    return summary


def hub_repo_id(name: str) -> str | None:
    """`name` when it names a Hub repository; `None` for an embedded synthetic task or a local path (which must not
    appear in a public card's metadata: the Hub links `base_model` and `datasets` entries to repositories)."""
    if name in SYNTHETIC_TASKS or name.startswith((".", "~", "/")) or Path(name).exists():
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def display_name(name: str) -> str:
    """A model or dataset name fit for a public card: Hub ids and task names as they are, local paths by their last
    component only."""
    return name if name in SYNTHETIC_TASKS or hub_repo_id(name) else Path(name).name


def model_card(output_dir: str | os.PathLike, repo_id: str, *, license: str | None = None) -> ModelCard:
    """
    Render the model card of a training output directory from the package's template and its `metrics.json`.

    Args:
        output_dir (`str` or `os.PathLike`):
            A directory written by `examples/train.py`; only `metrics.json` and the presence of `adapter/` are read.
        repo_id (`str`):
            The Hub repository the card is for (`<user>/<name>`), used in the usage snippet and as the model's name.
        license (`str`, *optional*):
            A Hub license identifier (e.g. `"apache-2.0"`, SAM's license), for the metadata. Omitted when `None`: the
            weights inherit the base model's license, which the package cannot know in general.

    Returns:
        `huggingface_hub.ModelCard`: YAML metadata (`library_name`, `pipeline_tag: mask-generation`, `tags`, `license`,
        `base_model` and `datasets` when they are Hub repositories, and a `model-index` with the adapted model's mIoU,
        Dice and boundary IoU) and a body with the method, the training configuration, the zero-shot vs adapted
        table and a usage snippet.
    """
    output_dir = Path(output_dir)
    summary = read_run_summary(output_dir / METRICS_NAME)
    dataset = display_name(summary.dataset)
    eval_split = summary.settings.get("eval_split")
    adapted = summary.adapted["predicted_iou"]
    # Only the adapted scores go to `model-index`: it states this model's results, and the zero-shot scores are the
    # base model's (they are in the card's table).
    eval_results = [
        EvalResult(
            task_type=PIPELINE_TAG,
            task_name="Promptable segmentation",
            dataset_type=hub_repo_id(summary.dataset) or dataset,
            dataset_name=dataset,
            dataset_split=eval_split,
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=adapted[key],
        )
        for key, metric_type, metric_name in REPORTED_METRICS
    ]
    has_adapter = (output_dir / ADAPTER_FILES[0]).is_file()
    model_class = _model_class_of(output_dir)
    family_tags = [model_class.config_class.base_model_type.replace("_", "-")]
    card_data = ModelCardData(
        library_name=LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG,
        license=license,
        base_model=hub_repo_id(summary.base_model),
        datasets=[hub_repo_id(summary.dataset)] if hub_repo_id(summary.dataset) else None,
        tags=TAGS + [tag for tag in family_tags if tag not in TAGS] + (["lora", "peft"] if has_adapter else []),
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results,
    )
    on_eval = f" ({eval_split})" if eval_split else ""
    scored = [(f"zero-shot{on_eval}", summary.zero_shot), (f"adapted{on_eval}", summary.adapted)]
    if summary.test:
        test_split = summary.test["split"]
        scored += [(f"zero-shot ({test_split})", summary.test["zero_shot"])]
        scored += [(f"adapted ({test_split})", summary.test["adapted"])]
    results = [
        {"name": name, **scores["predicted_iou"], "oracle_mean_iou": scores["oracle"]["mean_iou"]}
        for name, scores in scored
    ]
    template = resources.files(__package__).joinpath(MODEL_CARD_TEMPLATE).read_text(encoding="utf-8")
    return ModelCard.from_template(
        card_data,
        template_str=template,
        repo_id=repo_id,
        base_model=display_name(summary.base_model),
        dataset=dataset,
        eval_split=eval_split,
        eval_prompts=summary.settings.get("eval_prompts", "points"),
        trainable=summary.trainable,
        trainable_parameters=summary.trainable_parameters,
        total_parameters=summary.total_parameters,
        trainable_percent=100 * summary.trainable_parameters / summary.total_parameters,
        completed_steps=summary.completed_steps,
        delivered=summary.delivered or {"step": summary.adapted.get("best_step"), "reason": "the best evaluation"},
        test_split=summary.test["split"] if summary.test else None,
        train_wall_time_seconds=summary.train_wall_time_seconds,
        settings=summary.settings,
        num_objects=adapted["num_objects"],
        results=results,
        has_adapter=has_adapter,
        model_class=model_class.__name__,
        family=model_class.family_name,
        base_class=next(base for base in model_class.__bases__ if base is not PromptLearnerMixin).__name__,
    )


def _model_class_of(output_dir: Path) -> type:
    """The prompt-learner class of the checkpoint in `output_dir`, from its `config.json` (SAM when it has none)."""
    config_path = output_dir / CONFIG_NAME
    if not config_path.is_file():
        return SamPromptLearnerModel
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"{config_path} is not a JSON object: {error}") from error
    return prompt_learner_class_for_model_type(model_type)


def retry_command(output_dir: str | os.PathLike, repo_id: str, private: bool) -> str:
    """The shell command that pushes `output_dir` again."""
    command = f"sam-prompt-learner push {shlex.quote(str(output_dir))} --repo-id {shlex.quote(repo_id)}"
    return command + (" --private" if private else "")


def push_to_hub(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    license: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
) -> str:
    """
    Upload a training output directory to a Hub model repository, with a generated model card, in one commit.

    The repository is created when it does not exist. The upload is exactly [`files_to_upload`] plus `README.md` (the
    card of [`model_card`], uploaded from memory); `checkpoints/`, `best_model/`, pickled files and anything else in
    the directory stay local. The directory is only read, so a failed push leaves it intact; as a single commit, a
    failed push also leaves the repository without a partial upload.

    Args:
        output_dir (`str` or `os.PathLike`):
            A directory written by `examples/train.py`.
        repo_id (`str`):
            `<user or organization>/<name>`; a bare `<name>` goes to the token owner's namespace.
        token (`str`, *optional*):
            A Hub token with write access. Defaults to the `HF_TOKEN` environment variable or the saved login
            (`hf auth login`).
        private (`bool`, *optional*, defaults to `False`):
            Create the repository as private (an existing repository keeps its visibility).
        license (`str`, *optional*):
            License identifier for the card's metadata (see [`model_card`]).
        commit_message (`str`, *optional*):
            Message of the upload commit.

    Returns:
        `str`: the URL of the repository.

    Raises:
        `ValueError`: before any network access, when `output_dir` is not a complete training output (see
        [`files_to_upload`]) or its `metrics.json` is unreadable.
        [`PushToHubError`]: when the Hub cannot be reached (including `HF_HUB_OFFLINE=1`), the token is missing or
        invalid, or the Hub refuses the upload; the message says that the local output is intact and how to retry.
    """
    output_dir = Path(output_dir)
    files = files_to_upload(output_dir)
    card = model_card(output_dir, repo_id, license=license)  # an unreadable metrics.json fails before the network
    api = HfApi(token=token)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        if repo_url.repo_id != repo_id:  # a bare `<name>` gained the token owner's namespace: the snippet needs it
            card = model_card(output_dir, repo_url.repo_id, license=license)
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(output_dir / name)) for name in files]
        operations.append(CommitOperationAdd(path_in_repo=MODEL_CARD_NAME, path_or_fileobj=str(card).encode()))
        api.create_commit(repo_url.repo_id, operations, commit_message=commit_message)
    # `HfHubHTTPError`, `OfflineModeIsEnabled` and a missing token are `OSError`s; connection failures are the HTTP
    # client's transport errors, which share `HfHubHTTPError`'s base class `HTTPError` (httpx's, re-exported).
    except (OSError, HTTPError) as error:
        raise PushToHubError(
            f"Pushing {output_dir} to the Hub repository {repo_id!r} failed: {type(error).__name__}: {error}\n"
            f"The local output is intact (nothing in {output_dir} was changed). Retry with:\n"
            f"    {retry_command(output_dir, repo_id, private)}"
        ) from error
    return str(repo_url)


def push_command(args: argparse.Namespace) -> int:
    """Handler of `sam-prompt-learner push`: 0 when pushed, 1 when the push failed, 2 for an invalid directory."""
    try:
        url = push_to_hub(
            args.output_dir, args.repo_id, token=args.token, private=args.private, license=args.license,
            commit_message=args.commit_message,
        )  # fmt: skip
    except ValueError as error:
        print(f"sam-prompt-learner push: error: {error}", file=sys.stderr)
        return 2
    except PushToHubError as error:
        print(f"sam-prompt-learner push: error: {error}", file=sys.stderr)
        return 1
    print(f"pushed {args.output_dir} to {url}")
    return 0


def register_push_command(subparsers: Any) -> argparse.ArgumentParser:
    """
    Add the `push` subcommand to the `sam-prompt-learner` command line.

    Args:
        subparsers (the object returned by `argparse.ArgumentParser.add_subparsers`):
            The command line's subcommands; `push` sets `handler=push_command`.

    Returns:
        `argparse.ArgumentParser`: the `push` subcommand's parser.
    """
    push = subparsers.add_parser(
        "push", help="Upload a training output directory to the Hugging Face Hub, with a generated model card."
    )
    push.add_argument("output_dir", type=Path, help="The --output_dir of examples/train.py.")
    push.add_argument("--repo-id", "--repo_id", dest="repo_id", required=True, help="<user or organization>/<name>.")
    push.add_argument("--private", action="store_true", help="Create the repository as private.")
    push.add_argument(
        "--token", default=None,
        help="A Hub token with write access (default: HF_TOKEN or the saved `hf auth login`, which keep it out of "
        "your shell history).",
    )  # fmt: skip
    push.add_argument("--license", default=None, help="License identifier for the card, e.g. apache-2.0.")
    push.add_argument("--commit-message", "--commit_message", dest="commit_message", default=DEFAULT_COMMIT_MESSAGE)
    push.set_defaults(handler=push_command)
    return push

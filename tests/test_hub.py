"""Hub round trip, offline: what `push_to_hub` would upload (files, card, metadata), failed pushes, and loading the
pushed repository by id from a local Hub cache with `from_pretrained`, `AutoModel` and `pipeline`."""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import requests
import tomllib
import torch
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.hf_api import RepoUrl
from huggingface_hub.utils import httpx
from PIL import Image
from tiny import tiny_config

from sam_prompt_learner import PromptLearnerConfig, SamPromptLearnerModel, processor_for_config
from sam_prompt_learner.hub import (
    MODEL_CARD_TEMPLATE,
    PushToHubError,
    files_to_upload,
    model_card,
    push_to_hub,
    register_push_command,
)
from sam_prompt_learner.training import RunSummary

ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "user/sam-plates"
MODEL_FILES = ["config.json", "metrics.json", "model.safetensors", "predictions.png", "processor_config.json"]
ADAPTER_FILES = ["adapter/adapter_config.json", "adapter/adapter_model.safetensors"]


def scores(mean_iou: float, mean_dice: float, mean_boundary_iou: float, num_objects: int = 40) -> dict:
    return dict(mean_iou=mean_iou, mean_dice=mean_dice, mean_boundary_iou=mean_boundary_iou, num_objects=num_objects)


def run_summary(**overrides) -> RunSummary:
    """A metrics.json as examples/train.py writes it, with distinct values so that a swapped column shows."""
    fields = dict(
        base_model="facebook/sam-vit-base",
        dataset="plates",
        trainable=["prompt_learner", "point_matching_head"],
        trainable_parameters=31024,
        total_parameters=146310,
        completed_steps=300,
        train_wall_time_seconds=187.25,
        zero_shot={"predicted_iou": scores(0.41234, 0.52345, 0.21456), "oracle": scores(0.61567, 0.71678, 0.31789)},
        adapted={
            "predicted_iou": scores(0.81234, 0.89345, 0.61456),
            "oracle": scores(0.85567, 0.91678, 0.65789),
            "best_step": 200,
            "history": [{"step": 100, **scores(0.7, 0.8, 0.5)}, {"step": 200, **scores(0.81234, 0.89345, 0.61456)}],
        },
        skipped_data={"train": {"num_rows": 32, "skipped": {}}, "eval": {"num_rows": 16, "skipped": {}}},
        settings={"seed": 0, "num_processes": 1, "eval_prompts": "points", "mixed_precision": "no"},
        delivered={"step": 200, "reason": "step 200 had the best eval-split mIoU"},
        test={
            "split": "test",
            "zero_shot": {"predicted_iou": scores(0.40111, 0.5, 0.2), "oracle": scores(0.6, 0.7, 0.3)},
            "adapted": {"predicted_iou": scores(0.79222, 0.88, 0.6), "oracle": scores(0.84, 0.9, 0.64)},
        },
    )
    return RunSummary(**(fields | overrides))


def write_output_dir(directory: Path, summary: RunSummary) -> Path:
    """A training output directory like examples/train.py's, with everything that must stay local next to it."""
    torch.manual_seed(0)
    config = tiny_config(PromptLearnerConfig)
    model = SamPromptLearnerModel(config)
    model.save_pretrained(directory)
    processor_for_config(config).save_pretrained(directory)
    summary.write(directory / "metrics.json")
    Image.fromarray(np.full((8, 16, 3), 200, dtype=np.uint8)).save(directory / "predictions.png")
    checkpoint = directory / "checkpoints" / "step_000000100"
    checkpoint.mkdir(parents=True)
    shutil.copy(directory / "model.safetensors", checkpoint / "model.safetensors")
    for name in ("optimizer.bin", "random_states_0.pkl", "scheduler.bin"):
        (checkpoint / name).write_bytes(b"pickled state")
    (checkpoint / "training_state.json").write_text("{}")
    model.save_pretrained(directory / "best_model")
    processor_for_config(config).save_pretrained(directory / "best_model")
    (directory / "pytorch_model.bin").write_bytes(b"a pickled copy that must never be uploaded")
    (directory / "notes.txt").write_text("local notes")
    return directory


@pytest.fixture(scope="module")
def pristine_output_dir(tmp_path_factory):
    return write_output_dir(tmp_path_factory.mktemp("output"), run_summary())


@pytest.fixture
def output_dir(pristine_output_dir, tmp_path):
    """A fresh copy per test, so that a push that wrote into its directory could not hide behind an earlier one."""
    return shutil.copytree(pristine_output_dir, tmp_path / "output")


def directory_contents(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in directory.rglob("*") if path.is_file()}


class FakeHub:
    """Stands in for `HfApi.create_repo` / `HfApi.create_commit`, recording what a push sends."""

    def __init__(self, namespace: str = "user", commit_error: Exception | None = None):
        self.namespace = namespace
        self.commit_error = commit_error
        self.created: list[dict] = []
        self.commits: list[dict] = []

    def create_repo(self, api, repo_id, **kwargs):
        self.created.append({"repo_id": repo_id, **kwargs})
        full_id = repo_id if "/" in repo_id else f"{self.namespace}/{repo_id}"
        return RepoUrl(f"https://huggingface.co/{full_id}")

    def create_commit(self, api, repo_id, operations, **kwargs):
        if self.commit_error is not None:
            raise self.commit_error
        uploaded = {}
        for operation in operations:
            source = operation.path_or_fileobj
            uploaded[operation.path_in_repo] = source if isinstance(source, bytes) else Path(source).read_bytes()
        self.commits.append({"repo_id": repo_id, "files": uploaded, **kwargs})

    @property
    def uploaded(self) -> dict[str, bytes]:
        (commit,) = self.commits
        return commit["files"]


@pytest.fixture
def hub(monkeypatch):
    fake = FakeHub()
    monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kwargs: fake.create_repo(api, repo_id, **kwargs))
    monkeypatch.setattr(HfApi, "create_commit", lambda api, *args, **kwargs: fake.create_commit(api, *args, **kwargs))
    return fake


def uploaded_card(hub: FakeHub) -> ModelCard:
    return ModelCard(hub.uploaded["README.md"].decode())


# ---------------------------------------------------------------------------------------------------------------
# Upload contents and card
# ---------------------------------------------------------------------------------------------------------------


def test_push_uploads_exactly_the_model_files_and_card_in_one_commit(output_dir, hub):
    before = directory_contents(output_dir)
    url = push_to_hub(output_dir, REPO_ID, private=True, commit_message="adapted to plates")

    assert url == f"https://huggingface.co/{REPO_ID}"
    assert hub.created == [{"repo_id": REPO_ID, "private": True, "exist_ok": True}]
    (commit,) = hub.commits
    assert commit["repo_id"] == REPO_ID and commit["commit_message"] == "adapted to plates"
    assert sorted(hub.uploaded) == sorted([*MODEL_FILES, "README.md"])
    for name in MODEL_FILES:
        assert hub.uploaded[name] == (output_dir / name).read_bytes(), name
    # The card is uploaded from memory: the output directory is only read.
    assert directory_contents(output_dir) == before


def test_push_includes_a_lora_adapter_and_tags_it(output_dir, hub):
    (output_dir / "adapter").mkdir()
    (output_dir / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (output_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"adapter weights")
    (output_dir / "adapter" / "README.md").write_text("peft's placeholder card")

    push_to_hub(output_dir, REPO_ID)
    assert sorted(hub.uploaded) == sorted([*MODEL_FILES, *ADAPTER_FILES, "README.md"])
    card = uploaded_card(hub)
    assert {"lora", "peft"} <= set(card.data.tags)
    assert "`adapter/` holds it separately" in card.text


def test_card_metadata_matches_metrics(output_dir, hub):
    push_to_hub(output_dir, REPO_ID, license="apache-2.0")
    card = uploaded_card(hub)
    metrics = json.loads((output_dir / "metrics.json").read_text())

    assert card.data.library_name == "sam-prompt-learner"
    assert card.data.pipeline_tag == "mask-generation"
    assert card.data.base_model == "facebook/sam-vit-base"
    assert card.data.license == "apache-2.0"
    assert card.data.datasets is None  # "plates" is an embedded synthetic task, not a Hub dataset
    assert {"segment-anything", "sam", "prompt-learning"} <= set(card.data.tags)
    assert card.data.model_name == "sam-plates"
    reported = {result.metric_type: result for result in card.data.eval_results}
    adapted = metrics["adapted"]["predicted_iou"]
    assert {kind: result.metric_value for kind, result in reported.items()} == {
        "mean_iou": adapted["mean_iou"],
        "dice": adapted["mean_dice"],
        "boundary_iou": adapted["mean_boundary_iou"],
    }
    assert {(result.task_type, result.dataset_type) for result in card.data.eval_results} == {
        ("mask-generation", "plates")
    }


def test_card_body_has_method_configuration_table_and_usage(output_dir, hub):
    push_to_hub(output_dir, REPO_ID)
    text = uploaded_card(hub).text

    assert "https://arxiv.org/abs/2403.09199" in text
    assert "| trainable parameters | 31,024 of 146,310 (21.20%) |" in text
    assert "| trained parts | prompt_learner, point_matching_head |" in text
    assert "| optimizer steps | 300 |" in text
    assert "| delivered weights | step 200: step 200 had the best eval-split mIoU |" in text
    assert "| eval_prompts | points |" in text
    assert "| zero-shot | 0.412 | 0.523 | 0.215 | 0.616 |" in text
    assert "| adapted | 0.812 | 0.893 | 0.615 | 0.856 |" in text
    # The test split, which chose nothing, is reported beside the eval split that chose the delivered step.
    assert "| zero-shot (test) | 0.401 |" in text and "| adapted (test) | 0.792 |" in text
    assert "pip install sam-prompt-learner" in text
    assert f'SamPromptLearnerModel.from_pretrained("{REPO_ID}")' in text
    assert f'pipeline("mask-generation", model="{REPO_ID}")' in text


def test_card_keeps_local_paths_out_and_links_hub_datasets(tmp_path, hub):
    local_base = tmp_path / "private" / "tiny-sam"
    local_base.mkdir(parents=True)
    directory = write_output_dir(
        tmp_path / "output", run_summary(base_model=str(local_base), dataset="someone/plates-dataset")
    )
    push_to_hub(directory, REPO_ID)
    card = uploaded_card(hub)

    assert card.data.base_model is None  # the Hub links `base_model` to a repository; a local path is none
    assert card.data.datasets == ["someone/plates-dataset"]
    assert str(tmp_path) not in str(card)
    assert "| base model | `tiny-sam` |" in card.text


def test_bare_repo_name_gets_the_token_owners_namespace_in_the_card(output_dir, hub):
    url = push_to_hub(output_dir, "sam-plates")
    assert url == "https://huggingface.co/user/sam-plates"
    assert hub.commits[0]["repo_id"] == "user/sam-plates"
    assert 'from_pretrained("user/sam-plates")' in uploaded_card(hub).text


def test_model_card_renders_without_the_hub(output_dir):
    card = model_card(output_dir, REPO_ID)
    assert card.data.pipeline_tag == "mask-generation"
    assert card.text.lstrip().startswith("<!--")


# ---------------------------------------------------------------------------------------------------------------
# Invalid output directories fail before any network access
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
        (lambda d: (d / "processor_config.json").unlink(), "no processor configuration"),
        (lambda d: (d / "metrics.json").unlink(), "no metrics.json"),
        (lambda d: (d / "metrics.json").write_text('{"base_model": "x"}'), "not a metrics.json"),
        (
            lambda d: run_summary(zero_shot={"predicted_iou": {}}).write(d / "metrics.json"),
            "`zero_shot.predicted_iou` lacks",
        ),
        (
            lambda d: (d / "adapter").mkdir() or (d / "adapter" / "adapter_config.json").write_text("{}"),
            "LoRA adapter is incomplete",
        ),
    ],
)
def test_incomplete_output_is_refused_before_the_network(output_dir, hub, damage, message):
    damage(output_dir)
    with pytest.raises(ValueError, match=re.escape(message)):
        push_to_hub(output_dir, REPO_ID)
    assert hub.created == [] and hub.commits == []


def test_sharded_weights_upload_the_index_and_every_shard(output_dir, hub):
    (output_dir / "model.safetensors").unlink()
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for shard in shards:
        (output_dir / shard).write_bytes(b"shard")
    index = {"metadata": {}, "weight_map": {"a.weight": shards[0], "b.weight": shards[1], "c.weight": shards[1]}}
    (output_dir / "model.safetensors.index.json").write_text(json.dumps(index))

    assert files_to_upload(output_dir) == sorted(
        ["config.json", "metrics.json", "model.safetensors.index.json", *shards, "predictions.png",
         "processor_config.json"]
    )  # fmt: skip
    (output_dir / shards[1]).unlink()
    with pytest.raises(ValueError, match="names shards that are not there"):
        files_to_upload(output_dir)


# ---------------------------------------------------------------------------------------------------------------
# Failed pushes
# ---------------------------------------------------------------------------------------------------------------


def unauthorized() -> HfHubHTTPError:
    request = httpx.Request("POST", f"https://huggingface.co/api/models/{REPO_ID}/commit/main")
    return HfHubHTTPError("401 Client Error: Unauthorized", response=httpx.Response(401, request=request))


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("[Errno 101] Network is unreachable"),
        unauthorized(),
        requests.ConnectionError("connection refused"),
        OSError("disk read error"),
    ],
    ids=["connect-error", "http-401", "requests-connection-error", "os-error"],
)
def test_failed_push_leaves_output_intact_and_says_how_to_retry(output_dir, hub, error):
    hub.commit_error = error
    before = directory_contents(output_dir)
    with pytest.raises(PushToHubError) as raised:
        push_to_hub(output_dir, REPO_ID, private=True)

    message = str(raised.value)
    assert "The local output is intact" in message
    assert f"sam-prompt-learner push {output_dir} --repo-id {REPO_ID} --private" in message
    assert type(error).__name__ in message
    assert raised.value.__cause__ is error
    assert directory_contents(output_dir) == before


def test_offline_mode_fails_as_a_push_error(output_dir, monkeypatch):
    # The real client, no stand-in: offline mode refuses the first request (`create_repo`).
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    before = directory_contents(output_dir)
    with pytest.raises(PushToHubError, match="OfflineModeIsEnabled") as raised:
        push_to_hub(output_dir, REPO_ID, token="hf_not_a_real_token")
    assert f"sam-prompt-learner push {output_dir} --repo-id {REPO_ID}\n" in str(raised.value) + "\n"
    assert directory_contents(output_dir) == before


# ---------------------------------------------------------------------------------------------------------------
# `sam-prompt-learner push`
# ---------------------------------------------------------------------------------------------------------------


def run_push_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="sam-prompt-learner")
    register_push_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_push_command(output_dir, hub, capsys):
    status = run_push_command(["push", str(output_dir), "--repo-id", REPO_ID, "--private", "--license", "mit"])
    assert status == 0
    assert hub.created[0]["private"] is True
    assert uploaded_card(hub).data.license == "mit"
    assert f"https://huggingface.co/{REPO_ID}" in capsys.readouterr().out


def test_push_command_reports_failures(output_dir, tmp_path, hub, capsys):
    hub.commit_error = OSError("disk read error")
    assert run_push_command(["push", str(output_dir), "--repo_id", REPO_ID]) == 1
    assert f"Retry with:\n    sam-prompt-learner push {output_dir} --repo-id {REPO_ID}" in capsys.readouterr().err
    assert run_push_command(["push", str(tmp_path / "missing"), "--repo-id", REPO_ID]) == 2
    assert "is not a directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Packaging of the template
# ---------------------------------------------------------------------------------------------------------------


def test_packaged_template_is_the_edited_one_and_is_package_data():
    packaged = ROOT / "src" / "sam_prompt_learner" / MODEL_CARD_TEMPLATE
    edited = ROOT / MODEL_CARD_TEMPLATE
    assert packaged.read_bytes() == edited.read_bytes(), f"copy {edited} to {packaged}"
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(fnmatch(MODEL_CARD_TEMPLATE, pattern) for pattern in package_data["sam_prompt_learner"])


# ---------------------------------------------------------------------------------------------------------------
# Download by id from a Hub cache
# ---------------------------------------------------------------------------------------------------------------

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_hub_snapshot(cache: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """Lay `files` out in the Hub cache directory `cache` as `hf_hub_download` stores a commit of `repo_id`."""
    repository = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repository / "snapshots" / COMMIT
    for name, content in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(content)
    (repository / "refs").mkdir()
    (repository / "refs" / "main").write_text(COMMIT)


# Runs in a fresh interpreter whose HF_HUB_CACHE is set before huggingface_hub reads it at import.
LOAD_BY_ID = r"""
import json, re, sys
import torch
from PIL import Image
from transformers import AutoModel, pipeline
from sam_prompt_learner import SamPromptLearnerModel

repo_id, reference_dir = sys.argv[1:3]
reference = SamPromptLearnerModel.from_pretrained(reference_dir).state_dict()
by_class = SamPromptLearnerModel.from_pretrained(repo_id)
by_auto = AutoModel.from_pretrained(repo_id)
generator = pipeline("mask-generation", model=repo_id, device="cpu")
image = Image.open("image.png")
generated = generator(image, points_per_batch=8, points_per_crop=4, pred_iou_thresh=0, stability_score_thresh=0)

card = open("README.md").read()
namespace = {}
exec(re.search(r"```python\n(.*?)```", card, re.S).group(1), namespace)

print(json.dumps({
    "by_class": type(by_class).__name__,
    "by_auto": type(by_auto).__name__,
    "same_weights": [all(torch.equal(model.state_dict()[k], v) for k, v in reference.items())
                     for model in (by_class, by_auto)],
    "pipeline_model": type(generator.model).__name__,
    "pipeline_masks": [list(mask.shape) for mask in generated["masks"]],
    "snippet_mask": list(namespace["mask"].shape),
}))
"""


def test_download_by_id_from_the_hub_cache(output_dir, tmp_path, hub):
    push_to_hub(output_dir, REPO_ID)
    write_hub_snapshot(tmp_path / "hub", REPO_ID, hub.uploaded)  # the pushed commit

    workdir = tmp_path / "work"
    workdir.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, size=(96, 160, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(workdir / "image.png")
    (workdir / "README.md").write_bytes(hub.uploaded["README.md"])
    environment = os.environ | {
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HOME": str(tmp_path / "hf-home"),  # no token or other cache from the machine
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    result = subprocess.run(
        [sys.executable, "-c", LOAD_BY_ID, REPO_ID, str(output_dir)],
        cwd=workdir, env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])

    assert loaded["by_class"] == loaded["by_auto"] == loaded["pipeline_model"] == "SamPromptLearnerModel"
    assert loaded["same_weights"] == [True, True]
    assert loaded["pipeline_masks"] and all(shape == [96, 160] for shape in loaded["pipeline_masks"])
    assert loaded["snippet_mask"] == [96, 160]  # the card's usage snippet runs as written

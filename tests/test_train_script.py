"""End-to-end runs of examples/train.py on a tiny SAM and tiny synthetic data, as subprocesses (as users run it)."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file
from tiny import save_tiny_sam, write_image_mask_folder
from transformers import AutoModel, AutoProcessor

from sam_prompt_learner import SamPromptLearnerImageProcessor, SamPromptLearnerModel, load_trained_parts
from sam_prompt_learner.embedded import embedded_model_path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train.py"
# One thread: the tiny model is dominated by per-op overhead, which extra threads only add to.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def base_sam(tmp_path_factory):
    return save_tiny_sam(tmp_path_factory.mktemp("base-sam"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("embedding-cache")


def train_args(base_sam, cache_dir, output_dir, *extra):
    return [
        "--model_name_or_path", str(base_sam), "--dataset_name", "plates", "--synthetic_num_train", "32",
        "--max_eval_samples", "16", "--output_dir", str(output_dir), "--cache_dir", str(cache_dir),
        "--num_grid_examples", "2", *extra,
    ]  # fmt: skip


def train_script():
    """examples/train.py imported as a module, for what needs no subprocess."""
    spec = importlib.util.spec_from_file_location("train_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(args, launcher=(sys.executable,), timeout=300, check=True, env=None):
    result = subprocess.run(
        [*launcher, str(SCRIPT), *args], env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def test_training_beats_zero_shot_and_writes_loadable_outputs(base_sam, cache_dir, tmp_path):
    output_dir = tmp_path / "run"
    args = ["--trainable", "prompt_learner", "point_matching_head", "mask_decoder", "--learning_rate", "3e-3",
            "--prompt_modes", "box", "--eval_prompt_mode", "box",
            "--max_train_steps", "300", "--eval_steps", "100"]  # fmt: skip
    result = run(train_args(base_sam, cache_dir, output_dir, *args))
    assert "adapted model:" in result.stdout

    metrics = json.loads((output_dir / "metrics.json").read_text())
    zero_shot, adapted = metrics["zero_shot"]["predicted_iou"], metrics["adapted"]["predicted_iou"]
    assert adapted["mean_iou"] > zero_shot["mean_iou"] + 0.2, (zero_shot, adapted)
    assert adapted["num_objects"] == zero_shot["num_objects"] == 16
    history = metrics["adapted"]["history"]
    assert metrics["completed_steps"] == 300 and [point["step"] for point in history] == [0, 100, 200, 300]
    # The delivered model is the best evaluation (step 0, the zero-shot model, included), and it scores as it did.
    best = max(history, key=lambda point: point["mean_iou"])
    assert metrics["delivered"]["step"] == best["step"] == metrics["adapted"]["best_step"]
    assert adapted["mean_iou"] == pytest.approx(best["mean_iou"], abs=1e-6)
    assert history[0]["mean_iou"] == pytest.approx(zero_shot["mean_iou"], abs=1e-6)
    # plates has a test split: both models are scored there too, on other images than the eval split's.
    test = metrics["test"]
    assert test["split"] == "test" and test["adapted"]["predicted_iou"]["num_objects"] > 0
    assert test["zero_shot"]["predicted_iou"]["mean_iou"] != zero_shot["mean_iou"]
    assert "test" in result.stdout and "delivered step" in result.stdout
    assert metrics["trainable_parameters"] < metrics["total_parameters"]
    assert metrics["skipped_data"]["train"]["kept_images"] == 32

    model = AutoModel.from_pretrained(output_dir)
    assert type(model) is SamPromptLearnerModel
    # The small checkpoint of what was trained, loaded over the base, is the same model.
    small = load_trained_parts(output_dir / "trained_parts")
    assert all((small.state_dict()[k] == v).all() for k, v in model.state_dict().items())
    assert type(AutoProcessor.from_pretrained(output_dir).image_processor) is SamPromptLearnerImageProcessor
    assert not (output_dir / "best_model").exists()  # the delivered model is the best one
    with Image.open(output_dir / "predictions.png") as grid:
        assert grid.format == "PNG" and grid.width > 0
    # The frozen encoder did not move.
    base = load_file(base_sam / "model.safetensors")
    adapted_weights = load_file(output_dir / "model.safetensors")
    assert all((adapted_weights[k] == v).all() for k, v in base.items() if k.startswith("vision_encoder."))


def test_killed_run_resumes_to_the_same_weights_and_evaluations(base_sam, cache_dir, tmp_path):
    common = ["--max_train_steps", "60", "--checkpointing_steps", "10", "--eval_steps", "10", "--learning_rate",
              "3e-3", "--trainable", "prompt_learner", "point_matching_head", "mask_decoder"]  # fmt: skip
    reference = tmp_path / "uninterrupted"
    run(train_args(base_sam, cache_dir, reference, *common))

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), *train_args(base_sam, cache_dir, interrupted, *common)],
        env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    checkpoints = interrupted / "checkpoints"
    deadline = time.monotonic() + 240
    while not (checkpoints.is_dir() and any(p.name.startswith("step_") for p in checkpoints.iterdir())):
        assert process.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "metrics.json").exists(), "the run finished before it was killed"
    for checkpoint in checkpoints.iterdir():  # whatever the kill interrupted, no complete-looking broken checkpoint
        assert checkpoint.name.startswith(".tmp-") or (checkpoint / "training_state.json").is_file()

    run(train_args(base_sam, cache_dir, interrupted, *common, "--resume_from_checkpoint", "latest"))
    # The evaluations before the resume point come back from the checkpoint; those after it are the same again.
    history = [json.loads((run_dir / "metrics.json").read_text())["adapted"]["history"]
               for run_dir in (reference, interrupted)]  # fmt: skip
    assert [point["step"] for point in history[1]] == [0, 10, 20, 30, 40, 50, 60]
    assert history[1] == history[0]
    expected = load_file(reference / "model.safetensors")
    resumed = load_file(interrupted / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        assert (resumed[name] == tensor).all(), name


def test_two_processes_train_and_score_every_object_once(base_sam, cache_dir, tmp_path):
    output_dir = tmp_path / "ddp"
    # DDP over gloo on CPU: torchrun-style launch (`--multi_gpu`) with the CPU forced (accelerate's own
    # `--cpu --num_processes 2` expects MPI).
    launcher = (str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")  # fmt: skip
    run(train_args(base_sam, cache_dir, output_dir, "--max_train_steps", "10", "--max_eval_samples", "15"),
        launcher=launcher, env={"ACCELERATE_USE_CPU": "1"})  # fmt: skip
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["settings"]["num_processes"] == 2
    # 15 images over 2 processes: the padded duplicate is dropped by gather_for_metrics.
    assert metrics["adapted"]["predicted_iou"]["num_objects"] == 15
    assert type(AutoModel.from_pretrained(output_dir)) is SamPromptLearnerModel


def test_lora_run_saves_a_merged_model_and_the_adapter_and_a_failed_push_keeps_them(base_sam, cache_dir, tmp_path):
    output_dir = tmp_path / "lora"
    result = run(
        train_args(base_sam, cache_dir, output_dir, "--trainable", "lora", "--max_train_steps", "20",
                   "--learning_rate", "1e-2", "--push_to_hub", "--hub_model_id", "someone/sam-plates",
                       "--no-load_best_model_at_end"),  # the trained adapter, even if step 0 scored higher
        check=False,
    )  # fmt: skip
    # Offline, the push fails at the very end: clearly, with the retry command, and the run's outputs are intact.
    assert result.returncode != 0
    assert "sam-prompt-learner push" in result.stderr
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["trainable"] == ["lora"] and metrics["settings"]["lora_rank"] == 8
    merged = SamPromptLearnerModel.from_pretrained(output_dir)
    base = load_file(base_sam / "model.safetensors")
    changed = [k for k, v in merged.state_dict().items() if k in base and not np.array_equal(v, base[k])]
    assert changed and all(k.startswith("mask_decoder.transformer.") for k in changed), changed
    assert (output_dir / "adapter" / "adapter_config.json").is_file()
    assert not (output_dir / "README.md").exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--trainable", "decoder"], "invalid choice"),
        (["--trainable", "lora", "mask_decoder"], "cannot be combined"),
        (["--learning_rate", "0"], "--learning_rate must be > 0"),
        (["--validation_split_percentage", "100"], "--validation_split_percentage must be in [0, 100)"),
        (["--num_positive_points", "3", "1"], "num_positive_points"),
        (["--config_overrides", "hidden_size=3"], "is not 'field=value'"),
        (["--config_overrides", "focal_loss_weight=-1"], "focal_loss_weight"),
    ],
)
def test_bad_flags_are_refused_by_the_argument_parser(base_sam, cache_dir, tmp_path, capsys, extra, message):
    # In this process: the parser is what refuses them (the subprocess tests below cover the exit of a real run).
    with pytest.raises(SystemExit) as exit_info:
        train_script().parse_args(train_args(base_sam, cache_dir, tmp_path / "bad", *extra))
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message", [(["--eval_split", "dev"], "Split 'dev' not found"), (["--image_column", "picture"], "picture")]
)
def test_bad_data_flags_fail_fast_with_a_clear_message(base_sam, cache_dir, tmp_path, extra, message):
    result = run(train_args(base_sam, cache_dir, tmp_path / "bad", "--synthetic_num_train", "2", *extra), check=False)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_missing_model_directory_fails_before_loading_data(cache_dir, tmp_path):
    result = run(train_args(tmp_path / "nowhere", cache_dir, tmp_path / "out"), check=False)
    assert result.returncode != 0 and "no such directory" in result.stderr
    assert "Generating" not in result.stderr


def test_a_folder_with_only_train_images_gets_a_held_out_validation_split(base_sam, cache_dir, tmp_path):
    data = write_image_mask_folder(tmp_path / "data", 20)
    result = run(
        train_args(base_sam, cache_dir, tmp_path / "out", "--dataset_name", str(data), "--max_train_steps", "2")
    )
    assert "held out 2 of the 20 'train' rows" in result.stderr
    skipped = json.loads((tmp_path / "out" / "metrics.json").read_text())["skipped_data"]
    assert (skipped["train"]["kept_images"], skipped["eval"]["kept_images"]) == (18, 2)


def test_a_split_without_usable_images_stops_after_the_data_check_with_its_summary(base_sam, cache_dir, tmp_path):
    data = write_image_mask_folder(tmp_path / "data", 4, empty_masks=True)
    args = train_args(base_sam, cache_dir, tmp_path / "out", "--dataset_name", str(data), "--eval_split", "train",
                      "--validation_split_percentage", "0")  # fmt: skip
    result = run(args, check=False)
    assert result.returncode != 0
    assert "Split 'train' has no usable image" in result.stderr
    assert "skipped 4 objects: empty_mask" in result.stderr and "Traceback" not in result.stderr
    assert "Caching" not in result.stderr and not (tmp_path / "out" / "checkpoints").exists()


def test_a_non_finite_loss_stops_the_run_naming_the_step_and_the_loss_terms(base_sam, cache_dir, tmp_path):
    # A learning rate this large makes every weight the optimizer touches huge after one step: the second loss is NaN.
    result = run(train_args(base_sam, cache_dir, tmp_path / "out", "--learning_rate", "1e30"), check=False)
    assert result.returncode != 0
    assert "the loss is not finite at step 2" in result.stderr
    assert "point_matching_loss=nan" in result.stderr and "pred_boundary_points" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_second_run_on_a_busy_output_dir_is_refused_and_deletes_nothing(base_sam, cache_dir, tmp_path):
    from sam_prompt_learner.run_lock import lock_directory

    output_dir = tmp_path / "busy"
    lock = lock_directory(output_dir)  # this test process plays the run in progress
    (output_dir / "model.safetensors").write_bytes(b"weights of the run in progress")
    result = run(train_args(base_sam, cache_dir, output_dir, "--overwrite_output_dir"), check=False)
    lock.close()
    assert result.returncode != 0
    assert f"is in use by another process (pid {os.getpid()} on" in result.stderr
    assert (output_dir / "model.safetensors").read_bytes() == b"weights of the run in progress"


def test_a_run_whose_training_only_hurts_delivers_the_zero_shot_model(cache_dir, tmp_path):
    # The embedded SAM answers boxes well zero-shot (a random tiny SAM scores near 0 however it is trained), and steps
    # this large wreck its mask decoder (the loss stays finite: gradients are clipped), so every evaluation after step
    # 0 is worse than zero-shot.
    base_sam = embedded_model_path()
    common = ["--trainable", "mask_decoder", "--learning_rate", "0.5", "--max_train_steps", "20", "--eval_steps", "10",
              "--prompt_modes", "box", "--eval_prompt_mode", "box"]  # fmt: skip
    run(train_args(base_sam, cache_dir, tmp_path / "best", *common))
    metrics = json.loads((tmp_path / "best" / "metrics.json").read_text())
    history = metrics["adapted"]["history"]
    assert max(point["mean_iou"] for point in history[1:]) < history[0]["mean_iou"], history
    assert metrics["delivered"]["step"] == 0 and "zero-shot" in metrics["delivered"]["reason"]
    assert metrics["adapted"]["predicted_iou"]["mean_iou"] == pytest.approx(
        metrics["zero_shot"]["predicted_iou"]["mean_iou"], abs=1e-6
    )
    base = load_file(base_sam / "model.safetensors")
    delivered = load_file(tmp_path / "best" / "model.safetensors")
    assert all(torch_equal(delivered[name], tensor) for name, tensor in base.items())

    run(train_args(base_sam, cache_dir, tmp_path / "last", *common, "--no-load_best_model_at_end"))
    metrics = json.loads((tmp_path / "last" / "metrics.json").read_text())
    assert metrics["delivered"]["step"] == 20 and metrics["settings"]["load_best_model_at_end"] is False
    assert metrics["adapted"]["predicted_iou"]["mean_iou"] < metrics["zero_shot"]["predicted_iou"]["mean_iou"]
    assert SamPromptLearnerModel.from_pretrained(tmp_path / "last" / "best_model") is not None


def torch_equal(a, b) -> bool:
    return bool((a == b).all())

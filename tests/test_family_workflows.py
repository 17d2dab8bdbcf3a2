"""The user workflows on SAM-HQ and SAM 2 checkpoints (tiny random ones): examples/train.py, `evaluate`, `predict`,
the trained-parts checkpoint and `pipeline("mask-generation")`, each reading the family from the config."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import tiny_sam2_config, tiny_sam_hq_config
from transformers import AutoModel, Sam2Model, SamHQModel, pipeline

from sam_prompt_learner import Sam2PromptLearnerModel, SamHQPromptLearnerModel, load_trained_parts
from sam_prompt_learner.cli import main

FAMILIES = {
    "sam_hq": (SamHQModel, SamHQPromptLearnerModel, tiny_sam_hq_config),
    "sam2": (Sam2Model, Sam2PromptLearnerModel, tiny_sam2_config),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def trained(request, tmp_path_factory):
    """(family name, prompt-learner class, base checkpoint, output directory of a short examples/train.py run)."""
    from test_train_script import ENV, SCRIPT, train_args

    base_class, model_class, config = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    base_class(config(initializer_range=0.2)).save_pretrained(root / "base")  # no processor: built from the config
    args = train_args(root / "base", root / "cache", root / "run", "--max_train_steps", "10", "--eval_steps", "10")
    args[args.index("--synthetic_num_train") + 1] = "8"
    args[args.index("--max_eval_samples") + 1] = "4"
    result = subprocess.run([sys.executable, str(SCRIPT), *args], env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return request.param, model_class, root / "base", root / "run"


def test_train_script_writes_the_family_checkpoint_and_its_small_parts(trained):
    name, model_class, base, output_dir = trained
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["completed_steps"] == 10 and metrics["adapted"]["predicted_iou"]["num_objects"] == 4
    model = AutoModel.from_pretrained(output_dir)
    assert type(model) is model_class and model.config.model_type == f"{name}_prompt_learner"
    small = load_trained_parts(output_dir / "trained_parts")
    assert type(small) is model_class
    state = model.state_dict()
    assert all(torch.equal(small.state_dict()[key], value) for key, value in state.items())
    # The prompt learner trained; the frozen encoder did not move.
    assert torch.count_nonzero(model.prompt_learner.out_proj.weight) > 0
    base_state = type(model).from_pretrained(base).state_dict()
    assert all(torch.equal(state[key], base_state[key]) for key in state if key.startswith("vision_encoder."))


def test_evaluate_and_predict_accept_the_checkpoint(trained, tmp_path, monkeypatch):
    name, _, _, output_dir = trained
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    report = tmp_path / "scores.json"
    args = ["evaluate", "--model", str(output_dir), "--dataset", "plates", "--split", "test", "--max_samples", "3",
            "--output", str(report)]  # fmt: skip
    assert main(args) == 0
    scores = json.loads(report.read_text())["scores"]["predicted_iou"]
    assert scores["num_objects"] == 3 and 0 <= scores["mean_iou"] <= 1

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 150, 3), dtype=np.uint8))
    image.save(tmp_path / "image.png")
    mask_path = tmp_path / "mask.png"
    args = ["predict", "--model", str(output_dir), "--image", str(tmp_path / "image.png"), "--point", "70,40",
            "--output", str(mask_path), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    with Image.open(mask_path) as mask:
        assert mask.size == (150, 90) and set(np.unique(np.asarray(mask))) <= {0, 255}


def test_mask_generation_pipeline_on_the_adapted_checkpoint(trained):
    _, model_class, _, output_dir = trained
    generator = pipeline("mask-generation", model=str(output_dir), device="cpu")
    assert type(generator.model) is model_class
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (96, 160, 3), dtype=np.uint8))
    result = generator(image, points_per_batch=16, points_per_crop=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    assert result["masks"] and all(mask.shape == (96, 160) and mask.dtype == bool for mask in result["masks"])
    assert len(result["scores"]) == len(result["masks"])


def test_a_sam2_checkpoints_square_resize_processor_is_replaced_by_the_matching_sam_frame(tmp_path):
    """SAM 2 checkpoints ship `Sam2ImageProcessor` settings (a square resize that needs torchvision); loading one
    gives this package's resize-longest-side-and-pad processor of the same size, which matches the model."""
    from sam_prompt_learner.processing import check_processor_matches_config, load_processor

    config = tiny_sam2_config()
    Sam2Model(config).save_pretrained(tmp_path)
    settings = {"image_processor_type": "Sam2ImageProcessorFast", "size": {"height": 128, "width": 128},
                "mask_size": {"height": 32, "width": 32}, "processor_class": "Sam2Processor"}  # fmt: skip
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(settings))
    processor = load_processor(str(tmp_path), config)
    assert processor.image_processor.size["longest_edge"] == 128
    assert processor.image_processor.pad_size["height"] == processor.image_processor.pad_size["width"] == 128
    check_processor_matches_config(processor, config)


# Runs in a fresh interpreter whose HF_HUB_CACHE is set before huggingface_hub reads it at import.
LOAD_SAM2_BY_ID = r"""
import json, sys
from sam_prompt_learner import load_for_inference
from sam_prompt_learner.training import load_model_and_processor, plan_trainable

model, processor = load_for_inference(sys.argv[1], device="cpu")
training_model, _ = load_model_and_processor(sys.argv[1], plan_trainable(["prompt_learner", "mask_decoder"]))
print(json.dumps({
    "inference": type(model).__name__,
    "training": type(training_model).__name__,
    "longest_edge": processor.image_processor.size["longest_edge"],
    "trainable": sorted({n.split(".")[0] for n, p in training_model.named_parameters() if p.requires_grad}),
}))
"""


def test_a_sam2_base_downloads_by_id_from_the_hub_cache(tmp_path):
    """`facebook/sam2.1-hiera-tiny`-style: a plain `sam2` checkpoint with SAM 2's own processor settings, read from
    the Hub cache by id (offline), loads into `Sam2PromptLearnerModel` for inference and for training."""
    import os

    from test_hub import write_hub_snapshot

    torch.manual_seed(0)
    Sam2Model(tiny_sam2_config()).save_pretrained(tmp_path / "checkpoint")
    settings = {"image_processor_type": "Sam2ImageProcessorFast", "size": {"height": 128, "width": 128},
                "mask_size": {"height": 32, "width": 32}, "processor_class": "Sam2Processor"}  # fmt: skip
    (tmp_path / "checkpoint" / "preprocessor_config.json").write_text(json.dumps(settings))
    files = {path.name: path.read_bytes() for path in (tmp_path / "checkpoint").iterdir()}
    write_hub_snapshot(tmp_path / "hub", "facebook/sam2.1-hiera-tiny", files)
    environment = os.environ | {
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    result = subprocess.run(
        [sys.executable, "-c", LOAD_SAM2_BY_ID, "facebook/sam2.1-hiera-tiny"],
        env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["inference"] == loaded["training"] == "Sam2PromptLearnerModel"
    assert loaded["longest_edge"] == 128
    assert loaded["trainable"] == ["mask_decoder", "prompt_learner"]

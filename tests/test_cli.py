import json

import pytest
from tiny import save_tiny_sam, write_image_mask_folder

from sam_prompt_learner import SamPromptLearnerModel
from sam_prompt_learner.cli import main


@pytest.fixture(scope="module")
def base_sam(tmp_path_factory):
    return save_tiny_sam(tmp_path_factory.mktemp("base-sam"))


def evaluate(model, output, *extra):
    args = ["evaluate", "--model", str(model), "--dataset", "plates", "--split", "test", "--max_samples", "6",
            "--output", str(output), *extra]  # fmt: skip
    assert main(args) == 0
    return json.loads(output.read_text())


def test_evaluate_scores_plain_and_adapted_checkpoints_on_identical_prompts(base_sam, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    plain = evaluate(base_sam, tmp_path / "plain.json", "--selections", "predicted_iou", "single", "oracle",
                     "--robustness_draws", "3")  # fmt: skip
    assert plain["split"] == "test" and plain["prompts"] == {"mode": "points", "point_placement": "uniform", "seed": 0}
    scores = plain["scores"]
    assert {"predicted_iou", "single", "oracle", "robustness"} <= scores.keys()
    assert scores["predicted_iou"]["num_objects"] == 6 and scores["robustness"]["num_objects"] == 6
    assert scores["oracle"]["mean_iou"] >= scores["predicted_iou"]["mean_iou"]
    assert scores["robustness"]["iou_std"] > 0  # different clicks give different masks

    # The same SAM saved as an adapted checkpoint with an untrained prompt learner scores exactly the same.
    SamPromptLearnerModel.from_pretrained(base_sam).save_pretrained(tmp_path / "adapted")
    adapted = evaluate(tmp_path / "adapted", tmp_path / "adapted.json")
    assert adapted["scores"]["predicted_iou"] == scores["predicted_iou"]
    assert adapted["scores"]["oracle"] == scores["oracle"]


def test_evaluate_reports_bad_input_clearly(base_sam, tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "missing"), "--dataset", "plates"]) == 2
    assert "error" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(base_sam), "--dataset", "plates", "--split", "dev"]) == 2
    assert "Split 'dev' not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", str(base_sam), "--dataset", "plates", "--batch_size", "0"])
    assert "--batch_size must be >= 1" in capsys.readouterr().err


def test_evaluate_on_a_folder_lists_its_splits_or_scores_the_rows_train_holds_out(base_sam, tmp_path, capsys):
    data = write_image_mask_folder(tmp_path / "data", 10)
    common = ["evaluate", "--model", str(base_sam), "--dataset", str(data), "--no-cache_embeddings"]
    assert main(common) == 2  # the default split is "test"
    assert "Split 'test' not found; the dataset has ['train']" in capsys.readouterr().err
    assert main([*common, "--split", "validation", "--output", str(tmp_path / "scores.json")]) == 0
    assert "held out 1 of the 10 'train' rows" in capsys.readouterr().err
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["split"] == "validation" and scores["scores"]["predicted_iou"]["num_objects"] == 1

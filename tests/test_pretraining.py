"""Pre-training (`sam_prompt_learner.pretraining`): prompt sampling, schedule, init, and resumable stages."""

import dataclasses
import importlib.util
import io
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, SamModel

from sam_prompt_learner import SamPromptLearnerModel, cli, processor_for_config
from sam_prompt_learner.data.masks import mask_to_box
from sam_prompt_learner.data.prompts import PromptConfig, prompt_rng, sample_object_prompts
from sam_prompt_learner.modeling_prompt_learner import POINT_PAD_LABEL
from sam_prompt_learner.pretraining import (
    PretrainingConfig,
    init_model,
    latest_state_dir,
    pretrain,
    recipe,
    runner,
    sampling,
    stored_config,
)
from sam_prompt_learner.pretraining.runner import resume_config
from sam_prompt_learner.pretraining.scenes import render_scenes

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


@pytest.fixture
def masks() -> torch.Tensor:
    """Four non-empty masks `(4, 24, 20)`: a rectangle, a single pixel, an L shape, and the full grid."""
    masks = torch.zeros(4, 24, 20, dtype=torch.bool)
    masks[0, 3:9, 5:16] = True
    masks[1, 20, 2] = True
    masks[2, 10:20, 4:6] = True
    masks[2, 18:20, 4:14] = True
    masks[3] = True
    return masks


def test_masks_to_boxes_matches_mask_to_box(masks):
    expected = np.stack([mask_to_box(mask.numpy()) for mask in masks])
    np.testing.assert_array_equal(sampling.masks_to_boxes(masks).numpy(), expected)


def test_sampled_pixels_lie_on_their_mask(masks):
    points = sampling.sample_mask_pixels(masks, 50, torch.Generator().manual_seed(0))  # (4, 50, 2) x, y
    assert points.shape == (4, 50, 2)
    x, y = points[..., 0].long(), points[..., 1].long()
    assert masks[torch.arange(4).unsqueeze(1), y, x].all()
    assert points[1].eq(torch.tensor([2.0, 20.0])).all()  # a one-pixel mask has one choice


def test_jittered_boxes_stay_ordered_inside_the_image_and_near_the_tight_box(masks):
    boxes = sampling.masks_to_boxes(masks).repeat(50, 1)  # (200, 4)
    jittered = sampling.jitter_boxes(boxes, 0.3, 24, torch.Generator().manual_seed(0))
    assert (jittered[:, :2] <= jittered[:, 2:]).all()
    assert (jittered >= 0).all() and (jittered <= 23).all()
    extent = (boxes[:, 2:] - boxes[:, :2] + 1).repeat(1, 2)
    assert ((jittered - boxes).abs() <= 0.3 * extent + 1e-5).all()
    assert not torch.equal(jittered, boxes)
    assert torch.equal(sampling.jitter_boxes(boxes, 0.0, 24, torch.Generator()), boxes)


def test_multi_clicks_are_positive_on_the_mask_negative_near_it_and_at_least_two(masks):
    generator = torch.Generator().manual_seed(0)
    repeated = masks.repeat(40, 1, 1)  # (160, 24, 20)
    points, labels = sampling.sample_multi_clicks(repeated, generator)
    assert points.shape == (160, 4, 2) and labels.shape == (160, 4)
    real = labels != POINT_PAD_LABEL
    assert (real.sum(1) >= 2).all()
    assert (labels[:, :3] != 0).all() and (labels[:, 3] != 1).all()  # positives first, the negative last
    x, y = points[..., 0].long(), points[..., 1].long()
    on_mask = repeated[torch.arange(160).unsqueeze(1), y, x]  # (160, 4)
    assert on_mask[labels == 1].all() and not on_mask[labels == 0].any()
    assert (points[~real] == 0).all()
    # The full-grid mask has no background nearby, so it never gets a negative click; the others sometimes do.
    assert not (labels[3::4] == 0).any() and (labels == 0).any()
    boxes = sampling.masks_to_boxes(repeated)
    margin = 0.2 * (boxes[:, 2:] - boxes[:, :2] + 1)
    negative = labels[:, 3] == 0
    assert (points[negative, 3] >= (boxes[negative, :2] - margin[negative])).all()
    assert (points[negative, 3] <= (boxes[negative, 2:] + margin[negative])).all()


def test_augment_moves_image_and_masks_together():
    generator = torch.Generator().manual_seed(0)
    image = torch.arange(3 * 8 * 8).view(3, 8, 8)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 1, 2] = True
    masks[1, 5:, :3] = True
    for _ in range(16):
        moved_image, moved_masks = sampling.augment(image, masks, generator)
        for original, moved in zip(masks, moved_masks, strict=True):
            # The marked pixels of each mask still carry the same image values.
            assert torch.equal(image[:, original].sort(dim=1).values, moved_image[:, moved].sort(dim=1).values)


def test_learning_rate_warms_up_stays_constant_then_cools_down_to_zero():
    constant = PretrainingConfig(warmup_steps=10)
    assert recipe.learning_rate_factor(0, constant) == pytest.approx(0.1)
    assert recipe.learning_rate_factor(9, constant) == recipe.learning_rate_factor(10_000, constant) == 1.0
    cooled = dataclasses.replace(constant, cooldown_start_step=100, cooldown_steps=50)
    factors = [recipe.learning_rate_factor(step, cooled) for step in range(100, 151)]
    assert factors[0] == 1.0 and factors[25] == pytest.approx(0.5) and factors[50] == 0.0
    assert all(a >= b for a, b in zip(factors, factors[1:], strict=False))
    assert cooled.final_step == 150 and constant.final_step is None


def test_curriculum_moves_from_the_first_task_to_the_mixture():
    config = PretrainingConfig(first_task_fraction_start=1.0, first_task_fraction_end=0.25, curriculum_steps=100)
    assert recipe.first_task_fraction(0, config) == 1.0
    assert recipe.first_task_fraction(50, config) == pytest.approx(0.625)
    assert recipe.first_task_fraction(100, config) == recipe.first_task_fraction(10**6, config) == 0.25


def test_iou_ranking_loss_is_zero_for_exact_predictions_and_penalises_a_wrong_order():
    actual = torch.tensor([[0.2, 0.9, 0.5]])
    assert recipe.iou_ranking_loss(actual.clone(), actual).item() == 0.0
    assert recipe.iou_ranking_loss(actual + 0.3, actual).item() == 0.0  # an offset keeps the order
    swapped = torch.tensor([[0.2, 0.5, 0.9]])  # predicts the third mask best
    assert recipe.iou_ranking_loss(swapped, actual).item() == pytest.approx(
        (0.4 + 0.8) / 2
    )  # gaps 0.7, 0.4 wanted; 0.3, -0.4 given


def tiny_config(**overrides) -> PretrainingConfig:
    """A 64 px model that trains a step in well under a second."""
    fields = dict(
        image_size=64, vision_hidden_size=32, vision_layers=1, vision_heads=2, decoder_hidden_size=32, batch_size=2,
        prompts_per_image=2, num_train=[6, 6], num_validation=2, warmup_steps=2, curriculum_steps=4,
        eval_every_steps=3, num_threads=1,
    )  # fmt: skip
    return PretrainingConfig(**{**fields, **overrides})


def test_positional_matrix_is_standard_normal_frozen_and_shared_with_the_prompt_encoder():
    model = init_model(tiny_config())
    matrix = model.shared_image_embedding.positional_embedding
    assert not matrix.requires_grad and matrix.abs().max() < 6  # the default has std hidden_size // 2 = 16
    assert model.prompt_encoder.shared_embedding.positional_embedding is matrix


def test_aligned_cross_attention_routes_a_point_to_its_location():
    """With equal orthonormal query/key projections, the positional encoding of a point scores highest against the
    image positions around it; with transformers' init it does not (what the from-scratch plateau has to learn)."""
    model = init_model(tiny_config(image_size=128, patch_size=8))
    image_pe = model.get_image_wide_positional_embeddings()[0]  # (C, E, E)
    size = image_pe.shape[-1]
    cells = torch.tensor([[2.5, 3.5], [11.5, 6.5], [8.5, 13.5]])  # (x, y) at cell centres of the E x E grid
    point_pe = model.prompt_encoder.shared_embedding(cells.view(1, 3, 2) / size)[0]  # (3, C)

    def peak_cells(attention) -> torch.Tensor:
        scores = attention.q_proj(point_pe) @ attention.k_proj(image_pe.flatten(1).T).T  # (3, E*E)
        index = scores.argmax(dim=1)
        return torch.stack([index % size, index // size], dim=1).float()

    attention = model.mask_decoder.transformer.layers[0].cross_attn_token_to_image
    assert (peak_cells(attention) - cells.floor()).abs().max() > 2  # transformers' init: unrelated peaks
    recipe.align_cross_attention(model, 2.0, torch.Generator().manual_seed(0))
    for layer in model.mask_decoder.transformer.layers:
        for attention in (layer.cross_attn_token_to_image, layer.cross_attn_image_to_token):
            assert torch.equal(attention.q_proj.weight, attention.k_proj.weight)
            assert not attention.q_proj.bias.any() and not attention.k_proj.bias.any()
            gram = attention.q_proj.weight @ attention.q_proj.weight.T
            assert torch.allclose(gram, 4.0 * torch.eye(len(gram)), atol=1e-5)  # orthonormal rows, times 2
    final = model.mask_decoder.transformer.final_attn_token_to_image
    assert torch.equal(final.q_proj.weight, final.k_proj.weight)
    assert (peak_cells(attention) - cells.floor()).abs().max() <= 1


def test_batches_follow_the_curriculum():
    config = tiny_config()
    banks = [recipe.Scenes(task, "train", 4, 64, 0) for task in config.tasks]
    banks[1].images.fill_(255)  # tell the banks' images apart: simple scenes are never all white
    generator = torch.Generator().manual_seed(0)
    for step, expected_first in ((0, 2), (4, 0)):  # fraction 1.0 at step 0, 0.25 of 2 images rounds to 0 at the end
        images, masks = recipe.sample_batch(banks, step, config, generator)
        assert images.shape == (2, 3, 64, 64) and masks.shape == (2, 6, 64, 64) and masks.flatten(2).any(2).all()
        assert int((images.flatten(1) != 255).any(1).sum()) == expected_first


def _weights(state_dir) -> dict[str, torch.Tensor]:
    return load_file(str(state_dir / "model.safetensors"))


def _logged_losses(caplog) -> dict[int, float]:
    lines = (re.match(r"step (\d+) loss ([\d.]+)", record.getMessage()) for record in caplog.records)
    return {int(line[1]): float(line[2]) for line in lines if line}


def test_a_stopped_and_resumed_run_reaches_the_weights_of_an_uninterrupted_one(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sam_prompt_learner")
    config = tiny_config(stop_after_steps=6, log_every=1)
    uninterrupted = pretrain(tmp_path / "whole", config)
    every_step = _logged_losses(caplog)
    pretrain(tmp_path / "staged", dataclasses.replace(config, stop_after_steps=2))
    assert latest_state_dir(tmp_path / "staged").name == "state-0000002"
    resumed = pretrain(tmp_path / "staged", stop_after_steps=4)
    caplog.clear()
    # A stage may change how it logs (threads too, but float sums then differ in the last bits). This one's single
    # line, at step 6, is the mean over the two steps it ran, not their sum over `log_every`.
    resumed = pretrain(tmp_path / "staged", stop_after_steps=6, log_every=3)
    assert _logged_losses(caplog) == {6: pytest.approx((every_step[5] + every_step[6]) / 2, abs=2e-4)}
    whole, staged = _weights(latest_state_dir(tmp_path / "whole")), _weights(latest_state_dir(tmp_path / "staged"))
    assert whole.keys() == staged.keys() and all(torch.equal(whole[key], staged[key]) for key in whole)
    other = pretrain(tmp_path / "other_seed", dataclasses.replace(config, seed=1))
    assert not torch.equal(_weights(latest_state_dir(tmp_path / "other_seed"))["mask_decoder.iou_token.weight"],
                           whole["mask_decoder.iou_token.weight"])  # fmt: skip
    # The evaluation history survives the stages: the cadence (3, 6) plus each stage's end (2, 4), once each, and the
    # scores of a step do not depend on the stages before it.
    assert [entry["step"] for entry in uninterrupted["history"]] == [3, 6] and other["step"] == 6
    assert [entry["step"] for entry in resumed["history"]] == [2, 3, 4, 6]
    assert resumed["history"][-1] == uninterrupted["history"][-1]
    assert [(stage["start_step"], stage["end_step"]) for stage in resumed["stages"]] == [(0, 2), (2, 4), (4, 6)]
    assert json.loads((tmp_path / "staged" / "history.json").read_text()) == resumed["history"]


def test_a_resumed_run_refuses_to_change_what_it_trains(tmp_path):
    pretrain(tmp_path / "run", tiny_config(stop_after_steps=1))
    with pytest.raises(ValueError, match=r"\['learning_rate'\]"):
        pretrain(tmp_path / "run", learning_rate=1.0, stop_after_steps=2)
    with pytest.raises(ValueError, match="resume it without a config"):
        pretrain(tmp_path / "run", tiny_config())
    stored = tiny_config()
    assert resume_config(stored, {"cooldown_start_step": 5, "cooldown_steps": 5}).final_step == 10


def test_a_branch_without_changes_trains_as_the_resumed_parent_and_records_its_origin(tmp_path):
    pretrain(tmp_path / "trunk", tiny_config(stop_after_steps=2))
    # The trunk's next save deletes this state: branch from a copy, as from one kept in git history.
    branch_point = shutil.copytree(latest_state_dir(tmp_path / "trunk"), tmp_path / "kept" / "state-0000002")
    resumed = pretrain(tmp_path / "trunk", cooldown_start_step=2, cooldown_steps=3)
    branch = pretrain(tmp_path / "branch", branch_from=branch_point, cooldown_start_step=2, cooldown_steps=3)
    trunk, branched = _weights(latest_state_dir(tmp_path / "trunk")), _weights(latest_state_dir(tmp_path / "branch"))
    assert all(torch.equal(trunk[key], branched[key]) for key in trunk)
    assert branch["history"] == resumed["history"] and branch["step"] == 5
    changed = {"cooldown_start_step": [None, 2], "cooldown_steps": [0, 3]}
    assert branch["branched_from"] == {"state": str(branch_point), "step": 2, "changed": changed}
    # Its best/ is the best of its own evaluations, never the parent's; its history starts with the parent's.
    own_best = max((entry for entry in branch["history"] if entry["step"] > 2), key=lambda e: e["selection_score"])
    assert json.loads((tmp_path / "branch" / "best" / "metrics.json").read_text())["step"] == own_best["step"]
    assert [entry["step"] for entry in json.loads((tmp_path / "branch" / "history.json").read_text())] == [2, 3, 5]
    # A branch resumes like any run, keeping where it came from.
    again = pretrain(tmp_path / "branch", stop_after_steps=5)
    assert again["branched_from"]["step"] == 2


def test_a_branch_may_change_the_recipe_not_the_geometry_and_never_overwrites_a_run(tmp_path):
    pretrain(tmp_path / "trunk", tiny_config(stop_after_steps=2))
    changed = pretrain(tmp_path / "heavier_iou", branch_from=tmp_path / "trunk", iou_loss_weight=4.0,
                       weight_decay=0.1, stop_after_steps=3)  # fmt: skip
    assert changed["config"]["iou_loss_weight"] == 4.0 and changed["step"] == 3
    assert set(changed["branched_from"]["changed"]) == {"iou_loss_weight", "weight_decay", "stop_after_steps"}
    pretrain(tmp_path / "plain", branch_from=tmp_path / "trunk", stop_after_steps=3)
    key = "mask_decoder.iou_prediction_head.proj_out.weight"
    assert not torch.equal(_weights(latest_state_dir(tmp_path / "heavier_iou"))[key],
                           _weights(latest_state_dir(tmp_path / "plain"))[key])  # fmt: skip
    with pytest.raises(ValueError, match=r"\['decoder_hidden_size'\]"):
        pretrain(tmp_path / "wider", branch_from=tmp_path / "trunk", decoder_hidden_size=64)
    with pytest.raises(ValueError, match="holds a run already"):
        pretrain(tmp_path / "plain", branch_from=tmp_path / "trunk")
    with pytest.raises(FileNotFoundError, match="neither a state folder"):
        pretrain(tmp_path / "orphan", branch_from=tmp_path / "missing")
    with pytest.raises(ValueError, match="pass only the changes"):
        pretrain(tmp_path / "configured", tiny_config(), branch_from=tmp_path / "trunk")


def test_the_cooldown_stage_ends_the_run_at_its_last_step(tmp_path):
    pretrain(tmp_path / "run", tiny_config(stop_after_steps=2))
    state = pretrain(tmp_path / "run", cooldown_start_step=2, cooldown_steps=3)
    assert state["step"] == 5 and state["history"][-1]["step"] == 5
    assert state["stages"][-1]["end_step"] == 5
    # A cooldown set to start before where the run stands is refused, for a stage and a branch alike, and the
    # refused branch leaves nothing behind; one already under way carries on.
    pretrain(tmp_path / "other", tiny_config(stop_after_steps=3))
    with pytest.raises(ValueError, match="before the step the run stands at, 3"):
        pretrain(tmp_path / "other", cooldown_start_step=2, cooldown_steps=3)
    with pytest.raises(ValueError, match="before the step the run stands at, 3"):
        pretrain(tmp_path / "branch", branch_from=tmp_path / "other", cooldown_start_step=1, cooldown_steps=3)
    assert not (tmp_path / "branch").exists()
    pretrain(tmp_path / "other", cooldown_start_step=3, cooldown_steps=3, stop_after_steps=4)
    assert pretrain(tmp_path / "other")["step"] == 6


def test_the_stored_config_outlives_the_state_folders(tmp_path):
    pretrain(tmp_path / "run", tiny_config(stop_after_steps=2))
    pretrain(tmp_path / "run", cooldown_start_step=2, cooldown_steps=1)
    assert stored_config(tmp_path / "run")["cooldown_start_step"] == 2
    # A committed cooldown branch keeps its last trainer_state.json, best/ and history.json, not the state folder;
    # its curves still mark where the cooldown began.
    state_dir = latest_state_dir(tmp_path / "run")
    shutil.move(state_dir / "trainer_state.json", tmp_path / "run" / "trainer_state.json")
    shutil.rmtree(state_dir)
    (tmp_path / "run" / "LATEST").unlink()
    assert stored_config(tmp_path / "run")["cooldown_start_step"] == 2
    assert stored_config(tmp_path / "missing") == {}


def test_a_partial_state_is_never_loaded(tmp_path):
    pretrain(tmp_path / "run", tiny_config(stop_after_steps=2))
    # A process killed while writing leaves a partial directory, which the next save replaces and nothing loads.
    (tmp_path / "run" / ".state-0000003.partial").mkdir()
    assert latest_state_dir(tmp_path / "run").name == "state-0000002"
    state = pretrain(tmp_path / "run", stop_after_steps=3)
    assert state["step"] == 3 and not list((tmp_path / "run").glob(".*partial"))
    assert sorted(path.name for path in (tmp_path / "run").glob("state-*")) == ["state-0000003"]


def test_best_is_a_plain_sam_checkpoint_every_class_loads(tmp_path):
    pretrain(tmp_path / "run", tiny_config(stop_after_steps=3))
    best = tmp_path / "run" / "best"
    assert json.loads((best / "config.json").read_text())["model_type"] == "sam"
    metrics = json.loads((best / "metrics.json").read_text())
    assert metrics["step"] == 3 and not math.isnan(metrics["generic_box"])
    for model_class in (SamModel, AutoModel, SamPromptLearnerModel):
        model = model_class.from_pretrained(best)
        assert isinstance(model, SamModel)
        assert torch.equal(model.mask_decoder.iou_token.weight, _weights(latest_state_dir(tmp_path / "run"))[
            "mask_decoder.iou_token.weight"])  # fmt: skip
    assert np.isfinite(metrics["selection_score"])


def test_evaluation_clicks_sit_where_their_placement_says_and_the_box_does_not_move():
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[:, 8:56, 8:56] = True  # a 48 px square: edge band 0.1 * 48 = 4.8 px

    def depth(point_placement: str) -> torch.Tensor:
        """Each click's distance in pixels to the square's nearest side `(3,)`; checks the clicks and boxes."""
        points, boxes = recipe.evaluation_prompts(masks, "img-0", point_placement)
        assert masks[0, points[:, 0, 1].long(), points[:, 0, 0].long()].all()
        assert torch.equal(boxes, torch.tensor([[8.0, 8.0, 55.0, 55.0]]).repeat(3, 1))
        return torch.minimum(points[:, 0] - 8, 55 - points[:, 0]).min(dim=1).values + 1

    assert torch.equal(
        recipe.evaluation_prompts(masks, "img-0")[0], recipe.evaluation_prompts(masks, "img-0", "interior")[0]
    )
    assert (depth("edge") <= 4.8).all() and (depth("interior") > 4.8).any()


def test_parts_are_the_objects_inside_a_larger_one():
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[0, :6, :6] = True  # a whole
    masks[1, 1:3, 1:3] = True  # its part
    masks[2, 5:8, 5:8] = True  # overlaps the whole, not inside it
    masks[3, 1:3, 1:3] = True  # the same region as the part: inside the whole too, not inside its twin
    inside = recipe.objects_inside(masks)
    assert inside.any(dim=1).tolist() == [False, True, False, True]
    assert inside[1].tolist() == [True, False, False, False]  # the part lies inside the whole only


def test_scenes_rendered_in_several_processes_are_the_serial_ones():
    requests = [("generic", "train", 5), ("simple", "validation", 1), ("generic", "test", 0)]
    for serial, parallel in zip([recipe.Scenes(*request, 64, 0) for request in requests],
                                render_scenes(requests, 64, 0, num_workers=2), strict=True):  # fmt: skip
        assert parallel.task == serial.task and parallel.sample_ids == serial.sample_ids
        assert torch.equal(parallel.images, serial.images) and torch.equal(parallel.masks, serial.masks)
        assert torch.equal(parallel.first_object, serial.first_object)
    generic, empty = recipe.Scenes(*requests[0], 64, 0), recipe.Scenes(*requests[2], 64, 0)
    assert len(generic.masks) > 5 and generic.images.shape == (5, 3, 64, 64)  # several objects per image
    assert empty.images.shape == (0, 3, 64, 64) and empty.masks.shape == (0, 64, 64) and len(empty) == 0


def test_a_script_without_a_main_guard_renders_in_one_process_with_a_warning(tmp_path):
    """Spawned workers re-run a script's top level; without `if __name__ == "__main__":` the pool breaks, and the
    scenes are rendered here instead of the run failing."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import logging, torch\n"
        "from sam_prompt_learner.pretraining.scenes import Scenes, render_scenes\n"
        "logging.basicConfig()\n"
        "scenes = render_scenes([('simple', 'train', 2)], 64, 0, num_workers=2)[0]\n"
        "assert torch.equal(scenes.images, Scenes('simple', 'train', 2, 64, 0).images)\n"
        "print('rendered', len(scenes))\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rendered 2" in result.stdout and "__main__" in result.stderr


def test_a_click_on_a_part_of_a_whole_is_flagged_on_the_whole():
    """The evaluation's click of a whole that lands on one of its parts is counted apart: the click alone cannot say
    whether the part or the whole is meant, so a wrong own choice there is not a wrong mask."""
    size = 64
    masks = torch.zeros(4, size, size, dtype=torch.bool)
    masks[0, 10:40, 10:40] = True  # image 0: a whole almost filled by its part, so its click lands on the part
    masks[1, 11:39, 11:39] = True
    masks[2, 10:40, 10:40] = True  # image 1: a whole with a small part in its corner, away from its click
    masks[3, 10:13, 10:13] = True
    scenes = object.__new__(recipe.Scenes)
    scenes.images = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    scenes.masks, scenes.first_object, scenes.sample_ids = masks, torch.tensor([0, 2, 4]), ["a", "b"]
    model = init_model(tiny_config())
    per_object = recipe.object_ious(model, scenes, processor_for_config(model.config))
    assert per_object["is_part"].tolist() == [False, True, False, True]
    assert per_object["click_on_part"].tolist() == [True, False, False, False]
    # The flag follows the click the evaluation draws (the same prompts as `sam-prompt-learner evaluate`).
    clicks = [sample_object_prompts(masks[index].numpy(), PromptConfig(point_placement="interior"),
                                    prompt_rng(sample_id, object_index)).points[0].astype(int)
              for index, (sample_id, object_index) in enumerate([("a", 0), ("a", 1), ("b", 0), ("b", 1)])]  # fmt: skip
    assert masks[1, clicks[0][1], clicks[0][0]] and not masks[3, clicks[2][1], clicks[2][0]]


def test_the_command_line_takes_config_fields_and_a_bf16_stage(tmp_path):
    spec = importlib.util.spec_from_file_location("pretrain_tiny_sam", EXAMPLES / "pretrain_tiny_sam.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    _, given = script.parse_args(["--output_dir", "x", "--num_train", "3", "4", "--bf16", "--learning_rate", "0.1"])
    assert given == {"num_train": [3, 4], "bf16": True, "learning_rate": 0.1}  # only what was given
    with pytest.raises(SystemExit):
        script.parse_args(["--output_dir", "x", "--num_train", "three"])
    with pytest.raises(SystemExit):
        script.parse_args(["--output_dir", "x", "--branch_from", "y", "--resume"])
    config = tiny_config(stop_after_steps=2)
    pretrain(tmp_path / "fp32", config)
    pretrain(tmp_path / "bf16", config)
    fp32 = pretrain(tmp_path / "fp32", stop_after_steps=3)
    bf16 = pretrain(tmp_path / "bf16", stop_after_steps=3, bf16=True)
    assert bf16["config"]["bf16"] and bf16["step"] == fp32["step"] == 3
    first, second = (_weights(latest_state_dir(tmp_path / run)) for run in ("fp32", "bf16"))
    key = "mask_decoder.iou_token.weight"
    assert torch.isfinite(second[key]).all() and not torch.equal(first[key], second[key])


def test_the_device_stage_script_packs_a_run_that_resumes_here(tmp_path):
    """`tools/device/pretrain_stage.sh` (a stage on a lent GPU), run on this CPU: the run comes back as tar parts in
    $OUT and, unpacked, continues with `--resume`; a second call on the same directory resumes instead of starting."""
    out, back = tmp_path / "out", tmp_path / "back"
    out.mkdir(), back.mkdir()
    config = tiny_config()
    flags = [f"--{name}={value}" for name in ("image_size", "vision_hidden_size", "vision_layers", "vision_heads",
             "decoder_hidden_size", "batch_size", "prompts_per_image", "num_validation", "warmup_steps",
             "curriculum_steps", "eval_every_steps") for value in [getattr(config, name)]]  # fmt: skip
    env = {**os.environ, "OUT": str(out), "PRETRAIN_DEVICE": "cpu", "PYTHON": sys.executable, "PRETRAIN_THREADS": "1",
           "WHEELS": str(tmp_path / "no-wheels")}  # fmt: skip
    script = ["bash", str(ROOT / "tools" / "device" / "pretrain_stage.sh"), str(tmp_path / "run" / "tiny")]
    subprocess.run([*script, "5", "--num_train", "6", "6", "--stop_after_steps", "2", *flags], cwd=ROOT, env=env,
                   check=True, capture_output=True)  # fmt: skip
    parts = sorted(out.glob("run.tar.part-*"))
    assert parts and all(part.stat().st_size <= 15 * 2**20 for part in parts)
    with tarfile.open(fileobj=io.BytesIO(b"".join(part.read_bytes() for part in parts))) as archive:
        archive.extractall(back, filter="data")
    assert latest_state_dir(back / "tiny").name == "state-0000002" and (back / "tiny" / "best").is_dir()
    assert len(list((back / "tiny").glob("log-cpu-*.txt"))) == 1
    assert pretrain(back / "tiny", stop_after_steps=3)["step"] == 3
    for part in parts:
        part.unlink()
    result = subprocess.run([*script, "5", "--stop_after_steps", "4"], cwd=ROOT, env=env, capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:]
    assert "resumed" in result.stdout and latest_state_dir(tmp_path / "run" / "tiny").name == "state-0000004"


def test_sigterm_stops_after_the_current_step_with_the_state_saved(tmp_path, monkeypatch):
    def step_then_terminate(model, banks, processor, step, config, generator):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return recipe.training_step(model, banks, processor, step, config, generator)

    monkeypatch.setattr(runner, "training_step", step_then_terminate)
    before = signal.getsignal(signal.SIGTERM)
    state = pretrain(tmp_path / "run", tiny_config(stop_after_steps=5))
    assert state["step"] == 2 and latest_state_dir(tmp_path / "run").name == "state-0000002"
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is only the run's
    monkeypatch.undo()
    assert pretrain(tmp_path / "run", stop_after_steps=3)["step"] == 3


def test_in_loop_scores_are_what_the_evaluate_command_reports(tmp_path):
    """The card's figures come from `evaluate`; `sam-prompt-learner evaluate` on the saved checkpoint must agree."""
    pretrain(tmp_path / "run", tiny_config(image_size=128, patch_size=16, stop_after_steps=6, warmup_steps=1))
    model = SamModel.from_pretrained(tmp_path / "run" / "best")
    scenes = recipe.Scenes("simple", "validation", 4, 128, 0)
    expected = recipe.evaluate(model, scenes, processor_for_config(model.config))
    reported = {}
    for mode, selections in (("points", ["predicted_iou", "oracle"]), ("box", ["single"])):
        output = tmp_path / f"{mode}.json"
        command = ["evaluate", "--model", str(tmp_path / "run" / "best"), "--dataset", "simple", "--split",
                   "validation", "--max_samples", "4", "--prompt_mode", mode, "--point_placement", "interior",
                   "--no-cache_embeddings", "--output", str(output), "--selections", *selections]  # fmt: skip
        assert cli.main(command) == 0
        reported[mode] = json.loads(output.read_text())["scores"]
    assert reported["points"]["predicted_iou"]["mean_iou"] == pytest.approx(expected["click_own"], abs=1e-6)
    assert reported["points"]["oracle"]["mean_iou"] == pytest.approx(expected["click_best_of_3"], abs=1e-6)
    assert reported["box"]["single"]["mean_iou"] == pytest.approx(expected["box"], abs=1e-6)
    assert expected["click_own"] > 0  # a model that predicts nothing would agree trivially
    # The per-object scores behind those means, with each object's area and whether it is a part, in split order.
    per_object = recipe.object_ious(model, scenes, processor_for_config(model.config))
    assert per_object["click_own"].mean().item() == pytest.approx(expected["click_own"], abs=1e-6)
    assert len(per_object["area"]) == len(per_object["is_part"]) == len(per_object["box"]) == len(scenes.masks)
    assert per_object["area"][0].item() == pytest.approx(scenes.object_masks(0)[0].float().mean().item())

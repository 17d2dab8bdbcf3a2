"""The training defaults that do not depend on a run: learning rates by what trains, and which step is delivered."""

import pytest

from sam_prompt_learner.training import (
    PART_LEARNING_RATES,
    TRAINABLE_CHOICES,
    delivery_decision,
    load_model_and_processor,
    parameter_groups,
    plan_trainable,
)


@pytest.mark.parametrize(
    "trainable",
    [["prompt_learner", "point_matching_head"], ["mask_decoder"], ["prompt_learner", "mask_decoder"], ["lora"]],
)
def test_each_trained_part_gets_its_own_learning_rate_unless_one_is_given(sam_checkpoint, trainable):
    model, _ = load_model_and_processor(sam_checkpoint, plan_trainable(trainable), lora_rank=4)
    groups = parameter_groups(model, weight_decay=0.01)
    rates = {group["name"]: group["lr"] for group in groups}
    expected_parts = set(trainable) if "lora" not in trainable else {"lora", "prompt_learner", "point_matching_head"}
    assert set(rates) == expected_parts
    assert rates == {part: PART_LEARNING_RATES[part] for part in rates}
    # Every trainable parameter is in exactly one group, and nothing frozen is.
    grouped = [id(p) for group in groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    assert all(group["weight_decay"] == 0.01 for group in groups)
    assert {group["lr"] for group in parameter_groups(model, learning_rate=5e-4)} == {5e-4}


def test_new_modules_learn_faster_than_pretrained_weights():
    assert set(PART_LEARNING_RATES) == set(TRAINABLE_CHOICES)  # every --trainable choice has a default
    assert PART_LEARNING_RATES["prompt_learner"] == PART_LEARNING_RATES["point_matching_head"]
    assert PART_LEARNING_RATES["prompt_learner"] > PART_LEARNING_RATES["mask_decoder"]
    assert PART_LEARNING_RATES["mask_decoder"] > PART_LEARNING_RATES["vision_encoder"]


def history(*scores):
    return [{"step": 10 * index, "mean_iou": score} for index, score in enumerate(scores)]


def test_delivery_names_the_step_and_why():
    hurt = delivery_decision(history(0.4, 0.3, 0.2), best_step=0, load_best=True)
    assert hurt["step"] == 0 and "base unchanged" in hurt["reason"] and "0.4000" in hurt["reason"]
    middle = delivery_decision(history(0.2, 0.5, 0.4), best_step=10, load_best=True)
    assert middle["step"] == 10 and "step 10" in middle["reason"] and "0.4000" in middle["reason"]
    last = delivery_decision(history(0.2, 0.3, 0.4), best_step=20, load_best=True)
    assert last["step"] == 20 and "last step" in last["reason"]
    off = delivery_decision(history(0.4, 0.3, 0.2), best_step=0, load_best=False)
    assert off["step"] == 20 and "--no-load_best_model_at_end" in off["reason"]

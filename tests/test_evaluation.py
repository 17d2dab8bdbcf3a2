"""Scoring: an image with many objects is scored a chunk of prompts at a time, with the scores of a single pass."""

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from PIL import Image
from tiny import tiny_config, tiny_sam2_config, tiny_sam_hq_config

from sam_prompt_learner import (
    PromptLearnerConfig,
    Sam2PromptLearnerConfig,
    Sam2PromptLearnerModel,
    SamHQPromptLearnerConfig,
    SamHQPromptLearnerModel,
    SamPromptLearnerModel,
)
from sam_prompt_learner.data import PromptConfig, encode_rle
from sam_prompt_learner.evaluation import collect_statistics
from sam_prompt_learner.processing import processor_for_config
from sam_prompt_learner.training import evaluation_collator


def many_objects_row(num_objects: int, seed: int = 0) -> dict:
    """A 96 x 120 image with `num_objects` 6 x 6 squares on a grid, one object each."""
    generator = np.random.default_rng(seed)
    masks = []
    for index in range(num_objects):
        mask = np.zeros((96, 120), dtype=bool)
        top, left = 8 * (index // 15), 8 * (index % 15)
        mask[top : top + 6, left : left + 6] = True
        masks.append(encode_rle(mask))
    image = Image.fromarray(generator.integers(0, 256, (96, 120, 3), dtype=np.uint8))
    return {"sample_id": f"many-{seed}", "image": image, "masks": masks}


@pytest.mark.parametrize("inputs", ["pixel_values", "image_embeddings"])
def test_many_objects_are_scored_in_chunks_with_the_scores_of_one_pass(inputs):
    torch.manual_seed(0)
    model = SamPromptLearnerModel(tiny_config(PromptLearnerConfig, initializer_range=0.2)).eval()
    processor = processor_for_config(model.config)
    collator = evaluation_collator(processor, PromptConfig(mode_weights={"points": 1.0}))
    rows = [many_objects_row(40, seed) for seed in range(2)]
    if inputs == "image_embeddings":
        for row in rows:
            pixel_values = processor(images=row["image"], return_tensors="pt")["pixel_values"]
            row["image_embeddings"] = model.get_image_embeddings(pixel_values)[0]
    batches = [collator(rows)]
    assert (inputs in batches[0]) and batches[0]["labels"].shape[1] == 40
    accelerator = Accelerator(cpu=True)

    prompts_per_pass, encoder_calls = [], []
    model.register_forward_pre_hook(
        lambda module, args, kwargs: prompts_per_pass.append(kwargs["input_points"].shape[1]), with_kwargs=True
    )
    model.vision_encoder.register_forward_pre_hook(lambda module, args: encoder_calls.append(1))
    selections = ("predicted_iou", "single", "oracle")
    chunked = collect_statistics(model, batches, accelerator, selections=selections, prompts_per_forward=16)
    assert prompts_per_pass == [16, 16, 16, 16, 8, 8]  # two passes (three masks, one mask) per chunk
    assert len(encoder_calls) == (1 if inputs == "pixel_values" else 0)  # the images are encoded once

    one_pass = collect_statistics(model, batches, accelerator, selections=selections, prompts_per_forward=1000)
    assert chunked["object_ids"] == one_pass["object_ids"] and len(one_pass["object_ids"]) == 80
    for name in selections:
        assert torch.equal(chunked[name], one_pass[name]), name
    assert chunked["predicted_iou"][:, 1].min() > 0  # real masks were scored


@pytest.mark.parametrize("family", ["sam_hq", "sam2"])
def test_chunked_scoring_from_pixels_encodes_once_for_every_family(family):
    """SAM-HQ's decoder also reads ViT features and SAM 2's two high-resolution maps: one encoding feeds all chunks."""
    torch.manual_seed(0)
    if family == "sam_hq":
        model = SamHQPromptLearnerModel(tiny_sam_hq_config(SamHQPromptLearnerConfig, initializer_range=0.2))
    else:
        model = Sam2PromptLearnerModel(tiny_sam2_config(Sam2PromptLearnerConfig))
    model.eval()
    processor = processor_for_config(model.config)
    collator = evaluation_collator(processor, PromptConfig(mode_weights={"points": 1.0}))
    batches = [collator([many_objects_row(40)])]
    accelerator = Accelerator(cpu=True)
    encoder_calls = []
    model.vision_encoder.register_forward_pre_hook(lambda module, args: encoder_calls.append(1))
    selections = ("predicted_iou", "oracle")
    chunked = collect_statistics(model, batches, accelerator, selections=selections, prompts_per_forward=16)
    assert len(encoder_calls) == 1
    one_pass = collect_statistics(model, batches, accelerator, selections=selections, prompts_per_forward=1000)
    for name in selections:
        assert torch.equal(chunked[name], one_pass[name]), name

"""Torchvision-free processing: NMS, mask-generation pipeline, auto-class registration, processor geometry."""

import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from tiny import IMAGE_SIZE, MASK_SIZE, tiny_config
from transformers import AutoImageProcessor, AutoProcessor, SamConfig, SamModel, SamProcessor, pipeline
from transformers.models.sam.image_processing_pil_sam import _mask_to_rle

from sam_prompt_learner import PromptLearnerConfig, SamPromptLearnerModel
from sam_prompt_learner.processing import (
    SamPromptLearnerImageProcessor,
    box_iou,
    check_processor_matches_config,
    nms,
    processor_for_config,
    register_processing,
)

# Non-square, so a transposed mask would have the wrong shape.
IMAGE_HEIGHT, IMAGE_WIDTH = 96, 160
MASK_GENERATION_KWARGS = dict(points_per_batch=8, points_per_crop=4, pred_iou_thresh=0, stability_score_thresh=0)


@pytest.fixture(scope="module", autouse=True)
def registered():
    # Twice: the package calls it at import, and users may call it again.
    register_processing()
    register_processing()


@pytest.fixture(scope="module")
def image():
    pixels = np.random.default_rng(0).integers(0, 256, size=(IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory):
    """A tiny random `SamModel` saved together with `processor_for_config`'s processor."""
    torch.manual_seed(0)
    config = tiny_config()
    directory = tmp_path_factory.mktemp("tiny_sam")
    SamModel(config).save_pretrained(directory)
    processor_for_config(config).save_pretrained(directory)
    return directory


def boxes_tensor(*boxes):
    return torch.tensor(boxes, dtype=torch.float32)


@pytest.mark.parametrize(
    ("boxes", "scores", "threshold", "expected_keep"),
    [
        # IoU(0, 1) = 81 / 119 = 0.68; box 2 is disjoint.
        ([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], [0.9, 0.8, 0.7], 0.5, [0, 2]),
        ([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], [0.9, 0.8, 0.7], 0.7, [0, 1, 2]),
        # Kept indices come by decreasing score, not by index.
        ([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], [0.1, 0.8, 0.9], 0.5, [2, 1]),
        # IoU exactly 0.5: suppressed only when strictly greater than the threshold.
        ([[0, 0, 2, 1], [0, 0, 1, 1]], [0.9, 0.8], 0.5, [0, 1]),
        ([[0, 0, 2, 1], [0, 0, 1, 1]], [0.9, 0.8], 0.49, [0]),
        # Greedy: 1 is suppressed by 0 (IoU 1/3), so 2 survives although IoU(1, 2) = 1/3 too.
        ([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]], [0.9, 0.8, 0.7], 0.3, [0, 2]),
        # Tied scores: the lower index wins, and comes first among equals.
        ([[30, 30, 40, 40], [0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.5, 0.5], 0.5, [0, 1]),
        # Degenerate (zero-area) identical boxes never suppress each other, as in torchvision.
        ([[3, 3, 3, 3], [3, 3, 3, 3]], [0.9, 0.8], 0.5, [0, 1]),
    ],
)
def test_nms_keeps_expected_indices(boxes, scores, threshold, expected_keep):
    keep = nms(boxes_tensor(*boxes), torch.tensor(scores), threshold)
    assert keep.dtype == torch.long
    assert keep.tolist() == expected_keep


def test_nms_of_no_boxes_is_empty():
    keep = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert keep.dtype == torch.long and keep.shape == (0,)


def test_box_iou_values():
    ious = box_iou(boxes_tensor([0, 0, 10, 10]), boxes_tensor([0, 0, 10, 10], [5, 0, 15, 10], [10, 10, 20, 20]))
    torch.testing.assert_close(ious, torch.tensor([[1.0, 1 / 3, 0.0]]))


coordinates = st.integers(min_value=0, max_value=20)


@settings(max_examples=50, deadline=None)
@given(
    # (corner x, corner y, opposite corner x, opposite corner y, score); few distinct scores, so ties are common.
    candidates=st.lists(
        st.tuples(coordinates, coordinates, coordinates, coordinates, st.sampled_from([0.1, 0.5, 0.9])),
        min_size=1,
        max_size=12,
    ),
    threshold=st.sampled_from([0.0, 0.3, 0.7]),
)
def test_nms_invariants(candidates, threshold):
    boxes = torch.tensor([[min(a, c), min(b, d), max(a, c), max(b, d)] for a, b, c, d, _ in candidates])
    scores = torch.tensor([score for *_, score in candidates])
    keep = nms(boxes, scores, threshold)
    kept_ious = box_iou(boxes[keep], boxes[keep]).fill_diagonal_(0)
    # No two kept boxes overlap beyond the threshold, and kept scores never increase.
    assert (kept_ious <= threshold).all()
    assert (scores[keep][1:] <= scores[keep][:-1]).all()
    # Every dropped box overlaps, beyond the threshold, a kept box scored at least as high.
    dropped = sorted(set(range(len(boxes))) - set(keep.tolist()))
    for index in dropped:
        ious = box_iou(boxes[index].unsqueeze(0), boxes[keep])[0]
        assert ((ious > threshold) & (scores[keep] >= scores[index])).any()


def test_post_process_for_mask_generation_format():
    masks = torch.zeros(3, 6, 5, dtype=torch.bool)  # (N, height, width)
    masks[0, 1:4, 1:3] = True
    masks[1, 1:4, 1:4] = True  # boxes (x0, y0, x1, y1) below: IoU with mask 0 is 2 / 4, a duplicate at 0.4
    masks[2, 5, 4] = True
    rle_masks = _mask_to_rle(masks)
    scores = torch.tensor([0.6, 0.9, 0.3])
    boxes = boxes_tensor([1, 1, 2, 3], [1, 1, 3, 3], [4, 5, 4, 5])

    out_masks, out_scores, out_rle, out_boxes = SamPromptLearnerImageProcessor().post_process_for_mask_generation(
        rle_masks, scores, boxes, crops_nms_thresh=0.4
    )

    assert [mask.dtype for mask in out_masks] == [np.dtype(bool)] * 2
    np.testing.assert_array_equal(np.stack(out_masks), masks[[1, 2]].numpy())
    torch.testing.assert_close(out_scores, torch.tensor([0.9, 0.3]))
    assert out_rle == [rle_masks[1], rle_masks[2]]
    torch.testing.assert_close(out_boxes, boxes[[1, 2]])


def check_mask_generation_output(output):
    masks = output["masks"]
    assert len(masks) > 0
    assert len(output["scores"]) == len(masks)
    for mask in masks:
        assert isinstance(mask, np.ndarray) and mask.dtype == bool
        assert mask.shape == (IMAGE_HEIGHT, IMAGE_WIDTH)


def test_pipeline_from_saved_sam_dir(sam_dir, image):
    generator = pipeline("mask-generation", model=str(sam_dir), device="cpu")
    assert type(generator.image_processor) is SamPromptLearnerImageProcessor
    check_mask_generation_output(generator(image, **MASK_GENERATION_KWARGS))


def test_pipeline_with_model_object_and_explicit_image_processor(image):
    torch.manual_seed(0)
    model = SamModel(tiny_config())
    image_processor = processor_for_config(model.config).image_processor
    generator = pipeline("mask-generation", model=model, image_processor=image_processor, device="cpu")
    check_mask_generation_output(generator(image, **MASK_GENERATION_KWARGS))


def test_pipeline_from_saved_prompt_learner_dir(tmp_path, image):
    torch.manual_seed(0)
    config = tiny_config(PromptLearnerConfig)
    SamPromptLearnerModel(config).save_pretrained(tmp_path)
    processor_for_config(config).save_pretrained(tmp_path)

    generator = pipeline("mask-generation", model=str(tmp_path), device="cpu")
    assert type(generator.model) is SamPromptLearnerModel
    assert type(generator.image_processor) is SamPromptLearnerImageProcessor
    check_mask_generation_output(generator(image, **MASK_GENERATION_KWARGS))


@pytest.mark.parametrize("config_class", [SamConfig, PromptLearnerConfig])
def test_auto_classes_reload_our_image_processor(tmp_path, config_class):
    config = tiny_config(config_class)
    config.save_pretrained(tmp_path)
    processor_for_config(config).save_pretrained(tmp_path)

    processor = AutoProcessor.from_pretrained(tmp_path)
    assert type(processor) is SamProcessor
    assert type(processor.image_processor) is SamPromptLearnerImageProcessor
    check_processor_matches_config(processor, config)
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is SamPromptLearnerImageProcessor


def test_auto_image_processor_from_model_type_alone(tmp_path):
    # A preprocessor config without `image_processor_type` falls back to the model type in config.json.
    tiny_config(PromptLearnerConfig).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text('{"size": {"longest_edge": 128}}')
    assert type(AutoImageProcessor.from_pretrained(tmp_path)) is SamPromptLearnerImageProcessor


@pytest.mark.parametrize(
    ("config", "image_size", "mask_size"),
    [(tiny_config(), IMAGE_SIZE, MASK_SIZE), (SamConfig(), 1024, 256), (tiny_config(image_size=256), 256, 64)],
)
def test_processor_for_config_geometry(config, image_size, mask_size):
    processor = processor_for_config(config)
    image_processor = processor.image_processor
    assert type(image_processor) is SamPromptLearnerImageProcessor
    assert image_processor.size["longest_edge"] == image_size == processor.target_size
    assert (image_processor.pad_size["height"], image_processor.pad_size["width"]) == (image_size, image_size)
    assert image_processor.mask_size["longest_edge"] == mask_size
    assert (image_processor.mask_pad_size["height"], image_processor.mask_pad_size["width"]) == (mask_size, mask_size)
    check_processor_matches_config(processor, config)
    check_processor_matches_config(image_processor, config)

    # The processed tensors have the model's input and mask-logit sizes.
    inputs = processor(
        images=Image.new("RGB", (IMAGE_WIDTH, IMAGE_HEIGHT)),
        segmentation_maps=Image.new("L", (IMAGE_WIDTH, IMAGE_HEIGHT)),
        return_tensors="pt",
    )
    assert inputs["pixel_values"].shape == (1, 3, image_size, image_size)
    assert inputs["labels"].shape[-2:] == (mask_size, mask_size)


def test_check_processor_names_mismatching_image_size():
    processor = processor_for_config(tiny_config())
    expected = "`size['longest_edge']` is 128, but the model config expects 256"
    with pytest.raises(ValueError, match=re.escape(expected)):
        check_processor_matches_config(processor, tiny_config(image_size=256))


def test_check_processor_names_mismatching_mask_pad_size():
    config = tiny_config()
    image_processor = processor_for_config(config).image_processor
    image_processor.mask_pad_size = {"height": 256, "width": 256}
    expected = f"`mask_pad_size['height']` is 256, but the model config expects {MASK_SIZE}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        check_processor_matches_config(image_processor, config)

"""Collation: SamProcessor's coordinate frame, masks in the padded frame, padding, sampling, determinism, inputs."""

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import IMAGE_SIZE, MASK_SIZE, tiny_config, tiny_image_processor
from transformers import SamModel, SamProcessor

from sam_prompt_learner.data import PromptConfig, SamPromptCollator, encode_rle, masks_to_padded_frame

POINTS_AND_BOX = {"points_and_box": 1.0}


def random_image(height, width, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def block(height, width, top, left, size) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def row(sample_id, masks, image=None, embeddings=None) -> dict:
    result = {"sample_id": sample_id, "masks": [encode_rle(mask) for mask in masks]}
    if image is not None:
        result["image"] = image
    if embeddings is not None:
        result["image_embeddings"] = embeddings
    return result


@pytest.fixture(scope="module")
def processor():
    return SamProcessor(tiny_image_processor())


@pytest.mark.parametrize(("height", "width"), [(96, 160), (160, 96), (50, 50), (300, 37)])
def test_coordinates_and_pixels_match_sam_processor(processor, height, width):
    image = random_image(height, width)
    # A single-pixel object: its only positive point and its box corners are that pixel, known in advance.
    x, y = width * 2 // 3, height // 3
    mask = np.zeros((height, width), dtype=bool)
    mask[y, x] = True
    collator = SamPromptCollator(processor, PromptConfig(mode_weights=POINTS_AND_BOX), training=False)
    batch = collator([row("a", [mask], image=image)])
    expected = processor(
        images=image, input_points=[[[[x, y]]]], input_labels=[[[1]]], input_boxes=[[[x, y, x, y]]], return_tensors="pt"
    )
    torch.testing.assert_close(batch["input_points"], expected["input_points"].float())
    torch.testing.assert_close(batch["input_boxes"], expected["input_boxes"].float())
    torch.testing.assert_close(batch["pixel_values"], expected["pixel_values"])
    torch.testing.assert_close(batch["original_sizes"], expected["original_sizes"])
    torch.testing.assert_close(batch["reshaped_input_sizes"], expected["reshaped_input_sizes"])


@pytest.mark.parametrize(("height", "width"), [(96, 160), (160, 96), (300, 37)])
@pytest.mark.parametrize("mask_size", [MASK_SIZE, IMAGE_SIZE])
def test_mask_pixel_lands_under_its_point_in_the_padded_frame(processor, height, width, mask_size):
    # A click at a known pixel inside an object large enough to survive the resize and the 4x area reduction.
    x, y = width // 2, height // 2
    mask = block(height, width, top=y - 6, left=x - 6, size=13)
    collator = SamPromptCollator(processor, PromptConfig(), training=False, mask_size=mask_size)
    labels = collator([row("a", [mask], image=random_image(height, width))])["labels"][0, 0]
    assert labels.shape == (mask_size, mask_size)
    point_x, point_y = processor(images=random_image(height, width), input_points=[[[[x, y]]]])["input_points"][
        0, 0, 0
    ].tolist()
    # SAM's prompt encoder reads a point at the pixel centre (+0.5).
    scale = mask_size / IMAGE_SIZE
    assert labels[int((point_y + 0.5) * scale), int((point_x + 0.5) * scale)] == 1
    # The object's extent in the frame is the original extent scaled, up to a pixel of resampling.
    rows, columns = torch.nonzero(labels, as_tuple=True)
    frame_scale = (
        torch.tensor(collator.reshaped_size((height, width)), dtype=torch.float64)
        / torch.tensor([height, width])
        * scale
    )
    for found, start, end, axis_scale in (
        (rows, y - 6, y + 7, frame_scale[0]),
        (columns, x - 6, x + 7, frame_scale[1]),
    ):
        assert abs(found.min().item() - start * axis_scale) <= 1
        assert abs(found.max().item() + 1 - end * axis_scale) <= 1


def test_masks_to_padded_frame_is_exact_at_full_resolution_and_area_thresholded_below():
    # 40 x 80 image -> reshaped 64 x 128 in a 128 frame (scale 1.6).
    mask = np.zeros((1, 40, 80), dtype=bool)
    mask[0, 10:20, 40:60] = True
    full = masks_to_padded_frame(mask, (64, 128), image_size=128, mask_size=128)[0]
    rows, columns = torch.nonzero(full, as_tuple=True)
    # Frame pixel j samples original pixel floor((j + 0.5) / 1.6): rows 16..31, columns 64..95.
    assert (rows.min().item(), rows.max().item(), columns.min().item(), columns.max().item()) == (16, 31, 64, 95)
    low = masks_to_padded_frame(mask, (64, 128), image_size=128, mask_size=32)[0]
    expected = torch.nn.functional.avg_pool2d(full[None, None], 4)[0, 0] >= 0.5
    torch.testing.assert_close(low, expected.float())
    assert low.sum() == 4 * 8  # rows 16..31 -> 4..7, columns 64..95 -> 16..23


def test_padding_validity_and_object_sampling(processor):
    config = PromptConfig(mode_weights=POINTS_AND_BOX, num_positive_points=(1, 3), num_negative_points=(0, 2))
    first = [block(40, 60, 2 + 9 * index, 5, 8) for index in range(4)]
    second = [block(50, 30, 10, 10, 12)]
    rows = [row("a", first, image=random_image(40, 60)), row("b", second, image=random_image(50, 30))]
    torch.manual_seed(0)
    batch = SamPromptCollator(processor, config, max_objects_per_image=3)(rows)

    assert batch["input_points"].shape[:2] == batch["input_labels"].shape[:2] == (2, 3)
    assert batch["input_boxes"].shape == (2, 3, 4)
    assert batch["labels"].shape == (2, 3, MASK_SIZE, MASK_SIZE)
    assert batch["prompt_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert batch["sample_ids"] == ["a", "b"]
    # Three of the four objects, distinct; the padding prompts point at no object.
    chosen = batch["object_indices"][0].tolist()
    assert len(set(chosen)) == 3 and set(chosen) <= {0, 1, 2, 3}
    assert batch["object_indices"][1].tolist() == [0, -1, -1]
    # Padded points: label -10 with coordinates 0; real points are 1 or 0 and come first.
    labels = batch["input_labels"]
    padded = labels == -10
    assert (batch["input_points"][padded] == 0).all()
    assert padded[1, 1:].all() and (batch["labels"][1, 1:] == 0).all() and (batch["input_boxes"][1, 1:] == 0).all()
    real_counts = (~padded).sum(-1)[batch["prompt_mask"]]
    assert ((real_counts >= 1) & (real_counts <= 5)).all()
    assert labels.shape[-1] == real_counts.max()
    for image_index, prompt_index in batch["prompt_mask"].nonzero().tolist():
        prompt_labels = labels[image_index, prompt_index]
        count = int((prompt_labels != -10).sum())
        assert (prompt_labels[count:] == -10).all() and prompt_labels[0] == 1
    # Each label mask is the chosen object's.
    for prompt_index, object_index in enumerate(chosen):
        reshaped = tuple(batch["reshaped_input_sizes"][0].tolist())
        expected = masks_to_padded_frame(first[object_index][None], reshaped, IMAGE_SIZE, MASK_SIZE)[0]
        torch.testing.assert_close(batch["labels"][0, prompt_index], expected)


def test_prompt_modes_choose_the_tensors(processor):
    rows = [row("a", [block(32, 32, 4, 4, 10)], image=random_image(32, 32))]
    points = SamPromptCollator(processor, PromptConfig(mode_weights={"points": 1.0}), training=False)(rows)
    boxes = SamPromptCollator(processor, PromptConfig(mode_weights={"box": 1.0}), training=False)(rows)
    both = SamPromptCollator(processor, PromptConfig(mode_weights=POINTS_AND_BOX), training=False)(rows)
    assert "input_boxes" not in points and {"input_points", "input_labels"} <= set(points)
    assert "input_points" not in boxes and "input_labels" not in boxes and "input_boxes" in boxes
    # An object's prompts do not depend on the mode.
    torch.testing.assert_close(both["input_points"], points["input_points"])
    torch.testing.assert_close(both["input_boxes"], boxes["input_boxes"])
    with pytest.raises(ValueError, match="one prompt mode"):
        SamPromptCollator(processor, PromptConfig(mode_weights={"points": 1.0, "box": 1.0}), training=False)


def test_evaluation_batches_are_deterministic_and_independent_of_batch_composition(processor):
    config = PromptConfig(mode_weights=POINTS_AND_BOX, num_positive_points=(1, 4), box_jitter=0.1)
    image = random_image(48, 64)
    target = row("target", [block(48, 64, 5, 5, 20), block(48, 64, 25, 30, 15)], image=image)
    other = row("other", [block(48, 64, 2, 2, 30)] * 3, image=image)
    collator = SamPromptCollator(processor, config, training=False)
    torch.manual_seed(0)
    alone = collator([target])
    torch.manual_seed(1)
    together = collator([other, target])
    points = alone["input_points"].shape[2]
    torch.testing.assert_close(together["input_points"][1, :2, :points], alone["input_points"][0])
    torch.testing.assert_close(together["input_boxes"][1, :2], alone["input_boxes"][0])
    assert together["object_indices"][1].tolist() == [0, 1, -1]  # the first objects, in order


def test_training_batches_depend_only_on_seed_epoch_and_samples(processor):
    config = PromptConfig(mode_weights={"points": 1.0, "box": 1.0}, num_positive_points=(1, 4), box_jitter=0.2)
    rows = [row("a", [block(64, 64, 8 * index, 8 * index, 12) for index in range(6)], image=random_image(64, 64))]
    collator = SamPromptCollator(processor, config, max_objects_per_image=2, seed=3)
    torch.manual_seed(0)
    first = collator(rows)
    torch.manual_seed(1)  # global RNG state is irrelevant: a resumed run must see the same prompts
    again = SamPromptCollator(processor, config, max_objects_per_image=2, seed=3)(rows)
    assert first.keys() == again.keys()
    for key in ("input_points", "input_boxes", "object_indices", "labels"):
        if key in first:
            torch.testing.assert_close(first[key], again[key])
    draws = set()
    for epoch in range(20):
        collator.set_epoch(epoch)
        draws.add(tuple(collator(rows)["object_indices"][0].tolist()))
    assert len(draws) > 1


def test_image_embeddings_rows_skip_pixels(processor):
    embeddings = np.random.default_rng(0).standard_normal((32, 8, 8)).astype(np.float16)
    rows = [row("a", [block(96, 160, 40, 70, 20)], embeddings=embeddings)]
    batch = SamPromptCollator(processor, PromptConfig(), training=False)(rows)
    assert "pixel_values" not in batch
    assert batch["image_embeddings"].dtype == torch.float32
    torch.testing.assert_close(batch["image_embeddings"][0], torch.from_numpy(embeddings).float())
    assert batch["original_sizes"].tolist() == [[96, 160]] and batch["reshaped_input_sizes"].tolist() == [[77, 128]]
    # Forcing pixels on a row without an image is an error, not a silent fallback.
    with pytest.raises(ValueError, match="'a' has no 'image'"):
        SamPromptCollator(processor, PromptConfig(), training=False, use_image_embeddings=False)(rows)


def test_batch_feeds_sam_and_labels_match_mask_logits(processor):
    torch.manual_seed(0)
    model = SamModel(tiny_config()).eval()
    rows = [
        row("a", [block(96, 160, 40, 70, 20), block(96, 160, 5, 5, 10)], image=random_image(96, 160)),
        row("b", [block(60, 60, 10, 10, 30)], image=random_image(60, 60)),
    ]
    batch = SamPromptCollator(processor, PromptConfig(mode_weights=POINTS_AND_BOX), training=False)(rows)
    model_inputs = {key: batch[key] for key in ("pixel_values", "input_points", "input_labels", "input_boxes")}
    with torch.no_grad():
        outputs = model(**model_inputs, multimask_output=False)
    assert outputs.pred_masks.shape == (2, 2, 1, MASK_SIZE, MASK_SIZE)
    assert outputs.pred_masks[:, :, 0].shape == batch["labels"].shape
    assert torch.isfinite(outputs.pred_masks).all()


def test_row_without_objects_is_rejected(processor):
    with pytest.raises(ValueError, match="'empty' has no object"):
        SamPromptCollator(processor, PromptConfig())([{"sample_id": "empty", "masks": [], "image": random_image(8, 8)}])

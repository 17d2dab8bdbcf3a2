"""The embedded synthetic task suite: schema, determinism, annotation consistency and each scenario's ambiguity."""

import hashlib

import numpy as np
import pytest
from scipy import ndimage

from sam_prompt_learner.data.masks import decode_rle, mask_to_box
from sam_prompt_learner.data.synthetic import (
    IMAGE_ID_STRIDE,
    SPLITS,
    SYNTHETIC_FEATURES,
    SYNTHETIC_TASKS,
    generate_scene,
    load_synthetic_task,
)

SIZES = {"num_train": 6, "num_validation": 3, "num_test": 3}
TARGET_CATEGORIES = {"face_parts": {"skin"}, "banners": {"banner"}, "plates": {"licence_plate"}}


@pytest.fixture(scope="module", params=sorted(SYNTHETIC_TASKS))
def task(request):
    return request.param, load_synthetic_task(request.param, **SIZES)


def _image_digests(split):
    return [hashlib.sha256(image.tobytes()).hexdigest() for image in split["image"]]


def _scenes(name, count, split="train"):
    return [generate_scene(name, split=split, index=index) for index in range(count)]


def test_schema_and_splits(task):
    name, dataset = task
    assert list(dataset) == list(SPLITS)
    assert [dataset[split].num_rows for split in SPLITS] == [6, 3, 3]
    image_ids = []
    object_ids = []
    for split in SPLITS:
        assert dataset[split].features == SYNTHETIC_FEATURES
        assert set(dataset[split]["task"]) == {name}
        for image in dataset[split]["image"]:
            assert image.mode == "RGB" and image.size == (128, 128) and image.format == "PNG"
        image_ids += dataset[split]["image_id"]
        object_ids += [obj["id"] for objects in dataset[split]["objects"] for obj in objects]
    assert len(set(image_ids)) == len(image_ids)
    assert len(set(object_ids)) == len(object_ids)
    # Row i of a split has id split_index * IMAGE_ID_STRIDE + i, whatever the other splits' sizes.
    assert dataset["validation"]["image_id"] == [IMAGE_ID_STRIDE + index for index in range(3)]


def test_masks_non_empty_and_boxes_match(task):
    name, dataset = task
    for split in SPLITS:
        for row in dataset[split]:
            assert len(row["objects"]) >= 1, f"{name} image {row['image_id']} has no object"
            for obj in row["objects"]:
                mask = decode_rle(obj["segmentation"])
                assert mask.shape == (128, 128) and mask.any()
                x_min, y_min, x_max, y_max = mask_to_box(mask)
                assert obj["bbox"] == [x_min, y_min, x_max - x_min + 1, y_max - y_min + 1]
                if name in TARGET_CATEGORIES:
                    assert obj["category"] in TARGET_CATEGORIES[name]


def test_splits_are_disjoint(task):
    _, dataset = task
    digests = [_image_digests(dataset[split]) for split in SPLITS]
    all_digests = [digest for split_digests in digests for digest in split_digests]
    # No image repeats, within a split or across splits.
    assert len(set(all_digests)) == len(all_digests) == sum(dataset[split].num_rows for split in SPLITS)


def test_rows_match_generate_scene(task):
    name, dataset = task
    row = dataset["test"][2]
    scene = generate_scene(name, split="test", index=2)
    np.testing.assert_array_equal(np.asarray(row["image"]), scene.image)
    assert [obj["category"] for obj in row["objects"]] == [obj.category for obj in scene.objects]
    for obj, scene_object in zip(row["objects"], scene.objects, strict=True):
        np.testing.assert_array_equal(decode_rle(obj["segmentation"]), scene_object.mask)


def test_deterministic_and_fingerprinted():
    first = load_synthetic_task("plates", **SIZES)
    again = load_synthetic_task("plates", **SIZES)
    other_seed = load_synthetic_task("plates", **SIZES, seed=1)
    for split in SPLITS:
        assert first[split]._fingerprint == again[split]._fingerprint
        assert first[split]._fingerprint != other_seed[split]._fingerprint
        assert [image["bytes"] for image in first[split].data.column("image").to_pylist()] == [
            image["bytes"] for image in again[split].data.column("image").to_pylist()
        ]
        assert first[split]["objects"] == again[split]["objects"]
        assert not set(_image_digests(first[split])) & set(_image_digests(other_seed[split]))


def test_rows_do_not_depend_on_split_sizes():
    small = load_synthetic_task("banners", num_train=1, num_validation=2, num_test=0)
    large = load_synthetic_task("banners", num_train=4, num_validation=2, num_test=0)
    assert _image_digests(small["validation"]) == _image_digests(large["validation"])
    assert small["validation"]["objects"] == large["validation"]["objects"]
    assert small["test"].num_rows == 0


def test_other_image_size():
    dataset = load_synthetic_task("face_parts", image_size=96, num_train=2, num_validation=0, num_test=0)
    row = dataset["train"][0]
    assert row["image"].size == (96, 96)
    assert decode_rle(row["objects"][0]["segmentation"]).shape == (96, 96)


def test_generic_has_nested_parts_and_varied_shapes():
    scenes = _scenes("generic", 12)
    nested = 0
    for scene in scenes:
        masks = [obj.mask for obj in scene.objects]
        nested += sum(
            1
            for inner in masks
            for outer in masks
            if inner is not outer and not (inner & ~outer).any() and inner.sum() < outer.sum()
        )
    assert nested >= 3
    categories = {obj.category for scene in scenes for obj in scene.objects}
    assert len(categories) >= 5
    assert max(len(scene.objects) for scene in scenes) >= 4


def test_simple_scenes_are_one_to_three_plain_disjoint_shapes_of_one_colour_each():
    scenes = _scenes("simple", 30)
    counts = [len(scene.objects) for scene in scenes]
    assert min(counts) >= 1 and max(counts) == 3
    assert {obj.category for scene in scenes for obj in scene.objects} == {"ellipse", "rectangle", "triangle", "blob"}
    for scene in scenes:
        masks = np.stack([obj.mask for obj in scene.objects])
        assert (masks.sum(0) <= 1).all()  # visible parts: occlusion leaves no overlap
        for obj in scene.objects:
            interior = ndimage.binary_erosion(obj.mask, iterations=2)
            colours = scene.image[interior].astype(int)
            assert np.abs(colours - np.median(colours, axis=0)).max() <= 25  # one fill, up to the sensor noise


def test_face_skin_excludes_and_touches_the_other_parts():
    touches_hair = 0
    for scene in _scenes("face_parts", 8):
        (skin,) = (obj.mask for obj in scene.objects)
        neighbours = {name: scene.distractors[name] for name in ("hair", "brows", "eyes", "mouth", "ears", "neck")}
        grown = ndimage.binary_dilation(skin)
        for name, mask in neighbours.items():
            assert not (skin & mask).any(), f"skin overlaps {name}"
        # The eyes and mouth are holes in the skin: a click near their edge invites them.
        assert (grown & neighbours["eyes"]).any() and (grown & neighbours["mouth"]).any()
        enclosed = ndimage.binary_fill_holes(skin)
        assert (enclosed & neighbours["eyes"]).sum() >= 0.9 * neighbours["eyes"].sum()
        touches_hair += bool((grown & neighbours["hair"]).any())
    assert touches_hair >= 5


def test_banners_are_thin_and_hold_their_text():
    for scene in _scenes("banners", 8):
        text = scene.distractors["text"]
        banners = np.zeros_like(text)
        for obj in scene.objects:
            # Principal axes of the banner's pixels: length over thickness.
            coordinates = np.argwhere(obj.mask).astype(float)
            variances = np.linalg.eigvalsh(np.cov(coordinates.T))
            assert np.sqrt(variances[1] / variances[0]) >= 2.5
            banners |= obj.mask
        assert text.any() and not (text & ~banners).any()
        assert not (scene.distractors["post"] & banners).any()


def test_plate_holds_its_characters():
    for scene in _scenes("plates", 8):
        (plate,) = (obj.mask for obj in scene.objects)
        characters = scene.distractors["characters"]
        assert characters.any() and not (characters & ~plate).any()
        assert characters.sum() < 0.6 * plate.sum()
        # The plate is small against the car around it, and touches it.
        assert plate.sum() < 0.1 * plate.size
        assert (ndimage.binary_dilation(plate) & (scene.distractors["bumper"] | scene.distractors["body"])).any()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"name": "cars"}, "Unknown synthetic task"),
        ({"name": "plates", "image_size": 32}, "image_size"),
        ({"name": "plates", "num_train": -1}, "num_train"),
        ({"name": "plates", "seed": -3}, "seed"),
    ],
)
def test_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        load_synthetic_task(**arguments)

"""Mask codecs, annotation-format detection and decoding, bad-input handling, normalization, local folders."""

import io

import datasets
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from transformers.models.sam.image_processing_pil_sam import _mask_to_rle

from sam_prompt_learner.data import (
    AnnotationFormat,
    AnnotationSpec,
    decode_example,
    decode_rle,
    detect_annotation_spec,
    encode_rle,
    load_image_mask_folder,
    mask_to_box,
    polygons_to_mask,
    prepare_dataset,
    to_rgb,
)

HEIGHT, WIDTH = 24, 32


def compress_counts(counts: list[int]) -> str:
    """pycocotools' `rleToString`, written independently of the decoder under test."""
    characters = []
    for index, count in enumerate(counts):
        value = count - counts[index - 2] if index > 2 else count
        more = True
        while more:
            group = value & 0x1F
            value >>= 5
            more = value != -1 if group & 0x10 else value != 0
            characters.append(chr(group + (0x20 if more else 0) + 48))
    return "".join(characters)


def random_image(height=HEIGHT, width=WIDTH, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def rectangle(top, left, bottom, right, height=HEIGHT, width=WIDTH) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def square_polygon(top, left, bottom, right) -> list[list[float]]:
    """COCO polygon whose PIL rasterization (outline included) is `rectangle(top, left, bottom, right)`."""
    return [[left, top, right - 1, top, right - 1, bottom - 1, left, bottom - 1]]


def decoded_masks(normalized) -> list[list[np.ndarray]]:
    return [[decode_rle(rle) for rle in row] for row in normalized["masks"]]


# ----------------------------------------------------------------------------------------------------------------
# masks.py
# ----------------------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 9), st.integers(1, 9))))
def test_rle_round_trip_and_matches_transformers_and_compressed(mask):
    rle = encode_rle(mask)
    assert rle["size"] == list(mask.shape)
    assert sum(rle["counts"]) == mask.size
    assert rle["counts"] == _mask_to_rle(torch.from_numpy(mask)[None])[0]["counts"]
    np.testing.assert_array_equal(decode_rle(rle), mask)
    compressed = {"size": rle["size"], "counts": compress_counts(rle["counts"])}
    np.testing.assert_array_equal(decode_rle(compressed), mask)
    np.testing.assert_array_equal(decode_rle({**compressed, "counts": compressed["counts"].encode()}), mask)


def test_rle_is_column_major_and_starts_with_zeros():
    mask = np.array([[1, 0, 0], [1, 1, 0]], dtype=bool)  # columns: [1, 1], [0, 1], [0, 0]
    assert encode_rle(mask) == {"size": [2, 3], "counts": [0, 2, 1, 1, 2]}


def test_compressed_rle_hand_computed():
    # Runs 1, 2, 3 are stored as themselves ('1', '2', '3'); the fourth run (1) as its difference to the second
    # (1 - 2 = -1): low 5 bits 31, sign bit set, no continuation -> chr(31 + 48) = 'O'.
    np.testing.assert_array_equal(decode_rle({"size": [7, 1], "counts": "123O"})[:, 0], [0, 1, 1, 0, 0, 0, 1])
    # 100 = 4 + 3 * 32: first group 4 with the continuation bit (36 + 48 = 'T'), then 3 ('3').
    assert decode_rle({"size": [10, 10], "counts": "T3"}).sum() == 0


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ({"size": [2, 2], "counts": [1, 2]}, "sum to 3"),
        ({"size": [2, 2], "counts": [5, -1]}, "negative"),
        ({"size": [2, 2], "counts": [1.5, 2.5]}, "list of ints"),
        ({"size": [2, 2], "counts": 4}, "list of ints"),
        ({"size": [2], "counts": [4]}, "size"),
        ({"counts": [4]}, "'size' and 'counts'"),
        ({"size": [2, 2], "counts": "T"}, "ends in the middle"),
        ({"size": [2, 2], "counts": "1 "}, "Invalid character"),
    ],
)
def test_bad_rle_raises(rle, message):
    with pytest.raises(ValueError, match=message):
        decode_rle(rle)


def test_polygons_to_mask_unions_parts_and_rejects_bad_polygons():
    polygons = square_polygon(2, 3, 6, 9) + square_polygon(10, 10, 12, 20)
    np.testing.assert_array_equal(
        polygons_to_mask(polygons, HEIGHT, WIDTH), rectangle(2, 3, 6, 9) | rectangle(10, 10, 12, 20)
    )
    np.testing.assert_array_equal(polygons_to_mask(polygons[0], HEIGHT, WIDTH), rectangle(2, 3, 6, 9))  # flat list
    for bad, message in [
        ([[1, 1, 5, 5]], "2 points"),
        ([[1, 1, 5, 5, 7]], "odd"),
        ([[1, 1, 5, 1, float("nan"), 4]], "finite"),
        ([], "no polygon"),
    ]:
        with pytest.raises(ValueError, match=message):
            polygons_to_mask(bad, HEIGHT, WIDTH)


def test_mask_to_box_is_inclusive_and_rejects_empty():
    np.testing.assert_array_equal(mask_to_box(rectangle(2, 3, 6, 9)), [3, 2, 8, 5])
    with pytest.raises(ValueError, match="Empty"):
        mask_to_box(np.zeros((4, 4), dtype=bool))


# ----------------------------------------------------------------------------------------------------------------
# Image modes
# ----------------------------------------------------------------------------------------------------------------


def test_to_rgb_scales_16_bit_instead_of_clipping():
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(rgb)[0, :, 0], [0, 100, 255])
    # The same image saved as a 16-bit PNG and read back.
    np.testing.assert_array_equal(np.asarray(to_rgb(Image.open(io.BytesIO(png_bytes(image)))))[0, :, 1], [0, 100, 255])


def test_to_rgb_stretches_32_bit_and_converts_other_modes():
    np.testing.assert_array_equal(
        np.asarray(to_rgb(Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32))))[0, :, 2], [0, 128, 255]
    )
    gray = Image.fromarray(np.array([[7, 200]], dtype=np.uint8))
    np.testing.assert_array_equal(np.asarray(to_rgb(gray)), [[[7] * 3, [200] * 3]])
    palette = gray.convert("P")
    np.testing.assert_array_equal(np.asarray(to_rgb(palette)), [[[7] * 3, [200] * 3]])
    # Transparent pixels are composited onto white, opaque ones keep their colour.
    rgba = Image.fromarray(np.array([[[10, 20, 30, 0], [10, 20, 30, 255]]], dtype=np.uint8), mode="RGBA")
    np.testing.assert_array_equal(np.asarray(to_rgb(rgba)), [[[255, 255, 255], [10, 20, 30]]])


# ----------------------------------------------------------------------------------------------------------------
# Format detection
# ----------------------------------------------------------------------------------------------------------------


def image_features(**columns) -> datasets.Features:
    return datasets.Features({"image": datasets.Image(), **columns})


@pytest.mark.parametrize(
    ("features", "options", "expected_format", "expected_column"),
    [
        (image_features(mask=datasets.Image()), {}, AnnotationFormat.BINARY_MASK, "mask"),
        (image_features(instance_mask=datasets.Image()), {}, AnnotationFormat.INSTANCE_MAP, "instance_mask"),
        (
            image_features(annotation=datasets.Image()),
            {"class_ids": [3]},
            AnnotationFormat.SEMANTIC_MAP,
            "annotation",
        ),
        (
            image_features(target=datasets.List(datasets.List(datasets.Value("uint8")))),
            {"annotation_format": "instance_map"},
            AnnotationFormat.INSTANCE_MAP,
            "target",
        ),
        (
            image_features(
                objects=datasets.List(
                    {
                        "bbox": datasets.List(datasets.Value("float32")),
                        "segmentation": datasets.List(datasets.List(datasets.Value("float32"))),
                    }
                )
            ),
            {},
            AnnotationFormat.COCO_OBJECTS,
            "objects",
        ),
        (
            image_features(
                objects=datasets.Sequence(
                    {
                        "segmentation": datasets.List(datasets.List(datasets.Value("float32"))),
                        "category": datasets.Value("int64"),
                    }
                )
            ),
            {},
            AnnotationFormat.COCO_OBJECTS,
            "objects",
        ),
        # Two maps: naming one resolves the ambiguity.
        (
            image_features(mask=datasets.Image(), depth=datasets.Image()),
            {"mask_column": "mask"},
            AnnotationFormat.BINARY_MASK,
            "mask",
        ),
    ],
)
def test_detection(features, options, expected_format, expected_column):
    spec = detect_annotation_spec(features, **options)
    assert spec.annotation_format == expected_format
    assert spec.mask_column == expected_column
    assert spec.image_column == "image"
    assert expected_format.value in spec.reason


@pytest.mark.parametrize(
    ("features", "options", "messages"),
    [
        (image_features(mask=datasets.Image(), depth=datasets.Image()), {}, ["'mask'", "'depth'", "--mask_column"]),
        (image_features(target=datasets.Image()), {}, ["'target'", "--annotation_format"]),
        (image_features(label=datasets.Image()), {}, ["semantic map", "--class_ids"]),
        (
            datasets.Features({"rgb": datasets.Image(), "photo2": datasets.Image(), "mask": datasets.Image()}),
            {},
            ["'rgb'", "'photo2'", "--image_column"],
        ),
        (image_features(caption=datasets.Value("string")), {}, ["none among", "--mask_column"]),
        (
            image_features(mask=datasets.Image()),
            {"class_ids": [1], "annotation_format": "binary_mask"},
            ["class_ids only apply"],
        ),
        (image_features(mask=datasets.Image()), {"mask_column": "masks"}, ["'masks' is not a column"]),
    ],
)
def test_ambiguous_or_wrong_detection_explains(features, options, messages):
    with pytest.raises(ValueError) as error:
        detect_annotation_spec(features, **options)
    for message in messages:
        assert message in str(error.value)


def test_detection_uses_sample_id_column():
    spec = detect_annotation_spec(image_features(mask=datasets.Image(), sample_id=datasets.Value("string")))
    assert spec.id_column == "sample_id"


# ----------------------------------------------------------------------------------------------------------------
# Decoding and normalizing each format
# ----------------------------------------------------------------------------------------------------------------


def test_binary_mask_format_one_object_per_row():
    masks = [rectangle(2, 3, 6, 9).astype(np.uint8) * 255, rectangle(0, 0, 4, 4).astype(np.uint8)]
    dataset = (
        datasets.Dataset.from_dict(
            {"image": [random_image(), random_image(seed=1)], "mask": [Image.fromarray(mask) for mask in masks]}
        )
        .cast_column("image", datasets.Image())
        .cast_column("mask", datasets.Image())
    )
    normalized, report = prepare_dataset(dataset)
    assert normalized["sample_id"] == ["0", "1"]
    assert [[mask.tolist() for mask in row] for row in decoded_masks(normalized)] == [[(m > 0).tolist()] for m in masks]
    assert (report.kept_images, report.kept_objects, report.counts) == (2, 2, {})
    # RGB images keep their original bytes.
    assert np.array_equal(np.asarray(normalized[1]["image"]), np.asarray(random_image(seed=1)))


def test_instance_map_format_with_ignore_ids():
    id_map = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    id_map[2:6, 3:9] = 7
    id_map[10:12, 10:20] = 3
    id_map[0, :] = 255  # VOC-style boundary
    dataset = datasets.Dataset.from_dict({"image": [random_image()], "instance_mask": [Image.fromarray(id_map)]})
    dataset = dataset.cast_column("image", datasets.Image()).cast_column("instance_mask", datasets.Image())
    normalized, _ = prepare_dataset(dataset, ignore_ids=[255])
    masks = decoded_masks(normalized)[0]
    np.testing.assert_array_equal(np.stack(masks), np.stack([id_map == 3, id_map == 7]))  # ids in increasing order


@pytest.mark.parametrize(("split_components", "expected_objects"), [(True, 3), (False, 2)])
def test_semantic_map_format(split_components, expected_objects):
    class_map = np.zeros((HEIGHT, WIDTH), dtype=np.int64)
    class_map[1:4, 1:4] = 3
    class_map[4:7, 4:7] = 3  # touches the first blob diagonally only: one 8-connected component with it
    class_map[10:15, 20:30] = 3
    class_map[16:20, 1:5] = 5
    class_map[20:22, 1:5] = 9  # a class not asked for
    dataset = datasets.Dataset.from_dict({"image": [random_image()], "label": [class_map.tolist()]})
    dataset = dataset.cast_column("image", datasets.Image())
    normalized, report = prepare_dataset(dataset, class_ids=[3, 5], split_components=split_components)
    masks = decoded_masks(normalized)[0]
    assert len(masks) == expected_objects == report.kept_objects
    union = np.any(masks, axis=0)
    np.testing.assert_array_equal(union, np.isin(class_map, [3, 5]))
    if split_components:
        assert sorted(int(mask.sum()) for mask in masks) == [16, 18, 50]


def coco_objects_rows(layout: str):
    """Three images of COCO objects: polygons, uncompressed RLE and compressed RLE, in a `datasets` layout."""
    polygon_object = {"bbox": [3.0, 2.0, 6.0, 4.0], "segmentation": square_polygon(2, 3, 6, 9)}
    rle = encode_rle(rectangle(10, 10, 12, 20))
    rle_object = {"bbox": [10.0, 10.0, 10.0, 2.0], "segmentation": rle}
    compressed_object = {
        "bbox": [10.0, 10.0, 10.0, 2.0],
        "segmentation": {"size": rle["size"], "counts": compress_counts(rle["counts"])},
    }
    rows = [[polygon_object], [rle_object], [compressed_object]]
    if layout == "dict_of_lists":
        return [{key: [obj[key] for obj in objects] for key in objects[0]} for objects in rows]
    return rows


@pytest.mark.parametrize("layout", ["list_of_dicts", "dict_of_lists"])
def test_coco_objects_polygons_and_rle(layout):
    rows = coco_objects_rows(layout)
    # Arrow columns are homogeneous, so each segmentation kind is its own dataset, as on the Hub.
    expected = [rectangle(2, 3, 6, 9), rectangle(10, 10, 12, 20), rectangle(10, 10, 12, 20)]
    for objects, expected_mask in zip(rows, expected, strict=True):
        dataset = datasets.Dataset.from_dict({"image": [random_image()], "objects": [objects]})
        dataset = dataset.cast_column("image", datasets.Image())
        spec = detect_annotation_spec(dataset)
        assert spec.annotation_format == AnnotationFormat.COCO_OBJECTS
        normalized, report = prepare_dataset(dataset, spec=spec)
        np.testing.assert_array_equal(decoded_masks(normalized)[0][0], expected_mask)
        assert report.counts == {}


# ----------------------------------------------------------------------------------------------------------------
# Bad input: counted skips, or errors naming the sample
# ----------------------------------------------------------------------------------------------------------------


def coco_spec(**options) -> AnnotationSpec:
    return AnnotationSpec(annotation_format="coco_objects", image_column="image", mask_column="objects", **options)


@pytest.mark.parametrize(
    ("coco_object", "reason"),
    [
        ({"bbox": [1.0, 1.0, 2.0, 2.0], "segmentation": [[1.0, 1.0, 4.0, 4.0]]}, "invalid_polygon"),
        ({"bbox": [1.0, 1.0, 2.0, 2.0], "segmentation": {"size": [HEIGHT, WIDTH], "counts": [5, 3]}}, "invalid_rle"),
        ({"bbox": [1.0, 1.0, 2.0, 2.0], "segmentation": {"size": [HEIGHT, WIDTH], "counts": "(("}}, "invalid_rle"),
        ({"bbox": [1.0, float("nan"), 2.0, 2.0], "segmentation": square_polygon(2, 3, 6, 9)}, "invalid_box"),
        ({"bbox": [1.0, 1.0, -2.0, 2.0], "segmentation": square_polygon(2, 3, 6, 9)}, "invalid_box"),
        (
            {"bbox": [1.0, 1.0, 2.0, 2.0], "segmentation": encode_rle(rectangle(1, 1, 3, 3, height=8))},
            "mask_size_mismatch",
        ),
        ({"bbox": [1.0, 1.0, 2.0, 2.0], "segmentation": encode_rle(np.zeros((HEIGHT, WIDTH), bool))}, "empty_mask"),
        ({"bbox": [1.0, 1.0, 2.0, 2.0], "segmentation": []}, "missing_segmentation"),
        ({"bbox": [1.0, 1.0, 2.0, 2.0], "segmentation": square_polygon(2, 3, 6, 9), "iscrowd": 1}, "crowd"),
    ],
)
def test_bad_coco_object_is_skipped_and_counted_or_raised(coco_object, reason):
    valid = {"bbox": [10.0, 10.0, 10.0, 2.0], "segmentation": square_polygon(10, 10, 12, 20)}
    example = {"image": random_image(), "objects": [coco_object, valid]}
    decoded = decode_example(example, coco_spec(), sample_id="img-4")
    assert decoded.skipped == {reason: 1}
    np.testing.assert_array_equal(decoded.masks, [rectangle(10, 10, 12, 20)])  # the valid object is kept
    if reason != "crowd":
        with pytest.raises(ValueError, match=f"'img-4': {reason}"):
            decode_example(example, coco_spec(on_invalid="raise"), sample_id="img-4")


def test_too_small_objects_are_counted():
    example = {"image": random_image(), "objects": [{"segmentation": encode_rle(rectangle(0, 0, 2, 2))}]}
    decoded = decode_example(example, coco_spec(min_area=5))
    assert decoded.skipped == {"too_small": 1, "no_objects": 1}


def test_map_size_mismatch_skips_every_object_of_the_map():
    id_map = np.zeros((HEIGHT // 2, WIDTH), dtype=np.uint8)
    id_map[1:3, 1:3], id_map[5:8, 5:8] = 1, 2
    spec = AnnotationSpec(annotation_format="instance_map", image_column="image", mask_column="instance_mask")
    decoded = decode_example({"image": random_image(), "instance_mask": Image.fromarray(id_map)}, spec)
    assert decoded.skipped == {"mask_size_mismatch": 2, "no_objects": 1}
    with pytest.raises(ValueError, match="'row-9': mask_size_mismatch: map size"):
        decode_example(
            {"image": random_image(), "instance_mask": Image.fromarray(id_map)},
            AnnotationSpec(
                annotation_format="instance_map", image_column="image", mask_column="instance_mask", on_invalid="raise"
            ),
            sample_id="row-9",
        )


def test_prepare_dataset_counts_every_skip_and_keeps_every_valid_object():
    good = random_image()
    truncated = png_bytes(random_image(seed=5))[:200]
    gray16 = Image.fromarray(np.full((HEIGHT, WIDTH), 257 * 40, dtype=np.uint16))
    polygon = square_polygon(2, 3, 6, 9)
    rows = [
        # 0: two valid objects and an empty one.
        (
            png_bytes(good),
            [polygon, square_polygon(10, 10, 12, 20), {"size": [HEIGHT, WIDTH], "counts": [HEIGHT * WIDTH]}],
        ),
        # 1: truncated image bytes.
        (truncated, [polygon]),
        # 2: 16-bit grayscale image, one valid object and a 2-point polygon.
        (png_bytes(gray16), [polygon, [[1.0, 1.0, 3.0, 3.0]]]),
        # 3: no object at all.
        (png_bytes(good), []),
        # 4: palette image, one valid object.
        (png_bytes(good.convert("P")), [polygon]),
    ]
    polygon_rows, rle_rows = [], []
    for _, segmentations in rows:
        polygon_rows.append([{"segmentation": s} for s in segmentations if isinstance(s, list)])
        rle_rows.append([s for s in segmentations if isinstance(s, dict)])
    # Polygons and RLE cannot share an Arrow column: RLE objects go through a second, RLE-only dataset.
    dataset = datasets.Dataset.from_dict(
        {
            "sample_id": [f"img-{index}" for index in range(len(rows))],
            "image": [{"bytes": image_bytes, "path": None} for image_bytes, _ in rows],
            "objects": polygon_rows,
        }
    ).cast_column("image", datasets.Image())
    normalized, report = prepare_dataset(dataset)
    assert normalized["sample_id"] == ["img-0", "img-2", "img-4"]
    assert [len(masks) for masks in normalized["masks"]] == [2, 1, 1]
    assert report.counts == {"corrupt_image": 1, "invalid_polygon": 1, "no_objects": 1}
    assert report.examples == {"corrupt_image": ["img-1"], "invalid_polygon": ["img-2"], "no_objects": ["img-3"]}
    assert (report.num_rows, report.kept_images, report.kept_objects) == (5, 3, 4)
    summary = report.summary()
    assert "Kept 3 images with 4 objects out of 5 rows" in summary
    assert "skipped 1 rows: corrupt_image" in summary and "img-1" in summary
    assert report.to_dict()["skipped"] == {"corrupt_image": 1, "invalid_polygon": 1, "no_objects": 1}
    # The 16-bit image is scaled (40 * 257 -> 40), not clipped to 255; the palette image is converted to RGB.
    np.testing.assert_array_equal(np.unique(np.asarray(normalized[1]["image"])), [40])
    assert normalized[2]["image"].mode == "RGB"
    np.testing.assert_array_equal(np.asarray(normalized[2]["image"]), np.asarray(good.convert("P").convert("RGB")))

    rle_dataset = datasets.Dataset.from_dict(
        {"image": [{"bytes": png_bytes(good), "path": None}], "objects": [[{"segmentation": rle_rows[0][0]}]]}
    ).cast_column("image", datasets.Image())
    _, rle_report = prepare_dataset(rle_dataset)
    assert rle_report.counts == {"empty_mask": 1, "no_objects": 1}


def test_prepare_dataset_rejects_duplicate_ids():
    dataset = datasets.Dataset.from_dict(
        {"sample_id": ["a", "a"], "image": [random_image()] * 2, "mask": [rectangle(1, 1, 3, 3).tolist()] * 2}
    ).cast_column("image", datasets.Image())
    with pytest.raises(ValueError, match="duplicate values"):
        prepare_dataset(dataset)


# ----------------------------------------------------------------------------------------------------------------
# Local folders
# ----------------------------------------------------------------------------------------------------------------


def test_image_mask_folder(tmp_path):
    (tmp_path / "images" / "sub").mkdir(parents=True)
    (tmp_path / "masks" / "sub").mkdir(parents=True)
    random_image().save(tmp_path / "images" / "a.jpg")
    random_image(seed=1).save(tmp_path / "images" / "sub" / "b.png")
    id_map = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    id_map[1:4, 1:4], id_map[8:12, 8:12] = 1, 2
    Image.fromarray(id_map).save(tmp_path / "masks" / "a.png")
    Image.fromarray(id_map * 0 + (id_map == 1)).save(tmp_path / "masks" / "sub" / "b.png")

    dataset = load_image_mask_folder(tmp_path, annotation_format="instance_map")
    assert dataset["sample_id"] == ["a", "sub/b"]
    normalized, report = prepare_dataset(dataset)
    assert normalized["sample_id"] == ["a", "sub/b"]
    assert [len(masks) for masks in normalized["masks"]] == [2, 1]
    # The JPEG is kept as-is (no re-encoding).
    assert (
        normalized.cast_column("image", datasets.Image(decode=False))[0]["image"]["bytes"]
        == (tmp_path / "images" / "a.jpg").read_bytes()
    )


def test_image_mask_folder_counts_images_without_masks_and_masks_without_images(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for stem in ("a", "c"):
        random_image().save(tmp_path / "images" / f"{stem}.png")
    for stem in ("a", "d"):
        Image.fromarray(rectangle(1, 1, 5, 5).astype(np.uint8) * 255).save(tmp_path / "masks" / f"{stem}.png")

    normalized, report = prepare_dataset(load_image_mask_folder(tmp_path))
    assert normalized["sample_id"] == ["a"]
    assert report.counts == {"missing_mask": 1, "missing_image": 1}
    assert report.examples == {"missing_mask": ["c"], "missing_image": ["d"]}
    assert "skipped 1 rows: missing_mask" in report.summary()
    with pytest.raises(ValueError, match="'c': missing_mask"):
        prepare_dataset(load_image_mask_folder(tmp_path), on_invalid="raise")


# ----------------------------------------------------------------------------------------------------------------
# EXIF orientation and mask values
# ----------------------------------------------------------------------------------------------------------------


def rotated_jpeg(upright_image: Image.Image) -> bytes:
    """A JPEG as a phone held upright writes it: the pixels stored a quarter turn off, with EXIF orientation 6
    ("rotate 90 degrees clockwise to display")."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    upright_image.transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def test_exif_orientation_is_applied_by_the_data_check_the_cache_the_collator_and_predict(tmp_path):
    from tiny import tiny_config
    from transformers import SamModel

    from sam_prompt_learner.data import PromptConfig, SamPromptCollator, build_embedding_cache, masks_to_padded_frame
    from sam_prompt_learner.inference import predict_mask
    from sam_prompt_learner.processing import processor_for_config

    height, width = 48, 32  # portrait: a quarter turn changes the shape, so any reader that skips it is caught
    jpeg = rotated_jpeg(random_image(height, width))
    shown = to_rgb(Image.open(io.BytesIO(jpeg)))  # the image as viewers show it (JPEG-decoded)
    assert (shown.height, shown.width) == (height, width)
    truth = rectangle(4, 2, 40, 12, height, width)  # drawn on the upright image, as annotation tools show it
    raw = datasets.Dataset.from_dict(
        {"image": [{"bytes": jpeg, "path": None}], "mask": [png_bytes(Image.fromarray(truth.astype(np.uint8) * 255))]}
    ).cast_column("image", datasets.Image())
    raw = raw.cast_column("mask", datasets.Image())

    normalized, report = prepare_dataset(raw)
    assert (report.kept_objects, report.counts) == (1, {})
    np.testing.assert_array_equal(np.asarray(normalized[0]["image"]), np.asarray(shown))
    np.testing.assert_array_equal(decoded_masks(normalized)[0][0], truth)

    torch.manual_seed(0)
    model = SamModel(tiny_config()).eval()
    processor = processor_for_config(model.config)
    expected_embeddings = model.get_image_embeddings(processor(images=shown, return_tensors="pt")["pixel_values"])
    for source in (normalized, raw):  # the cache reads the normalized rows and the raw rotated JPEG alike
        cached = build_embedding_cache(source, model, processor.image_processor, cache_dir=tmp_path)
        assert cached[0]["original_sizes"].tolist() == [height, width]
        torch.testing.assert_close(cached[0]["image_embeddings"], expected_embeddings[0])

    collator = SamPromptCollator(processor, PromptConfig(mode_weights={"box": 1.0}), training=False)
    batch = collator([normalized[0]])
    assert batch["original_sizes"].tolist() == [[height, width]]
    torch.testing.assert_close(batch["pixel_values"], processor(images=shown, return_tensors="pt")["pixel_values"])
    reshaped = tuple(batch["reshaped_input_sizes"][0].tolist())
    expected_labels = masks_to_padded_frame(truth[None], reshaped, collator.image_size, collator.mask_size)
    torch.testing.assert_close(batch["labels"][0], expected_labels)

    # predict reads a user's `Image.open` upright too: the mask is in the frame the prompt was given in.
    result = predict_mask(model, processor, Image.open(io.BytesIO(jpeg)), box=(2, 4, 11, 39))
    assert result.mask.shape == (height, width)


def mask_dataset(masks, fmt="PNG", column="mask") -> datasets.Dataset:
    encoded = []
    for mask in masks:
        buffer = io.BytesIO()
        Image.fromarray(mask).save(buffer, format=fmt, **({"quality": 75} if fmt == "JPEG" else {}))
        encoded.append({"bytes": buffer.getvalue(), "path": None})
    dataset = datasets.Dataset.from_dict(
        {"sample_id": [f"m{index}" for index in range(len(masks))], "image": [random_image()] * len(masks),
         column: encoded}
    )  # fmt: skip
    return dataset.cast_column("image", datasets.Image()).cast_column(column, datasets.Image())


def test_id_map_in_a_binary_mask_column_is_refused_naming_the_options():
    id_map = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    id_map[1:5, 1:5], id_map[8:12, 8:20], id_map[15:20, 2:6] = 1, 2, 3
    dataset = mask_dataset([rectangle(1, 1, 5, 5).astype(np.uint8), id_map])
    for on_invalid in ("skip", "raise"):  # not one bad row to skip: every row of such a column is wrong
        with pytest.raises(ValueError, match=r"'m1': binary mask column 'mask' holds 4 values \(0, 1, 2, 3\)") as error:
            prepare_dataset(dataset, on_invalid=on_invalid)
        assert "--annotation_format instance_map" in str(error.value) and "--mask_threshold" in str(error.value)
    normalized, _ = prepare_dataset(dataset, annotation_format="instance_map")
    assert [len(masks) for masks in normalized["masks"]] == [1, 3]


def test_soft_mask_is_refused_or_thresholded_where_the_user_says():
    soft = rectangle(4, 4, 16, 20).astype(np.uint8) * 255
    soft[3, 4:20] = 100  # an anti-aliased edge
    soft[16, 4:20] = 30
    with pytest.raises(ValueError, match="mask_threshold"):
        prepare_dataset(mask_dataset([soft]))
    normalized, _ = prepare_dataset(mask_dataset([soft]), mask_threshold=128)
    np.testing.assert_array_equal(decoded_masks(normalized)[0][0], rectangle(4, 4, 16, 20))
    with pytest.raises(ValueError, match="only applies to binary masks"):
        AnnotationSpec(annotation_format="instance_map", image_column="image", mask_column="m", mask_threshold=1)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_mask_is_thresholded_at_half_range_and_noted(mode, caplog):
    truth = rectangle(3, 5, 19, 23)
    mask = truth.astype(np.uint8) * 255
    mask = mask if mode == "L" else np.repeat(mask[..., None], 3, axis=-1)
    dataset = mask_dataset([mask], fmt="JPEG")
    stored_bytes = dataset.cast_column("mask", datasets.Image(decode=False))[0]["mask"]["bytes"]
    stored = np.asarray(Image.open(io.BytesIO(stored_bytes)))
    assert len(np.unique(stored)) > 2  # the compression noise is there
    normalized, report = prepare_dataset(dataset)
    np.testing.assert_array_equal(decoded_masks(normalized)[0][0], truth)
    assert report.notes == {"jpeg_mask": 1} and report.counts == {}
    assert "note, 1 masks: jpeg_mask" in report.summary() and report.to_dict()["notes"] == {"jpeg_mask": 1}
    assert "jpeg_mask" in caplog.text


def test_validation_is_held_out_of_train_the_same_way_every_time():
    from sam_prompt_learner.training import hold_out_validation

    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"sample_id": [str(i) for i in range(25)]})})
    splits, message = hold_out_validation(raw, percentage=10)
    held_out = list(splits["validation"]["sample_id"])
    assert len(held_out) == 3 and "held out 3 of the 25 'train' rows" in message
    assert sorted(held_out + list(splits["train"]["sample_id"])) == sorted(raw["train"]["sample_id"])
    assert held_out != ["0", "1", "2"]  # drawn, not the first rows (a sorted folder's first files)
    assert list(hold_out_validation(raw, percentage=10)[0]["validation"]["sample_id"]) == held_out
    assert hold_out_validation(splits, percentage=10) == (splits, None)  # a validation split is kept
    assert hold_out_validation(raw, percentage=0) == (raw, None)
    with pytest.raises(ValueError, match="too few"):
        hold_out_validation(datasets.DatasetDict({"train": raw["train"].select([0])}), percentage=10)

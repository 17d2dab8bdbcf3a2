"""Segmentation annotations from `datasets`: format detection, per-example decoding, skip accounting, normalization.

Four annotation formats are read, from the features of a `datasets.Dataset`:

- `binary_mask`: a mask column (image or 2D array), one object per row, foreground = non-zero;
- `instance_map`: an id map, 0 is background and every other id one object;
- `semantic_map`: a class map; each chosen class id gives one object per connected component, or one per class;
- `coco_objects`: a column of objects with `segmentation` (COCO polygons or RLE) and `bbox` (COCO `[x, y, w, h]`),
  as a list of dicts or, as `datasets.Sequence` stores it, a dict of lists.

[`prepare_dataset`] turns any of them into the *normalized* dataset used for training: one row per image with
`sample_id` (string), `image` (RGB) and `masks` (list of COCO uncompressed RLE, one per object, each of the image's
size). Everything that cannot be used is skipped and counted per reason in a [`SkipReport`] (or raised, with
`on_invalid="raise"`); valid objects are never dropped.
"""

from __future__ import annotations

import io
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal, NamedTuple

import datasets
import numpy as np
from PIL import Image, ImageOps
from scipy import ndimage

from .masks import decode_rle, encode_rle, polygons_to_mask

logger = logging.getLogger(__name__)

# What each skip reason means. Reasons in `ROW_SKIP_REASONS` drop a whole row (image); the others drop one object.
SKIP_REASONS = {
    "corrupt_image": "image bytes that cannot be decoded (truncated, corrupt or not an image)",
    "corrupt_mask": "mask or label map that cannot be decoded, or that is not 2D",
    "missing_image": "row without an image (in a folder: a mask file without a matching image file)",
    "missing_mask": "row without a mask or map (in a folder: an image file without a matching mask file)",
    "no_objects": "image left without any valid object (nothing to prompt)",
    "mask_size_mismatch": "object whose mask size differs from its image size",
    "empty_mask": "object with an empty mask",
    "too_small": "object with fewer pixels than `min_area`",
    "invalid_polygon": "polygon with fewer than 3 points, an odd number of coordinates, or a non-finite coordinate",
    "invalid_rle": "RLE whose counts are malformed (wrong type, negative, or not summing to height * width)",
    "invalid_box": "bbox that is not 4 finite numbers with non-negative width and height",
    "missing_segmentation": "object with a bbox but no segmentation (a box gives no mask target)",
    "crowd": "COCO crowd region (`iscrowd=1`), a group of objects, skipped when `skip_crowd=True`",
}
ROW_SKIP_REASONS = frozenset({"corrupt_image", "corrupt_mask", "missing_image", "missing_mask", "no_objects"})
# What each note means: data that is used, but read in a way worth knowing about (counted like skips, per mask).
NOTE_REASONS = {
    "jpeg_mask": "mask stored as lossy JPEG: its compression noise is removed by thresholding at half range (store "
    "masks as PNG)",
}
# Formats whose compression changes pixel values, so a stored 0/255 mask comes back with values in between.
LOSSY_IMAGE_FORMATS = frozenset({"JPEG", "MPO"})

ORIENTATION_TAG = 0x0112  # EXIF orientation: 1 is upright, 2-8 a rotation and / or mirroring to apply

# Column-name hints used by detection; a name matching none of them must be named by the caller.
IMAGE_COLUMN_NAMES = ("image", "img", "images", "pixel_values", "photo", "picture")
INSTANCE_NAME_HINTS = ("instance", "object")
SEMANTIC_NAME_HINTS = ("semantic", "label", "annotation", "segmentation", "class", "seg")
BINARY_NAME_HINTS = ("mask", "matte", "alpha", "foreground")

NORMALIZED_FEATURES = datasets.Features(
    {
        "sample_id": datasets.Value("string"),
        "image": datasets.Image(),
        "masks": datasets.List(
            {"size": datasets.List(datasets.Value("int32")), "counts": datasets.List(datasets.Value("int64"))}
        ),
    }
)


class AnnotationFormat(str, Enum):
    """How a dataset stores its objects (see the module docstring)."""

    BINARY_MASK = "binary_mask"
    INSTANCE_MAP = "instance_map"
    SEMANTIC_MAP = "semantic_map"
    COCO_OBJECTS = "coco_objects"


@dataclass
class AnnotationSpec:
    """
    Where and how a dataset stores its images and objects. Build it with [`detect_annotation_spec`], which fills
    the columns and format from the features and records why in `reason`, or directly.

    Args:
        annotation_format (`AnnotationFormat`):
            The annotation format.
        image_column (`str`):
            Column of `datasets.Image` feature holding the images.
        mask_column (`str`):
            Column holding the annotation: the mask / id map / class map, or the COCO objects.
        class_ids (`tuple[int, ...]`, *optional*):
            `semantic_map` only: the class ids that are objects (all other values are background).
        split_components (`bool`, *optional*, defaults to `True`):
            `semantic_map` only: each 8-connected component of a class is one object; `False`: each class is one
            object.
        mask_threshold (`float`, *optional*):
            `binary_mask` only: foreground is `value >= mask_threshold` (e.g. 128 for 8-bit soft masks or mattes).
            By default a mask with at most two values is foreground where non-zero, a JPEG mask is thresholded at
            half range (128 for 8 bits) to remove its compression noise, and any other mask with more than two values
            (an id map or a soft mask) is refused with an error naming this option and `instance_map`.
        ignore_ids (`tuple[int, ...]`, *optional*):
            `instance_map` only: ids that are neither background nor an object (e.g. 255, the boundary of VOC maps).
        id_column (`str`, *optional*):
            Column holding a stable, unique sample id; `None` uses the row index.
        min_area (`int`, *optional*, defaults to 1):
            Objects with fewer pixels are skipped (`too_small`); empty ones are always skipped (`empty_mask`).
        skip_crowd (`bool`, *optional*, defaults to `True`):
            `coco_objects` only: skip objects with a truthy `iscrowd`.
        on_invalid (`str`, *optional*, defaults to `"skip"`):
            `"skip"`: skip and count invalid images and objects; `"raise"`: raise a `ValueError` naming the sample
            and the problem instead (images without objects and crowd regions are still only counted).
        reason (`str`, *optional*):
            Why these columns and this format were chosen, for logs.
    """

    annotation_format: AnnotationFormat
    image_column: str
    mask_column: str
    class_ids: tuple[int, ...] = ()
    split_components: bool = True
    mask_threshold: float | None = None
    ignore_ids: tuple[int, ...] = ()
    id_column: str | None = None
    min_area: int = 1
    skip_crowd: bool = True
    on_invalid: Literal["skip", "raise"] = "skip"
    reason: str = "given by the caller"

    def __post_init__(self):
        self.annotation_format = AnnotationFormat(self.annotation_format)
        self.class_ids = tuple(int(class_id) for class_id in self.class_ids)
        self.ignore_ids = tuple(int(ignore_id) for ignore_id in self.ignore_ids)
        if self.annotation_format == AnnotationFormat.SEMANTIC_MAP and not self.class_ids:
            raise ValueError(
                f"A semantic map ('{self.mask_column}') needs the class ids that are objects: pass class_ids=[...] "
                "(--class_ids)."
            )
        if self.annotation_format != AnnotationFormat.SEMANTIC_MAP and self.class_ids:
            raise ValueError(f"class_ids only apply to semantic maps, not to {self.annotation_format.value}.")
        if self.mask_threshold is not None and self.annotation_format != AnnotationFormat.BINARY_MASK:
            raise ValueError(f"mask_threshold only applies to binary masks, not to {self.annotation_format.value}.")
        if self.on_invalid not in ("skip", "raise"):
            raise ValueError(f"on_invalid must be 'skip' or 'raise', got {self.on_invalid!r}.")
        if self.min_area < 1:
            raise ValueError(f"min_area must be at least 1, got {self.min_area}.")


@dataclass
class SkipReport:
    """
    What normalization kept and skipped, per reason (see `SKIP_REASONS`), with a few example sample ids per reason,
    and what it kept but read in a noteworthy way (see `NOTE_REASONS`), counted the same way.

    Args:
        num_rows (`int`): rows read.
        kept_images (`int`): rows kept, each an image with at least one object.
        kept_objects (`int`): objects kept.
        counts (`dict[str, int]`): skipped rows or objects per reason (rows for `ROW_SKIP_REASONS`).
        examples (`dict[str, list[str]]`): up to `max_examples` sample ids per reason, skips and notes.
        notes (`dict[str, int]`): masks per note reason.
        max_examples (`int`): how many example ids to keep per reason.
    """

    num_rows: int = 0
    kept_images: int = 0
    kept_objects: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)
    max_examples: int = 5

    def add(self, reason: str, sample_id: str, count: int = 1) -> None:
        """Count `count` skips (a `SKIP_REASONS` key) or notes (a `NOTE_REASONS` key) for `reason` in `sample_id`."""
        if reason in SKIP_REASONS:
            self.counts[reason] = self.counts.get(reason, 0) + count
        elif reason in NOTE_REASONS:
            self.notes[reason] = self.notes.get(reason, 0) + count
        else:
            raise ValueError(f"Unknown reason {reason!r}; known: {sorted(SKIP_REASONS) + sorted(NOTE_REASONS)}.")
        examples = self.examples.setdefault(reason, [])
        if len(examples) < self.max_examples and sample_id not in examples:
            examples.append(sample_id)

    @property
    def num_skipped(self) -> int:
        """Total number of skipped rows and objects."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """A human-readable summary, one line per skip reason, to print before training."""
        lines = [f"Kept {self.kept_images} images with {self.kept_objects} objects out of {self.num_rows} rows."]
        for reason, count in sorted(self.counts.items()):
            unit = "rows" if reason in ROW_SKIP_REASONS else "objects"
            examples = ", ".join(self.examples.get(reason, []))
            lines.append(f"  skipped {count} {unit}: {reason} ({SKIP_REASONS[reason]}); e.g. samples {examples}")
        if not self.counts:
            lines.append("  nothing skipped.")
        for reason, count in sorted(self.notes.items()):
            examples = ", ".join(self.examples.get(reason, []))
            lines.append(f"  note, {count} masks: {reason} ({NOTE_REASONS[reason]}); e.g. samples {examples}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict, to write with a run's metrics."""
        return {
            "num_rows": self.num_rows,
            "kept_images": self.kept_images,
            "kept_objects": self.kept_objects,
            "skipped": dict(sorted(self.counts.items())),
            "notes": dict(sorted(self.notes.items())),
            "examples": {reason: list(ids) for reason, ids in sorted(self.examples.items())},
        }


class DecodedExample(NamedTuple):
    """One example read by [`decode_example`]."""

    image: Image.Image | None  # RGB; None when the row is skipped
    masks: np.ndarray  # (num_objects, height, width) bool
    skipped: Counter  # reason -> number of rows / objects skipped
    notes: Counter  # note reason (`NOTE_REASONS`) -> number of masks


# ---------------------------------------------------------------------------------------------------------------
# Format detection
# ---------------------------------------------------------------------------------------------------------------


def _is_image_feature(feature: Any) -> bool:
    return isinstance(feature, datasets.Image)


def _is_map_feature(feature: Any) -> bool:
    """An image or a 2D array: a binary mask, an id map or a class map."""
    if isinstance(feature, datasets.Image | datasets.Array2D):
        return True
    return (
        isinstance(feature, datasets.List)
        and isinstance(feature.feature, datasets.List)
        and isinstance(feature.feature.feature, datasets.Value)
    )


def _is_coco_objects_feature(feature: Any) -> bool:
    """Objects with a `segmentation`: a list of dicts, or the dict of lists `datasets.Sequence` makes of it."""
    if isinstance(feature, datasets.List):
        feature = feature.feature
    return isinstance(feature, Mapping) and "segmentation" in feature


def _name_hint(column: str) -> AnnotationFormat | None:
    name = column.lower()
    if any(hint in name for hint in INSTANCE_NAME_HINTS):
        return AnnotationFormat.INSTANCE_MAP
    if any(hint in name for hint in SEMANTIC_NAME_HINTS):
        return AnnotationFormat.SEMANTIC_MAP
    if any(hint in name for hint in BINARY_NAME_HINTS):
        return AnnotationFormat.BINARY_MASK
    return None


def _features_of(dataset: datasets.Dataset | datasets.DatasetDict | datasets.Features) -> datasets.Features:
    if isinstance(dataset, datasets.DatasetDict):
        split_features = {split: split_dataset.features for split, split_dataset in dataset.items()}
        features = next(iter(split_features.values()))
        if any(other != features for other in split_features.values()):
            raise ValueError(f"The splits have different features; prepare each split on its own: {split_features}")
        return features
    if isinstance(dataset, datasets.Dataset):
        return dataset.features
    return dataset


def _detect_image_column(features: datasets.Features, mask_column: str | None) -> tuple[str, str]:
    candidates = [name for name, feature in features.items() if _is_image_feature(feature) and name != mask_column]
    if not candidates:
        raise ValueError(
            f"No column has the datasets.Image feature (columns: {list(features)}). Cast the image column with "
            "`dataset.cast_column(name, datasets.Image())` or pass image_column=... (--image_column)."
        )
    if len(candidates) == 1:
        return candidates[0], f"image column '{candidates[0]}' (the only Image column)"
    by_name = [name for name in candidates if name.lower() in IMAGE_COLUMN_NAMES]
    if len(by_name) == 1:
        return by_name[0], f"image column '{by_name[0]}' (the Image column with an image-like name)"
    not_mask_like = [name for name in candidates if _name_hint(name) is None]
    if len(not_mask_like) == 1:
        return not_mask_like[0], f"image column '{not_mask_like[0]}' (the Image column without a mask-like name)"
    raise ValueError(
        f"Several columns could hold the images: {candidates}. Pass image_column=... (--image_column) to choose."
    )


def detect_annotation_spec(
    dataset: datasets.Dataset | datasets.DatasetDict | datasets.Features,
    *,
    annotation_format: AnnotationFormat | str | None = None,
    image_column: str | None = None,
    mask_column: str | None = None,
    **options: Any,
) -> AnnotationSpec:
    """
    Find the image column, the annotation column and the annotation format from a dataset's features.

    Rules, in order: the image column is the only `datasets.Image` column other than the annotation column, or the
    only one with an image-like name (`IMAGE_COLUMN_NAMES`). The annotation column is the only other column that is
    either COCO objects (a list of dicts, or dict of lists, with `segmentation`) or a map (an Image, `Array2D` or
    list of lists). The format is `coco_objects` for objects; for a map, `semantic_map` when `class_ids` are given,
    else it follows the column name (`instance`/`object` -> `instance_map`; `semantic`/`label`/`annotation`/
    `segmentation`/`class`/`seg` -> `semantic_map`, which needs `class_ids`; `mask`/`matte`/`alpha`/`foreground` ->
    `binary_mask`). Anything else is ambiguous and raises a `ValueError` listing the candidates and the argument to
    set. A column named `sample_id` is used as `id_column` unless `id_column` is given.

    Args:
        dataset (`datasets.Dataset`, `datasets.DatasetDict` or `datasets.Features`):
            The dataset, or its features (all splits of a `DatasetDict` must share them).
        annotation_format (`AnnotationFormat` or `str`, *optional*):
            Force the format (`--annotation_format`).
        image_column (`str`, *optional*):
            Force the image column (`--image_column`).
        mask_column (`str`, *optional*):
            Force the annotation column (`--mask_column`).
        options:
            Other [`AnnotationSpec`] fields (`class_ids`, `split_components`, `ignore_ids`, `id_column`, `min_area`,
            `skip_crowd`, `on_invalid`).

    Returns:
        [`AnnotationSpec`] with `reason` explaining the choice.
    """
    features = _features_of(dataset)
    for name, value in (("image_column", image_column), ("mask_column", mask_column)):
        if value is not None and value not in features:
            raise ValueError(f"{name}='{value}' is not a column; columns: {list(features)}.")
    annotation_format = AnnotationFormat(annotation_format) if annotation_format is not None else None

    if image_column is None:
        image_column, image_reason = _detect_image_column(features, mask_column)
    else:
        if not _is_image_feature(features[image_column]):
            raise ValueError(
                f"image_column '{image_column}' has feature {features[image_column]}, not datasets.Image(); cast it "
                f"with `dataset.cast_column('{image_column}', datasets.Image())`."
            )
        image_reason = f"image column '{image_column}' (given)"

    if mask_column is None:
        others = {name: feature for name, feature in features.items() if name != image_column}
        coco_columns = [name for name, feature in others.items() if _is_coco_objects_feature(feature)]
        map_columns = [name for name, feature in others.items() if _is_map_feature(feature)]
        if annotation_format == AnnotationFormat.COCO_OBJECTS:
            candidates = coco_columns
        elif annotation_format is not None:
            candidates = map_columns
        else:
            candidates = coco_columns + map_columns
        if len(candidates) != 1:
            found = f"several candidates {candidates}" if candidates else f"none among {list(others)}"
            raise ValueError(
                "Cannot tell which column holds the annotations: expected one column of COCO objects (with "
                f"'segmentation') or of masks/maps (Image, Array2D or list of lists), found {found}. Pass "
                "mask_column=... (--mask_column)."
            )
        mask_column = candidates[0]
        mask_reason = f"annotations in '{mask_column}' (the only annotation-like column)"
    else:
        mask_reason = f"annotations in '{mask_column}' (given)"

    mask_feature = features[mask_column]
    if _is_coco_objects_feature(mask_feature):
        detected, format_reason = AnnotationFormat.COCO_OBJECTS, "objects with 'segmentation'"
    elif not _is_map_feature(mask_feature):
        raise ValueError(
            f"Column '{mask_column}' has feature {mask_feature}: neither COCO objects (with 'segmentation') nor a "
            "mask/map (Image, Array2D or list of lists)."
        )
    elif options.get("class_ids"):
        detected, format_reason = AnnotationFormat.SEMANTIC_MAP, "a map, with class_ids given"
    else:
        detected, format_reason = _name_hint(mask_column), f"a map named '{mask_column}'"
        if detected == AnnotationFormat.SEMANTIC_MAP and annotation_format is None:
            raise ValueError(
                f"Column '{mask_column}' looks like a semantic map (by its name): pass class_ids=[...] (--class_ids) "
                "for the classes that are objects, or annotation_format='binary_mask' | 'instance_map' "
                "(--annotation_format) if it is not a class map."
            )

    if annotation_format is not None:
        if (annotation_format == AnnotationFormat.COCO_OBJECTS) != (detected == AnnotationFormat.COCO_OBJECTS):
            raise ValueError(
                f"annotation_format='{annotation_format.value}' does not fit column '{mask_column}' ({mask_feature})."
            )
        detected, format_reason = annotation_format, "given"
    elif detected is None:
        raise ValueError(
            f"Column '{mask_column}' is a map, but its name does not say whether it is a binary mask, an instance-id "
            "map or a semantic map. Pass annotation_format='binary_mask' | 'instance_map' | 'semantic_map' "
            "(--annotation_format), and class_ids=[...] (--class_ids) for a semantic map."
        )
    if options.get("id_column") is None and "sample_id" in features:
        options["id_column"] = "sample_id"
    return AnnotationSpec(
        annotation_format=detected,
        image_column=image_column,
        mask_column=mask_column,
        reason=f"{detected.value} ({format_reason}); {image_reason}; {mask_reason}",
        **options,
    )


# ---------------------------------------------------------------------------------------------------------------
# Decoding one example
# ---------------------------------------------------------------------------------------------------------------


def upright(image: Image.Image) -> Image.Image:
    """
    The image as viewers show it: its EXIF orientation applied (a photo taken in portrait stores landscape pixels and
    an orientation tag). `datasets` applies it when it decodes an image, so every reader here does too, or the masks
    and the embeddings of one image would be in different frames.

    Args:
        image (`PIL.Image.Image`): the image.

    Returns:
        `PIL.Image.Image`: the input itself when it has no orientation to apply, else a rotated / flipped copy.
    """
    if image.getexif().get(ORIENTATION_TAG, 1) == 1:
        return image
    return ImageOps.exif_transpose(image)


def _open_image(value: Any) -> tuple[Image.Image, str | None]:
    """Open and fully decode an image given as a PIL image or as datasets' `{"bytes", "path"}` dict; return it upright
    (see `upright`) with its file format (`"PNG"`, `"JPEG"`, ...; `None` for an image built in memory)."""
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, Mapping) and value.get("bytes") is not None:
            image = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, Mapping) and value.get("path") is not None:
            image = Image.open(value["path"])
        elif isinstance(value, str | os.PathLike):
            image = Image.open(value)
        else:
            raise ValueError(f"expected an image, got {type(value).__name__}")
        image.load()  # decodes the pixels: truncated or corrupt data raises here, not later in training
        return upright(image), image.format
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot decode image: {error}") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """
    Convert an image of any PIL mode to upright (EXIF orientation applied, see `upright`) 8-bit RGB without clipping
    high bit depths.

    - 16-bit modes (`I;16`, `I;16B`, ...) are scaled from [0, 65535] to [0, 255]; PIL's own conversion clips them.
    - 32-bit modes (`I`, `F`) have no fixed range, so they are stretched from their min to their max.
    - Transparency (`RGBA`, `LA`, `PA`, palette with a transparent index) is composited onto white, and other modes
      (`L`, `P`, `1`, `CMYK`, ...) converted by PIL.

    Args:
        image (`PIL.Image.Image`): the image.

    Returns:
        `PIL.Image.Image` in mode `RGB`; the input itself when already upright RGB.
    """
    image = upright(image)
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):
        gray = np.round(np.asarray(image, dtype=np.float64) / 257.0)  # 65535 / 257 = 255 exactly
    elif image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = values.min(), values.max()
        gray = np.round((values - low) * (255.0 / (high - low))) if high > low else np.zeros_like(values)
    elif image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    else:
        return image.convert("RGB")
    return Image.fromarray(gray.astype(np.uint8), mode="L").convert("RGB")


def _read_map(value: Any) -> tuple[np.ndarray, bool]:
    """A mask / id map / class map as a 2D integer array (an RGB map becomes ids `R * 65536 + G * 256 + B`), and
    whether it was stored in a lossy format (JPEG)."""
    lossy = False
    if isinstance(value, Image.Image | Mapping | str | os.PathLike):
        value, file_format = _open_image(value)
        lossy = file_format in LOSSY_IMAGE_FORMATS
    array = np.asarray(value)
    if array.ndim == 3 and array.shape[-1] in (2, 4):
        array = array[..., :-1]  # alpha is not part of the id
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    elif array.ndim == 3 and array.shape[-1] == 3:
        if lossy:  # JPEG noise differs per channel: a gray mask saved as RGB JPEG is read as gray
            array = array.mean(axis=-1)
        else:
            array = (array.astype(np.int64) * np.array([65536, 256, 1])).sum(axis=-1)
    if array.ndim != 2:
        raise ValueError(f"expected a 2D map, got shape {array.shape}")
    return array, lossy


def _half_range(label_map: np.ndarray) -> float:
    """Half the value range of a map's dtype: 128 for 8 bits, 32768 for 16 bits, 0.5 for floats in [0, 1]."""
    if np.issubdtype(label_map.dtype, np.integer) and label_map.dtype.itemsize <= 2:
        return (int(np.iinfo(label_map.dtype).max) + 1) / 2
    return 128.0 if label_map.max() > 1 else 0.5


def _binary_foreground(label_map: np.ndarray, lossy: bool, spec: AnnotationSpec) -> np.ndarray:
    """The foreground of a binary mask (see `AnnotationSpec.mask_threshold`), `(height, width)` bool; raises
    `_MaskValuesError` for a mask with more than two values that is not JPEG, which would be silently wrong either
    way: merging an id map's objects into one, or taking a soft mask's faint edge as object."""
    if spec.mask_threshold is not None:
        return label_map >= spec.mask_threshold
    values = np.unique(label_map)
    if values.size <= 2:
        return label_map != 0
    if lossy:
        return label_map >= _half_range(label_map)
    raise _MaskValuesError(
        f"binary mask column '{spec.mask_column}' holds {values.size} values ({_show_values(values)}), not two: an "
        "id map would merge its objects into one, a soft mask would take its faint edge as object. Pass "
        "annotation_format='instance_map' (--annotation_format instance_map) if each value is one object, or "
        f"mask_threshold=T (--mask_threshold T) for foreground = value >= T (e.g. {_half_range(label_map):g})."
    )


def _show_values(values: np.ndarray, limit: int = 6) -> str:
    shown = ", ".join(f"{value:g}" for value in values[:limit].tolist())
    return shown + (", ..." if values.size > limit else "")


class _MaskValuesError(ValueError):
    """A binary mask whose values do not say what is foreground: raised whatever `on_invalid` says, since it is a
    property of the dataset that a flag settles, not one bad row to skip."""


def _objects_from_map(label_map: np.ndarray, lossy: bool, spec: AnnotationSpec) -> np.ndarray:
    """The objects of a map, `(num_objects, height, width)` bool, per `spec.annotation_format`."""
    if spec.annotation_format == AnnotationFormat.BINARY_MASK:
        return _binary_foreground(label_map, lossy, spec)[None]
    if spec.annotation_format == AnnotationFormat.INSTANCE_MAP:
        ids = np.setdiff1d(np.unique(label_map), np.array((0, *spec.ignore_ids)))
        return label_map[None] == ids[:, None, None]
    objects = []
    for class_id in spec.class_ids:
        region = label_map == class_id
        if not spec.split_components:
            if region.any():  # a class absent from the image is not an object
                objects.append(region)
            continue
        components, num_components = ndimage.label(region, structure=np.ones((3, 3), dtype=bool))
        objects.extend(components == component for component in range(1, num_components + 1))
    if not objects:
        return np.zeros((0, *label_map.shape), dtype=bool)
    return np.stack(objects)


def _unbatch_objects(objects: Any) -> list[Any]:
    """COCO objects as a list of dicts, whether stored as one (`datasets.List`) or as a dict of lists."""
    if isinstance(objects, Mapping):
        columns = {key: _unbatch_objects(value) for key, value in objects.items()}
        lengths = {len(value) for value in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"object fields have different lengths: { {k: len(v) for k, v in columns.items()} }")
        count = lengths.pop() if lengths else 0
        return [{key: value[index] for key, value in columns.items()} for index in range(count)]
    return list(objects) if objects is not None else []


class _ObjectSkip(Exception):
    """An object (or row) that cannot be used, with its skip reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _coco_object_mask(coco_object: Mapping[str, Any], height: int, width: int, spec: AnnotationSpec) -> np.ndarray:
    """The mask of one COCO object, or `_ObjectSkip`."""
    if spec.skip_crowd and coco_object.get("iscrowd"):
        raise _ObjectSkip("crowd", "crowd region")
    bbox = coco_object.get("bbox")
    if bbox is not None:
        try:
            box = np.asarray(bbox, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise _ObjectSkip("invalid_box", f"bbox {bbox!r} is not numeric") from error
        if box.shape != (4,) or not np.isfinite(box).all() or (box[2:] < 0).any():
            raise _ObjectSkip("invalid_box", f"bbox {bbox!r} is not 4 finite numbers with width, height >= 0")
    segmentation = coco_object.get("segmentation")
    if segmentation is None or (isinstance(segmentation, Sequence) and len(segmentation) == 0):
        raise _ObjectSkip("missing_segmentation", "no segmentation")
    if isinstance(segmentation, Mapping):
        try:
            mask = decode_rle(dict(segmentation))
        except ValueError as error:
            raise _ObjectSkip("invalid_rle", str(error)) from error
        if mask.shape != (height, width):
            raise _ObjectSkip("mask_size_mismatch", f"RLE size {list(mask.shape)} != image size {[height, width]}")
        return mask
    try:
        return polygons_to_mask(segmentation, height, width)
    except (TypeError, ValueError) as error:
        raise _ObjectSkip("invalid_polygon", str(error)) from error


def decode_example(example: Mapping[str, Any], spec: AnnotationSpec, sample_id: str = "") -> DecodedExample:
    """
    Read one example into an RGB image and its objects' binary masks.

    Args:
        example (`Mapping[str, Any]`):
            A dataset row. Image and map columns may be decoded (`PIL.Image`) or not (`{"bytes", "path"}`).
        spec (`AnnotationSpec`):
            Where the image and annotations are, and how to read them.
        sample_id (`str`, *optional*):
            Names the row in errors.

    Returns:
        [`DecodedExample`]: `image` (RGB, or `None` when the row is skipped), `masks` of shape
        `(num_objects, height, width)` bool (the valid objects, in annotation order), `skipped`, a `Counter`
        of skipped rows / objects per reason (see `SKIP_REASONS`), and `notes`, one of masks read in a noteworthy
        way (see `NOTE_REASONS`). Images and masks are read upright (EXIF orientation applied, see `upright`).

    Raises:
        `ValueError`: with `spec.on_invalid == "raise"`, on the first invalid image or object, naming the sample,
        the reason and the problem; whatever `on_invalid`, for a binary mask with more than two values (see
        `AnnotationSpec.mask_threshold`), naming the sample and the options that settle it.
    """
    skipped: Counter = Counter()
    notes: Counter = Counter()

    def skip(reason: str, detail: str, count: int = 1) -> None:
        if spec.on_invalid == "raise" and reason not in ("no_objects", "crowd"):
            raise ValueError(f"Sample {sample_id!r}: {reason}: {detail}")
        skipped[reason] += count

    def row_skipped(reason: str, detail: str) -> DecodedExample:
        skip(reason, detail)
        return DecodedExample(None, np.zeros((0, 0, 0), dtype=bool), skipped, notes)

    if example[spec.image_column] is None:
        return row_skipped("missing_image", f"no image in column '{spec.image_column}'")
    try:
        image = to_rgb(_open_image(example[spec.image_column])[0])
    except ValueError as error:
        return row_skipped("corrupt_image", str(error))
    height, width = image.height, image.width

    annotation = example[spec.mask_column]
    if annotation is None and spec.annotation_format != AnnotationFormat.COCO_OBJECTS:
        return row_skipped("missing_mask", f"no mask in column '{spec.mask_column}'")
    if spec.annotation_format == AnnotationFormat.COCO_OBJECTS:
        try:
            coco_objects = _unbatch_objects(annotation)
        except (TypeError, ValueError) as error:
            return row_skipped("corrupt_mask", f"cannot read objects: {error}")
        candidates = []
        for index, coco_object in enumerate(coco_objects):
            try:
                candidates.append(_coco_object_mask(coco_object, height, width, spec))
            except _ObjectSkip as error:
                skip(error.reason, f"object {index}: {error}")
    else:
        try:
            label_map, lossy = _read_map(annotation)
        except ValueError as error:
            return row_skipped("corrupt_mask", str(error))
        try:
            candidates = list(_objects_from_map(label_map, lossy, spec))
        except _MaskValuesError as error:
            raise ValueError(f"Sample {sample_id!r}: {error}") from None
        if lossy:
            notes["jpeg_mask"] += 1
        if label_map.shape != (height, width):
            if candidates or spec.annotation_format == AnnotationFormat.BINARY_MASK:
                skip(
                    "mask_size_mismatch",
                    f"map size {list(label_map.shape)} != image size {[height, width]}",
                    count=max(len(candidates), 1),
                )
            candidates = []

    masks = []
    for mask in candidates:
        area = int(mask.sum())
        if area == 0:
            skip("empty_mask", "empty mask")
        elif area < spec.min_area:
            skip("too_small", f"object of {area} pixels < min_area={spec.min_area}")
        else:
            masks.append(mask)
    if not masks:
        skip("no_objects", "no valid object")
        return DecodedExample(image, np.zeros((0, height, width), dtype=bool), skipped, notes)
    return DecodedExample(image, np.stack(masks), skipped, notes)


# ---------------------------------------------------------------------------------------------------------------
# Normalizing a whole dataset
# ---------------------------------------------------------------------------------------------------------------


def _encoded_image(value: Mapping[str, Any], image: Image.Image) -> dict[str, Any]:
    """
    The `image` column's value for a decoded upright RGB `image` read from the undecoded `value` (`{"bytes",
    "path"}`): the original file bytes when the file is already upright RGB (no re-encoding, so a JPEG stays a JPEG),
    else a lossless PNG, so that no later reader depends on applying an EXIF orientation.
    """
    original = value["bytes"] if value.get("bytes") is not None else Path(value["path"]).read_bytes()
    header = Image.open(io.BytesIO(original))  # reads the header only
    if header.mode == "RGB" and header.getexif().get(ORIENTATION_TAG, 1) == 1:
        return {"bytes": original, "path": None}
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _normalize_batch(batch: dict[str, list], indices: list[int], spec: AnnotationSpec) -> dict[str, list]:
    """`datasets.map` function: rows of any format -> normalized rows plus per-row skip reasons."""
    output = {"sample_id": [], "image": [], "masks": [], "num_objects": [], "skip_reasons": [], "note_reasons": []}
    for position, row_index in enumerate(indices):
        example = {column: values[position] for column, values in batch.items()}
        sample_id = str(example[spec.id_column]) if spec.id_column is not None else str(row_index)
        decoded = decode_example(example, spec, sample_id)
        has_objects = len(decoded.masks) > 0
        output["sample_id"].append(sample_id)
        output["image"].append(_encoded_image(example[spec.image_column], decoded.image) if has_objects else None)
        output["masks"].append([encode_rle(mask) for mask in decoded.masks])
        output["num_objects"].append(len(decoded.masks))
        output["skip_reasons"].append([reason for reason, count in decoded.skipped.items() for _ in range(count)])
        output["note_reasons"].append([reason for reason, count in decoded.notes.items() for _ in range(count)])
    return output


def prepare_dataset(
    dataset: datasets.Dataset,
    spec: AnnotationSpec | None = None,
    *,
    batch_size: int = 64,
    num_proc: int | None = None,
    **detect_options: Any,
) -> tuple[datasets.Dataset, SkipReport]:
    """
    Normalize a segmentation dataset of any supported format for training.

    The result has one row per usable image, with features `NORMALIZED_FEATURES`:
    - `sample_id` (`str`): `spec.id_column`'s value, or the row index; unique (checked);
    - `image` (`datasets.Image`): the RGB image (original bytes when already RGB, else PNG);
    - `masks` (`list` of COCO uncompressed RLE `{"size": [height, width], "counts": [...]}`): one per object, each
      of the image's size, in annotation order.
    Rows that keep no object are removed (and counted). The embedding cache adds an `image_embeddings` column to this
    dataset; [`SamPromptCollator`] reads either.

    Args:
        dataset (`datasets.Dataset`):
            A dataset in one of the supported formats (one split).
        spec (`AnnotationSpec`, *optional*):
            How to read it; detected with [`detect_annotation_spec`] from `detect_options` when `None`.
        batch_size (`int`, *optional*, defaults to 64):
            Rows per `datasets.map` batch.
        num_proc (`int`, *optional*):
            Worker processes for `datasets.map`.
        detect_options:
            Passed to [`detect_annotation_spec`] (e.g. `image_column`, `mask_column`, `class_ids`).

    Returns:
        `tuple` of the normalized `datasets.Dataset` and its [`SkipReport`].

    Raises:
        `ValueError`: when `spec.id_column` has duplicate values, or (with `on_invalid="raise"`) on invalid data.
    """
    if spec is None:
        spec = detect_annotation_spec(dataset, **detect_options)
    elif detect_options:
        raise ValueError(f"Pass either spec or detection options, not both (got {sorted(detect_options)}).")
    # Undecoded images and maps, so that a corrupt file is a counted skip inside `decode_example`, not a crash
    # while datasets decodes the batch.
    source = dataset.cast_column(spec.image_column, datasets.Image(decode=False))
    if isinstance(source.features[spec.mask_column], datasets.Image):
        source = source.cast_column(spec.mask_column, datasets.Image(decode=False))
    features = NORMALIZED_FEATURES.copy()
    features["num_objects"] = datasets.Value("int64")
    features["skip_reasons"] = datasets.List(datasets.Value("string"))
    features["note_reasons"] = datasets.List(datasets.Value("string"))
    normalized = source.map(
        _normalize_batch,
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        fn_kwargs={"spec": spec},
        remove_columns=source.column_names,
        features=features,
        num_proc=num_proc,
        desc="Normalizing annotations",
    )

    report = SkipReport(num_rows=len(normalized))
    sample_ids = list(normalized["sample_id"])
    if spec.id_column is not None and len(set(sample_ids)) != len(sample_ids):
        duplicates = sorted(sample_id for sample_id, count in Counter(sample_ids).items() if count > 1)[:5]
        raise ValueError(
            f"id_column '{spec.id_column}' has duplicate values (e.g. {duplicates}); sample ids must be unique. "
            "Pass another id_column, or id_column=None to use row indices."
        )
    kept_rows = []
    rows = zip(sample_ids, normalized["skip_reasons"], normalized["note_reasons"], strict=True)
    for row, (sample_id, reasons, note_reasons) in enumerate(rows):
        for reason, count in (Counter(reasons) + Counter(note_reasons)).items():
            report.add(reason, sample_id, count)
        if not ROW_SKIP_REASONS.intersection(reasons):
            kept_rows.append(row)
    num_objects = np.asarray(normalized["num_objects"])
    normalized = normalized.select(kept_rows).remove_columns(["num_objects", "skip_reasons", "note_reasons"])
    report.kept_images = len(kept_rows)
    report.kept_objects = int(num_objects[kept_rows].sum())
    for reason, count in sorted(report.notes.items()):
        examples = ", ".join(report.examples[reason])
        logger.warning(f"{count} masks: {reason}: {NOTE_REASONS[reason]}; e.g. samples {examples}.")
    return normalized, report


# ---------------------------------------------------------------------------------------------------------------
# Local folders
# ---------------------------------------------------------------------------------------------------------------

FOLDER_MASK_COLUMNS = {
    AnnotationFormat.BINARY_MASK: "mask",
    AnnotationFormat.INSTANCE_MAP: "instance_mask",
    AnnotationFormat.SEMANTIC_MAP: "semantic_mask",
}


def load_image_mask_folder(
    directory: str | os.PathLike,
    *,
    images_subdir: str = "images",
    masks_subdir: str = "masks",
    annotation_format: AnnotationFormat | str = AnnotationFormat.BINARY_MASK,
) -> datasets.Dataset:
    """
    Load a folder of images and masks, paired by relative path without extension (`images/a/x.jpg` with
    `masks/a/x.png`), as a `datasets.Dataset` that [`prepare_dataset`] reads without further options (for a
    semantic map, pass `class_ids`).

    Args:
        directory (`str` or `os.PathLike`):
            The folder holding `images_subdir` and `masks_subdir`.
        images_subdir (`str`, *optional*, defaults to `"images"`), masks_subdir (`str`, *optional*, defaults to
        `"masks"`):
            Sub-folders of images and of masks (searched recursively; any image extension PIL knows).
        annotation_format (`AnnotationFormat` or `str`, *optional*, defaults to `"binary_mask"`):
            What the mask files are: `binary_mask` (non-zero = object), `instance_map` or `semantic_map`.

    Returns:
        `datasets.Dataset` with columns `sample_id` (the relative path without extension), `image` and the mask
        column (`mask`, `instance_mask` or `semantic_mask`, so that detection picks the format), sorted by
        `sample_id`. An image without a mask file (or a mask without an image file) is a row whose mask (or image) is
        `None`: [`prepare_dataset`] skips and counts it (`missing_mask`, `missing_image`), or raises in strict mode.

    Raises:
        `ValueError`: when a sub-folder is missing or empty, or a stem has two files.
    """
    annotation_format = AnnotationFormat(annotation_format)
    if annotation_format not in FOLDER_MASK_COLUMNS:
        raise ValueError(f"A mask folder holds binary masks or id/class maps, not {annotation_format.value}.")
    extensions = {extension.lower() for extension in Image.registered_extensions()}

    def files_by_stem(subdir: str) -> dict[str, Path]:
        root = Path(directory) / subdir
        if not root.is_dir():
            raise ValueError(f"{root} is not a directory.")
        files: dict[str, Path] = {}
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix.lower() in extensions:
                stem = path.relative_to(root).with_suffix("").as_posix()
                if stem in files:
                    raise ValueError(f"Two files share the name {stem!r} in {root}: {files[stem].name}, {path.name}.")
                files[stem] = path
        if not files:
            raise ValueError(f"{root} holds no image file.")
        return files

    images, masks = files_by_stem(images_subdir), files_by_stem(masks_subdir)
    stems = sorted(set(images) | set(masks))
    mask_column = FOLDER_MASK_COLUMNS[annotation_format]
    dataset = datasets.Dataset.from_dict(
        {
            "sample_id": stems,
            "image": [str(images[stem]) if stem in images else None for stem in stems],
            mask_column: [str(masks[stem]) if stem in masks else None for stem in stems],
        },
        features=datasets.Features({name: datasets.Value("string") for name in ("sample_id", "image", mask_column)}),
    )
    return dataset.cast_column("image", datasets.Image()).cast_column(mask_column, datasets.Image())

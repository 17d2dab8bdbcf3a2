"""Binary-mask codecs in numpy: COCO run-length encoding (uncompressed and compressed), COCO polygons, boxes.

COCO's RLE walks the mask in column-major (Fortran) order and stores alternating run lengths, starting with a run of
zeros (possibly of length 0). Uncompressed RLE keeps the runs as a list of ints, the format transformers' SAM image
processors use; compressed RLE (pycocotools' `rleToString`) stores them as an ASCII string. Every decoder here
validates its input and raises `ValueError` with the reason, so callers can skip and count a malformed annotation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """
    Encode a binary mask as COCO uncompressed RLE.

    Args:
        mask (`np.ndarray` of shape `(height, width)`):
            Binary mask; any dtype, non-zero is foreground.

    Returns:
        `dict` with `"size": [height, width]` and `"counts": list[int]`, the lengths of alternating runs of 0s and 1s
        in column-major order, starting with the run of 0s (0 when the first pixel is foreground). The counts sum to
        `height * width`.
    """
    if mask.ndim != 2:
        raise ValueError(f"Expected a 2D mask of shape (height, width), got shape {mask.shape}.")
    height, width = mask.shape
    pixels = np.asarray(mask, dtype=bool).ravel(order="F")  # (height * width,) column-major
    # Run boundaries: position 0, every change of value, and the end; a leading 1 gets an empty run of 0s first.
    changes = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    boundaries = np.concatenate([[0], changes, [pixels.size]])
    counts = np.diff(boundaries).tolist()
    if pixels.size > 0 and pixels[0]:
        counts = [0] + counts
    return {"size": [int(height), int(width)], "counts": [int(count) for count in counts]}


def decode_compressed_counts(counts: str | bytes) -> list[int]:
    """
    Decode pycocotools' compressed RLE string (`rleFrString`) into run lengths.

    Each run is written as a little-endian sequence of 5-bit groups, one ASCII character (offset 48) per group, with
    bit 0x20 meaning "another group follows" and bit 0x10 of the last group carrying the sign. From the fourth run
    on, the stored value is the difference to the run two places earlier (runs of 0s and of 1s each vary smoothly).

    Args:
        counts (`str` or `bytes`):
            The `"counts"` field of a compressed COCO RLE.

    Returns:
        `list[int]`: the run lengths, not yet validated against the mask size.
    """
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("Compressed RLE string ends in the middle of a run length.")
            group = ord(counts[position]) - 48
            if not 0 <= group < 64:
                raise ValueError(f"Invalid character {counts[position]!r} in compressed RLE string.")
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value -= 1 << shift  # sign-extend the last group
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """
    Decode a COCO RLE, uncompressed (`"counts"` a list of ints) or compressed (`"counts"` a `str` / `bytes`).

    Args:
        rle (`dict`):
            `{"size": [height, width], "counts": ...}`.

    Returns:
        `np.ndarray` of shape `(height, width)` and dtype bool.

    Raises:
        `ValueError`: when `size` is not two non-negative ints, `counts` has the wrong type, holds a negative or
        non-integer run, or its runs do not sum to `height * width`.
    """
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"RLE must be a dict with 'size' and 'counts', got {type(rle).__name__}.")
    size = rle["size"]
    if (
        not isinstance(size, Sequence | np.ndarray)
        or len(size) != 2
        or not all(isinstance(side, int | np.integer) and side >= 0 for side in size)
    ):
        raise ValueError(f"RLE 'size' must be [height, width] with non-negative ints, got {size!r}.")
    height, width = int(size[0]), int(size[1])
    counts = rle["counts"]
    if isinstance(counts, str | bytes):
        runs = np.asarray(decode_compressed_counts(counts), dtype=np.int64)
    elif isinstance(counts, Sequence | np.ndarray) and all(isinstance(c, int | np.integer) for c in counts):
        runs = np.asarray(counts, dtype=np.int64)
    else:
        raise ValueError(
            f"RLE 'counts' must be a list of ints or a compressed string, got {type(counts).__name__} ({counts!r:.60})."
        )
    if (runs < 0).any():
        raise ValueError(f"RLE 'counts' has a negative run length ({int(runs.min())}).")
    if runs.sum() != height * width:
        raise ValueError(
            f"RLE 'counts' sum to {int(runs.sum())}, but size {height}x{width} has {height * width} pixels."
        )
    values = np.arange(runs.size) % 2 == 1  # runs alternate 0, 1, 0, ...
    pixels = np.repeat(values, runs)  # (height * width,) column-major
    return pixels.reshape((height, width), order="F")


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """
    Rasterize a COCO polygon segmentation: the union of its polygons.

    Args:
        polygons (`Sequence` of `Sequence[float]`):
            COCO polygons `[[x0, y0, x1, y1, ...], ...]` in pixel coordinates. A single flat list `[x0, y0, ...]` is
            accepted as one polygon.
        height (`int`), width (`int`):
            Size of the image the polygons belong to.

    Returns:
        `np.ndarray` of shape `(height, width)` and dtype bool (PIL's rasterization, outline included).

    Raises:
        `ValueError`: for no polygon, a polygon with fewer than 3 points or an odd number of coordinates, or a
        non-finite coordinate.
    """
    if len(polygons) > 0 and isinstance(polygons[0], int | float | np.number):
        polygons = [polygons]
    if len(polygons) == 0:
        raise ValueError("Polygon segmentation has no polygon.")
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        coordinates = np.asarray(polygon, dtype=np.float64).ravel()
        if coordinates.size % 2 != 0:
            raise ValueError(f"Polygon has an odd number of coordinates ({coordinates.size}).")
        if coordinates.size < 6:
            raise ValueError(f"Polygon has {coordinates.size // 2} points; at least 3 are needed.")
        if not np.isfinite(coordinates).all():
            raise ValueError("Polygon has a non-finite coordinate.")
        draw.polygon(coordinates.tolist(), fill=1, outline=1)
    return np.array(canvas, dtype=bool)


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """
    Tight bounding box of a binary mask, in SAM's convention: inclusive pixel indices (the prompt encoder adds 0.5
    to reach pixel centres), as transformers' `_batched_mask_to_box`.

    Args:
        mask (`np.ndarray` of shape `(height, width)`):
            Binary mask with at least one foreground pixel.

    Returns:
        `np.ndarray` of shape `(4,)`, dtype float64: `(x_min, y_min, x_max, y_max)`.

    Raises:
        `ValueError`: for an empty mask, which has no box.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("Empty mask has no bounding box.")
    return np.array([columns[0], rows[0], columns[-1], rows[-1]], dtype=np.float64)

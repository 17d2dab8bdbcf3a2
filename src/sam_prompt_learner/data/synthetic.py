"""Embedded synthetic task suite: deterministic, download-free promptable-segmentation sets as `DatasetDict`s.

* `simple`: 1-3 plain shapes on plain, noisy or striped backgrounds: what any promptable segmenter must get right.
* `generic`: shapes of many kinds and sizes with occlusion and nested part/whole objects over photographic and
  procedural textures. Every object is annotated, parts and wholes alike: the pre-training set for a tiny SAM.
* `face_parts`, `banners`, `plates`: task scenarios in the spirit of the paper's (facial parts, outdoor banners,
  licence plates). Each image holds a part/whole hierarchy where a click could mean several nested regions, but
  `objects` only holds the region the task wants; the other parts are painted in the image and left unannotated.

Every split is built with `Dataset.from_dict`, whose fingerprint is a hash of the table's content, so re-generating
with the same arguments yields byte-identical images, masks and `_fingerprint` (and `datasets` caches keyed on it).
Each row is drawn from its own random generator seeded by `(seed, task, split, row index)`: a row does not depend
on the sizes of the splits, and the splits never share a seed. Byte-identity holds for given versions of numpy, Pillow
(rasterisation, its bundled font) and scikit-image (the photographs); another version may change pixels.
"""

from __future__ import annotations

import string
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from datasets import Dataset, DatasetDict, DatasetInfo, Features, List, Value
from datasets import Image as ImageFeature
from datasets.utils import tqdm as hf_tqdm
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from scipy import ndimage

from .masks import encode_rle, mask_to_box
from .synthetic_textures import (
    MATERIAL_PHOTOGRAPHS,
    SCENE_PHOTOGRAPHS,
    color_jitter,
    photograph_crop,
    random_color,
    random_fill,
    tinted_photograph,
)

SPLITS = ("train", "validation", "test")
# Image ids are `split index * IMAGE_ID_STRIDE + row index`, unique within a task whatever the split sizes.
IMAGE_ID_STRIDE = 10_000_000
# Object ids are `image id * OBJECTS_PER_IMAGE_STRIDE + object index`, unique within a task.
OBJECTS_PER_IMAGE_STRIDE = 1_000

SYNTHETIC_FEATURES = Features(
    {
        "image": ImageFeature(),
        "image_id": Value("int64"),
        "task": Value("string"),
        "objects": List(
            {
                "id": Value("int64"),
                "bbox": List(Value("float32"), length=4),  # COCO [x, y, width, height] in pixels
                "category": Value("string"),
                "segmentation": {"size": List(Value("int64"), length=2), "counts": List(Value("int64"))},
            }
        ),
    }
)

SHAPE_KINDS = ("ellipse", "rounded_rectangle", "polygon", "star", "blob", "ring", "crescent")
GLYPHS = string.ascii_uppercase + string.digits


@dataclass
class SceneObject:
    """One annotated object: its category and its visible mask of shape `(height, width)`, dtype bool."""

    category: str
    mask: np.ndarray


@dataclass
class SyntheticScene:
    """
    A rendered scene before encoding.

    Attributes:
        image (`np.ndarray` of shape `(height, width, 3)`, uint8): the RGB image.
        objects (`list[SceneObject]`): what the task wants segmented, the rows' `objects`.
        distractors (`dict[str, np.ndarray]`):
            Visible masks, shape `(height, width)` and dtype bool, of the parts painted in the image that the task does
            not want (e.g. `"characters"` on a plate, `"hair"` around the skin), for tests and ambiguity analyses.
    """

    image: np.ndarray
    objects: list[SceneObject]
    distractors: dict[str, np.ndarray] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------------
# Geometry: outlines as vertex arrays of shape (num_vertices, 2) in (x, y) pixel coordinates, rasterized by PIL.
# ---------------------------------------------------------------------------------------------------------------------


def _polygon_mask(vertices: np.ndarray, image_size: int) -> np.ndarray:
    """Rasterize a polygon with vertices of shape `(num_vertices, 2)` into a `(image_size, image_size)` bool mask."""
    canvas = Image.new("L", (image_size, image_size), 0)
    ImageDraw.Draw(canvas).polygon(vertices.ravel().tolist(), fill=255)
    return np.asarray(canvas) > 0


def _trapezoid_mask(
    center_x: float, top: float, bottom: float, top_half_width: float, bottom_half_width: float, image_size: int
) -> np.ndarray:
    """Rasterize a trapezoid with horizontal sides (a rectangle when the half-widths match); `(size, size)` bool."""
    vertices = np.array(
        [
            [center_x - top_half_width, top],
            [center_x + top_half_width, top],
            [center_x + bottom_half_width, bottom],
            [center_x - bottom_half_width, bottom],
        ]
    )
    return _polygon_mask(vertices, image_size)


def _radial_outline(center: np.ndarray, angles: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Vertices at polar coordinates `(radii, angles)` around `center`; returns shape `(len(angles), 2)`."""
    return center + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=-1)


def _ellipse_outline(
    center: np.ndarray, radius_x: float, radius_y: float, angle: float, num_vertices: int = 48
) -> np.ndarray:
    """Vertices of an ellipse with semi-axes `(radius_x, radius_y)` rotated by `angle` radians; `(num_vertices, 2)`."""
    t = np.linspace(0.0, 2.0 * np.pi, num_vertices, endpoint=False)
    local = np.stack([radius_x * np.cos(t), radius_y * np.sin(t)], axis=-1)
    return center + _rotate(local, angle)


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    """Rotate points of shape `(num_points, 2)` by `angle` radians about the origin."""
    cos, sin = np.cos(angle), np.sin(angle)
    return points @ np.array([[cos, sin], [-sin, cos]])


def _rounded_rectangle_outline(
    center: np.ndarray, half_width: float, half_height: float, corner: float, angle: float
) -> np.ndarray:
    """Vertices of a rectangle with corners rounded to radius `corner`, rotated by `angle`; shape `(32, 2)`."""
    arc = np.linspace(0.0, np.pi / 2, 8)
    corners = []
    for quadrant, (sign_x, sign_y) in enumerate([(1, 1), (-1, 1), (-1, -1), (1, -1)]):
        corner_center = np.array([sign_x * (half_width - corner), sign_y * (half_height - corner)])
        theta = arc + quadrant * np.pi / 2
        corners.append(corner_center + corner * np.stack([np.cos(theta), np.sin(theta)], axis=-1))
    return center + _rotate(np.concatenate(corners), angle)


def _random_shape(
    rng: np.random.Generator, kind: str, center: np.ndarray, radius: float, image_size: int
) -> np.ndarray:
    """
    Rasterize a random shape of `kind` (one of `SHAPE_KINDS`) that fits in a disc of `radius` around `center`.

    Returns:
        `np.ndarray` of shape `(image_size, image_size)`, dtype bool.
    """
    angle = rng.uniform(0.0, 2.0 * np.pi)
    if kind == "ellipse":
        return _polygon_mask(_ellipse_outline(center, radius, radius * rng.uniform(0.45, 1.0), angle), image_size)
    if kind == "rounded_rectangle":
        aspect = rng.uniform(1.0, 4.0)
        half_width = radius / np.sqrt(1.0 + aspect**-2)
        half_height = half_width / aspect
        corner = rng.uniform(0.1, 0.5) * half_height
        return _polygon_mask(_rounded_rectangle_outline(center, half_width, half_height, corner, angle), image_size)
    if kind == "polygon":  # star-shaped simple polygon: jittered angles, random radii
        num_vertices = int(rng.integers(3, 9))
        angles = angle + (np.arange(num_vertices) + rng.uniform(-0.35, 0.35, num_vertices)) * 2 * np.pi / num_vertices
        return _polygon_mask(_radial_outline(center, angles, radius * rng.uniform(0.6, 1.0, num_vertices)), image_size)
    if kind == "star":
        num_points = int(rng.integers(4, 9))
        angles = angle + np.arange(2 * num_points) * np.pi / num_points
        radii = np.where(np.arange(2 * num_points) % 2 == 0, radius, radius * rng.uniform(0.35, 0.6))
        return _polygon_mask(_radial_outline(center, angles, radii), image_size)
    if kind == "blob":  # smooth radial profile from a few low harmonics
        angles = np.linspace(0.0, 2.0 * np.pi, 64, endpoint=False)
        harmonics = np.arange(2, 5)[:, None]  # (3, 1)
        profile = 1.0 + (
            rng.uniform(0.0, 0.18, (3, 1)) * np.cos(harmonics * angles + rng.uniform(0, 2 * np.pi, (3, 1)))
        ).sum(axis=0)
        return _polygon_mask(_radial_outline(center, angles, radius * profile / profile.max()), image_size)
    if kind == "ring":
        radius_y = radius * rng.uniform(0.7, 1.0)
        hole_scale = rng.uniform(0.4, 0.65)
        outer = _polygon_mask(_ellipse_outline(center, radius, radius_y, angle), image_size)
        hole = _polygon_mask(_ellipse_outline(center, radius * hole_scale, radius_y * hole_scale, angle), image_size)
        return outer & ~hole
    if kind == "crescent":  # a disc with a bite taken by an offset disc
        bite_center = center + rng.uniform(0.35, 0.6) * radius * np.array([np.cos(angle), np.sin(angle)])
        disc = _polygon_mask(_ellipse_outline(center, radius, radius, 0.0), image_size)
        bite_radius = radius * rng.uniform(0.7, 0.9)
        return disc & ~_polygon_mask(_ellipse_outline(bite_center, bite_radius, bite_radius, 0.0), image_size)
    raise ValueError(f"Unknown shape kind {kind!r}; expected one of {SHAPE_KINDS}.")


def _perspective_coefficients(target: np.ndarray, source: np.ndarray) -> tuple[float, ...]:
    """
    PIL's `Image.PERSPECTIVE` coefficients mapping each `target` (output image) corner to its `source` corner.

    Args:
        target (`np.ndarray` of shape `(4, 2)`): corners in the output image, (x, y).
        source (`np.ndarray` of shape `(4, 2)`): the matching corners in the input image.

    Returns:
        The 8 coefficients `(a, b, c, d, e, f, g, h)` of `u = (a x + b y + c) / (g x + h y + 1)`,
        `v = (d x + e y + f) / (g x + h y + 1)`.
    """
    system = np.zeros((8, 8))
    values = np.zeros(8)
    for corner, ((x, y), (u, v)) in enumerate(zip(target, source, strict=True)):
        system[2 * corner] = [x, y, 1, 0, 0, 0, -x * u, -y * u]
        system[2 * corner + 1] = [0, 0, 0, x, y, 1, -x * v, -y * v]
        values[2 * corner], values[2 * corner + 1] = u, v
    return tuple(np.linalg.solve(system, values).tolist())


def _quadrilateral(
    center: np.ndarray, angle: float, length: float, start_thickness: float, end_thickness: float
) -> np.ndarray:
    """Corners (top-left, top-right, bottom-right, bottom-left) of a tapered strip, a panel seen in perspective."""
    along = np.array([np.cos(angle), np.sin(angle)])
    across = np.array([-np.sin(angle), np.cos(angle)])
    start, end = center - along * length / 2, center + along * length / 2
    return np.stack(
        [
            start - across * start_thickness / 2,
            end - across * end_thickness / 2,
            end + across * end_thickness / 2,
            start + across * start_thickness / 2,
        ]
    )


def _warp_panel(
    panel: np.ndarray, glyphs: np.ndarray, corners: np.ndarray, image_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Warp a flat panel (a banner, a plate) onto the quadrilateral `corners` of the image.

    Args:
        panel (`np.ndarray` of shape `(panel_height, panel_width, 3)`): the panel's colours, float in [0, 1].
        glyphs (`np.ndarray` of shape `(panel_height, panel_width)`): bool mask of the characters printed on it.
        corners (`np.ndarray` of shape `(4, 2)`): where the panel's top-left, top-right, bottom-right and
            bottom-left corners land in the image.
        image_size (`int`): side of the square image.

    Returns:
        `(colors, panel_mask, glyph_mask)`: `(image_size, image_size, 3)` float32 colours (valid inside the panel),
        and two `(image_size, image_size)` bool masks; the glyph mask lies inside the panel mask.
    """
    pad = 2  # edge-replicated margin so bilinear sampling at the panel's border never reads the black outside
    height, width = glyphs.shape
    source = np.array([[pad, pad], [pad + width, pad], [pad + width, pad + height], [pad, pad + height]], float)
    coefficients = _perspective_coefficients(corners, source)

    def warp(array: np.ndarray, resample: Image.Resampling) -> np.ndarray:
        warped = Image.fromarray(array).transform((image_size, image_size), Image.PERSPECTIVE, coefficients, resample)
        return np.asarray(warped)

    padded_panel = np.pad(np.round(panel * 255).astype(np.uint8), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    inside = np.pad(np.full((height, width), 255, np.uint8), pad)
    panel_mask = warp(inside, Image.NEAREST) > 0
    glyph_mask = (warp(np.pad(glyphs.astype(np.uint8) * 255, pad), Image.NEAREST) > 0) & panel_mask
    colors = warp(padded_panel, Image.BILINEAR).astype(np.float32) / 255.0
    return colors, panel_mask, glyph_mask


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled FreeType font (no file or network needed) at `size` pixels."""
    return ImageFont.load_default(size=size)


def _print_text(rng: np.random.Generator, height: int, width: int, font_size: int, left: int, right: int) -> np.ndarray:
    """
    Print a random string of capitals and digits, vertically centred between columns `left` and `right`.

    Returns:
        `np.ndarray` of shape `(height, width)`, bool: the glyph pixels (anti-aliasing thresholded at half ink).
    """
    font = _font(max(4, font_size))
    text = "".join(GLYPHS[index] for index in rng.integers(len(GLYPHS), size=int(rng.integers(3, 10))))
    while len(text) > 1 and font.getlength(text) > right - left:
        text = text[:-1]
    canvas = Image.new("L", (width, height), 0)
    x = left + (right - left - font.getlength(text)) / 2
    ImageDraw.Draw(canvas).text((x, height / 2), text, font=font, fill=255, anchor="lm")
    return np.asarray(canvas) > 127


# ---------------------------------------------------------------------------------------------------------------------
# Painting helpers.
# ---------------------------------------------------------------------------------------------------------------------


def _paint(canvas: np.ndarray, mask: np.ndarray, fill: np.ndarray) -> None:
    """Paint `fill` (shape `(height, width, 3)` or `(3,)`) onto `canvas` (shape `(height, width, 3)`) where `mask`."""
    canvas[mask] = fill[mask] if fill.ndim == 3 else fill


def _contrasting_fill(rng: np.random.Generator, canvas: np.ndarray, mask: np.ndarray, attempts: int = 6) -> np.ndarray:
    """A `random_fill` whose mean colour over `mask` differs from the canvas underneath, so the object is visible."""
    size = canvas.shape[0]
    underneath = canvas[mask].mean(axis=0)
    for _ in range(attempts):
        fill = random_fill(rng, size, size)
        if np.linalg.norm(fill[mask].mean(axis=0) - underneath) >= 0.2:
            break
    return fill


def _finish(rng: np.random.Generator, canvas: np.ndarray, noise: float, blur_probability: float) -> np.ndarray:
    """Sensor noise up to `noise` (std), an occasional slight defocus, and quantisation to uint8 RGB."""
    canvas = canvas + rng.normal(0.0, rng.uniform(0.0, noise), canvas.shape).astype(np.float32)
    image = Image.fromarray(np.round(np.clip(canvas, 0.0, 1.0) * 255).astype(np.uint8))
    if rng.random() < blur_probability:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.4, 0.8))))
    return np.asarray(image)


def _background(rng: np.random.Generator, image_size: int, photographs: tuple[str, ...]) -> np.ndarray:
    """A colour-jittered crop of one of `photographs`, the scenario backgrounds; `(image_size, image_size, 3)`."""
    return color_jitter(rng, photograph_crop(rng, photographs, image_size, image_size, zoom=(0.3, 1.0)), 0.2)


# ---------------------------------------------------------------------------------------------------------------------
# Scenes.
# ---------------------------------------------------------------------------------------------------------------------


def _inner_parts(
    rng: np.random.Generator, whole: np.ndarray, whole_radius: float, image_size: int
) -> list[tuple[str, np.ndarray]]:
    """One or two disjoint shapes strictly inside `whole`, its parts (a window in a wall, a spot on a wing)."""
    depth = ndimage.distance_transform_edt(whole)  # (image_size, image_size): distance to the nearest outside pixel
    min_radius = max(2.5, 0.035 * image_size)
    parts = []
    for _ in range(int(rng.integers(1, 3))):
        candidates = np.flatnonzero(depth >= min_radius + 1.5)
        if candidates.size == 0:
            break
        position = candidates[rng.integers(candidates.size)]
        row, column = divmod(int(position), image_size)
        radius = max(min_radius, min(depth.flat[position] - 1.5, 0.6 * whole_radius) * rng.uniform(0.6, 1.0))
        kind = SHAPE_KINDS[rng.integers(len(SHAPE_KINDS))]
        part = _random_shape(rng, kind, np.array([column, row], float), radius, image_size) & whole
        parts.append((kind, part))
        depth = np.minimum(depth, ndimage.distance_transform_edt(~part))  # keep the next part off this one
    return parts


def _generic_scene(rng: np.random.Generator, image_size: int) -> SyntheticScene:
    """
    1-6 shapes over a textured background, painted back to front; about half hold one or two inner parts.

    Objects are, for each shape still visible enough (>= 30% of it and >= 0.15% of the image), its visible whole
    (parts included) and each visible part.
    """
    min_area = 0.0015 * image_size**2
    kept: list[list[tuple[str, np.ndarray]]] = []
    while not kept:  # the top shape can only be lost when it is a sliver: draw again
        groups = []  # painter's order; each group is [(kind, whole), (kind, part), ...]
        for _ in range(int(rng.integers(1, 7))):
            radius = image_size * np.exp(rng.uniform(np.log(0.06), np.log(0.38)))
            center = rng.uniform(0.1, 0.9, 2) * image_size
            kind = SHAPE_KINDS[rng.integers(len(SHAPE_KINDS))]
            whole = _random_shape(rng, kind, center, radius, image_size)
            parts = _inner_parts(rng, whole, radius, image_size) if rng.random() < 0.5 else []
            groups.append([(kind, whole), *parts])
        occluders = np.zeros((image_size, image_size), bool)
        for group in reversed(groups):  # front to back: what is in front decides what is visible
            whole_kind, whole = group[0]
            visible = whole & ~occluders
            area = visible.sum()
            if area < min_area or area < 0.3 * whole.sum():
                continue  # dropped: neither painted nor annotated
            parts = [(kind, part & visible) for kind, part in group[1:] if (part & visible).sum() >= 0.6 * min_area]
            kept.insert(0, [(whole_kind, visible)] + parts)
            occluders |= whole

    canvas = random_fill(rng, image_size, image_size)
    objects = []
    for group in kept:
        for kind, mask in group:  # the whole first, then its parts over it
            _paint(canvas, mask, _contrasting_fill(rng, canvas, mask))
            objects.append(SceneObject(kind, mask))
    return SyntheticScene(_finish(rng, canvas, noise=0.03, blur_probability=0.0), objects)


SIMPLE_SHAPE_KINDS = ("ellipse", "rectangle", "triangle", "blob")


def _simple_shape(
    rng: np.random.Generator, kind: str, center: np.ndarray, radius: float, image_size: int
) -> np.ndarray:
    """A plain shape of `kind` (one of `SIMPLE_SHAPE_KINDS`) within `radius` of `center`; `(size, size)` bool."""
    if kind == "rectangle":
        aspect = rng.uniform(1.0, 2.5)
        half_width = radius / np.sqrt(1.0 + aspect**-2)
        outline = _rounded_rectangle_outline(center, half_width, half_width / aspect, 0.0, rng.uniform(0, np.pi))
        return _polygon_mask(outline, image_size)
    if kind == "triangle":
        angles = rng.uniform(0, 2 * np.pi) + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.4, 0.4, 3)
        return _polygon_mask(_radial_outline(center, angles, radius * rng.uniform(0.8, 1.0, 3)), image_size)
    return _random_shape(rng, kind, center, radius, image_size)  # "ellipse", "blob"


def _simple_background(rng: np.random.Generator, image_size: int) -> np.ndarray:
    """A plain colour, a plain colour with strong pixel noise, or two-colour stripes; `(size, size, 3)` float32."""
    kind = rng.integers(3)
    canvas = np.broadcast_to(random_color(rng), (image_size, image_size, 3)).astype(np.float32)
    if kind == 1:
        canvas = canvas + rng.normal(0.0, rng.uniform(0.05, 0.15), canvas.shape).astype(np.float32)
    elif kind == 2:
        angle, period = rng.uniform(0, np.pi), rng.uniform(4.0, 16.0)
        ys, xs = np.mgrid[:image_size, :image_size]
        stripes = (np.cos(angle) * xs + np.sin(angle) * ys) % period < period / 2
        canvas = np.where(stripes[..., None], canvas, random_color(rng)).astype(np.float32)
    return np.clip(canvas, 0.0, 1.0)


def _simple_scene(rng: np.random.Generator, image_size: int) -> SyntheticScene:
    """
    1-3 plain, uniformly coloured shapes (ellipses, rectangles, triangles, blobs; radius 9-23% of the image) over a
    plain, noisy or striped background, painted back to front. Objects are the visible part of each shape that keeps
    >= 30% of its area: the easiest promptable segmentation, the first stage of pre-training.
    """
    kept: list[tuple[str, np.ndarray]] = []
    while not kept:
        shapes = []
        for _ in range(int(rng.integers(1, 4))):
            radius = image_size * rng.uniform(0.09, 0.23)
            kind = SIMPLE_SHAPE_KINDS[rng.integers(len(SIMPLE_SHAPE_KINDS))]
            shapes.append((kind, _simple_shape(rng, kind, rng.uniform(0.15, 0.85, 2) * image_size, radius, image_size)))
        occluders = np.zeros((image_size, image_size), bool)
        for kind, shape in reversed(shapes):  # front to back
            visible = shape & ~occluders
            if visible.sum() >= max(0.3 * shape.sum(), 0.0015 * image_size**2):
                kept.insert(0, (kind, visible))
            occluders |= shape
    canvas = _simple_background(rng, image_size)
    objects = []
    for kind, mask in kept:
        underneath = canvas[mask].mean(axis=0)
        for _ in range(6):  # a colour that stands out from what is underneath
            fill = random_color(rng)
            if np.linalg.norm(fill - underneath) >= 0.3:
                break
        _paint(canvas, mask, fill)
        objects.append(SceneObject(kind, mask))
    return SyntheticScene(_finish(rng, canvas, noise=0.02, blur_probability=0.0), objects)


SKIN_TONES = np.array(
    [[0.96, 0.80, 0.69], [0.92, 0.72, 0.58], [0.80, 0.58, 0.43], [0.63, 0.43, 0.30], [0.45, 0.30, 0.20]], np.float32
)
HAIR_COLORS = np.array(
    [[0.07, 0.05, 0.04], [0.22, 0.13, 0.07], [0.42, 0.27, 0.13], [0.78, 0.62, 0.36], [0.55, 0.24, 0.10]], np.float32
)
IRIS_COLORS = np.array([[0.30, 0.18, 0.08], [0.25, 0.45, 0.70], [0.30, 0.50, 0.30], [0.15, 0.10, 0.07]], np.float32)


def _face_scene(rng: np.random.Generator, image_size: int) -> SyntheticScene:
    """
    A frontal face: shoulders, neck, ears, skin, hair (a fringe, sometimes long), brows, eyes, nose shading, lips.

    The task wants the facial **skin**: the face minus hair, brows, eyes and mouth (the nose is skin; neck and ears
    are not). A click on the cheek plausibly means the whole head; a click near the hairline invites the hair.
    """
    canvas = _background(rng, image_size, SCENE_PHOTOGRAPHS + ("brick", "grass"))
    # Isotropic face frame in units of the face's half-width, rotated by the head's tilt: x right, y down.
    half_width = image_size * rng.uniform(0.17, 0.25)
    elongation = rng.uniform(1.2, 1.4)  # half-height / half-width
    center = image_size * np.array([rng.uniform(0.4, 0.6), rng.uniform(0.42, 0.52)])
    tilt = rng.uniform(-0.25, 0.25)
    rows, columns = np.mgrid[0:image_size, 0:image_size].astype(np.float32) + 0.5
    dx, dy = columns - center[0], rows - center[1]
    x = (dx * np.cos(tilt) + dy * np.sin(tilt)) / half_width  # (image_size, image_size)
    y = (-dx * np.sin(tilt) + dy * np.cos(tilt)) / half_width

    skin_color = np.clip(SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.92, 1.08, 3), 0, 1)
    skin = tinted_photograph(
        rng, ("chelsea", "coffee", "moon"), image_size, image_size, skin_color, rng.uniform(0.015, 0.04), (0.05, 0.2)
    )
    radial = np.sqrt(x**2 + (y / elongation) ** 2)
    skin *= (1.0 - 0.35 * np.clip(radial - 0.55, 0.0, 1.0))[..., None]  # rounder look: darker towards the rim
    hair_color = np.clip(HAIR_COLORS[rng.integers(len(HAIR_COLORS))] * rng.uniform(0.85, 1.15, 3), 0, 1)
    hair = tinted_photograph(
        rng, ("grass", "gravel"), image_size, image_size, hair_color, rng.uniform(0.05, 0.12), (0.05, 0.25)
    )

    shoulders = (x / 2.1) ** 2 + ((y - elongation - 1.3) / 1.0) ** 2 <= 1
    _paint(canvas, shoulders, _contrasting_fill(rng, canvas, shoulders))
    long_hair = np.zeros_like(shoulders)
    if rng.random() < 0.4:  # long hair falls behind the face and beside it
        length = rng.uniform(0.3, elongation + 0.8)
        long_hair = ((x / 1.2) ** 2 + ((y + 0.1) / (elongation * 1.1)) ** 2 <= 1) & (y < length)
        _paint(canvas, long_hair, hair)
    neck = (np.abs(x) <= 0.45) & (y >= 0) & (y <= elongation + 1.0)
    _paint(canvas, neck, skin * 0.78)
    ears = ((np.abs(x) - 0.98) / 0.14) ** 2 + ((y - 0.05) / 0.26) ** 2 <= 1
    _paint(canvas, ears, skin * 0.88)
    chin_narrowing = 1.0 - 0.18 * np.clip(y / elongation, 0.0, 1.0)
    face = (x / chin_narrowing) ** 2 + (y / elongation) ** 2 <= 1
    _paint(canvas, face, skin)
    nose_side = rng.choice([-1.0, 1.0])
    nose_shadow = face & (((x - 0.07 * nose_side) / 0.07) ** 2 + ((y - 0.2) / 0.26) ** 2 <= 1)
    _paint(canvas, nose_shadow, skin * 0.86)

    fringe = np.zeros_like(face)
    if rng.random() < 0.9:  # else bald
        hairline = rng.uniform(-1.0, -0.55) + rng.uniform(0.2, 0.7) * x**2 + rng.uniform(-0.15, 0.15) * x
        fringe = ((x / 1.1) ** 2 + ((y + 0.06) / (elongation * 1.1)) ** 2 <= 1) & (y < hairline)
        _paint(canvas, fringe, hair)
    brows = np.zeros_like(face)
    eyes = np.zeros_like(face)
    brow_angle = rng.uniform(-0.25, 0.2)
    gaze = rng.uniform(-0.06, 0.06)
    iris_color = IRIS_COLORS[rng.integers(len(IRIS_COLORS))]
    for side in (-1.0, 1.0):
        brow_x, brow_y = x - side * 0.4, y + 0.37
        along = brow_x * np.cos(side * brow_angle) + brow_y * np.sin(side * brow_angle)
        across = -brow_x * np.sin(side * brow_angle) + brow_y * np.cos(side * brow_angle)
        brows |= (along / 0.23) ** 2 + (across / rng.uniform(0.04, 0.065)) ** 2 <= 1
        eye = ((x - side * 0.4) / 0.2) ** 2 + ((y + 0.12) / 0.095) ** 2 <= 1
        iris = eye & ((x - side * 0.4 - gaze) ** 2 + (y + 0.12) ** 2 <= 0.075**2)
        pupil = iris & ((x - side * 0.4 - gaze) ** 2 + (y + 0.12) ** 2 <= 0.035**2)
        _paint(canvas, eye, np.float32([0.93, 0.92, 0.88]) * rng.uniform(0.85, 1.0))
        _paint(canvas, iris, iris_color)
        _paint(canvas, pupil, np.float32([0.03, 0.03, 0.03]))
        eyes |= eye
    _paint(canvas, brows, hair * 0.8)
    mouth_center = rng.uniform(0.58, 0.68)
    mouth = (x / rng.uniform(0.24, 0.34)) ** 2 + ((y - mouth_center) / rng.uniform(0.07, 0.11)) ** 2 <= 1
    lips = np.clip(skin_color * np.float32([1.0, 0.55, 0.55]) * rng.uniform(0.75, 1.0), 0, 1)
    _paint(canvas, mouth, lips)
    if rng.random() < 0.4:  # open mouth: a dark slit between the lips, still the mouth
        _paint(canvas, mouth & (np.abs(y - mouth_center) < 0.025), np.float32([0.15, 0.05, 0.05]))

    facial_skin = face & ~fringe & ~brows & ~eyes & ~mouth
    # Visible extents, in painting order: long hair < neck, ears < face < fringe < brows, eyes, mouth.
    distractors = {
        "hair": ((long_hair & ~neck & ~ears & ~face) | fringe) & ~brows & ~eyes,
        "brows": brows,
        "eyes": eyes,
        "mouth": mouth,
        "ears": ears & ~face & ~fringe,
        "neck": neck & ~face,
    }
    image = _finish(rng, canvas, noise=0.02, blur_probability=0.3)
    return SyntheticScene(image, [SceneObject("skin", facial_skin)], distractors)


def _banner_panel(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """
    The flat face of a banner: cloth (plain, two bands, or a gradient), often a border, and printed text.

    Returns:
        `(colors, glyphs)`: `(height, width, 3)` float32 and the `(height, width)` bool mask of the characters.
    """
    base = random_color(rng, 0.15, 1.0)
    cloth = tinted_photograph(rng, MATERIAL_PHOTOGRAPHS, height, width, base, rng.uniform(0.02, 0.06))
    style = rng.random()
    if style < 0.3:  # two horizontal bands
        cloth[height // 2 :] = np.clip(cloth[height // 2 :] + random_color(rng, -0.5, 0.5), 0, 1)
    elif style < 0.5:  # gradient along the banner
        cloth *= np.linspace(rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0), width, dtype=np.float32)[None, :, None]
    border = 0
    if rng.random() < 0.6:
        border = max(1, round(rng.uniform(0.06, 0.12) * height))
        frame = np.ones((height, width), bool)
        frame[border:-border, border:-border] = False
        cloth[frame] = random_color(rng)
    glyphs = _print_text(rng, height, width, round(rng.uniform(0.55, 0.75) * height), border + 2, width - border - 2)
    ink = np.float32([0.05, 0.05, 0.05]) if cloth.mean() > 0.5 else np.float32([0.97, 0.97, 0.95])
    cloth[glyphs] = ink if rng.random() < 0.7 else random_color(rng)
    return cloth, glyphs


def _banner_scene(rng: np.random.Generator, image_size: int) -> SyntheticScene:
    """
    One or two long thin printed banners, in perspective, on a cluttered photograph; some hang on poles, some have a
    pole or post passing in front.

    The task wants each **whole banner** (its border and text included, what is in front of it excluded). A click on
    a letter or on the border plausibly means that letter or border; thinness and clutter make the whole hard.
    """
    canvas = _background(rng, image_size, SCENE_PHOTOGRAPHS)
    for _ in range(int(rng.integers(2, 7))):  # clutter
        kind = SHAPE_KINDS[rng.integers(len(SHAPE_KINDS))]
        radius = image_size * rng.uniform(0.04, 0.2)
        clutter = _random_shape(rng, kind, rng.uniform(0, image_size, 2), radius, image_size)
        _paint(canvas, clutter, random_fill(rng, image_size, image_size))

    banners, glyph_masks, horizontal = [], [], []
    for _ in range(1 if rng.random() < 0.7 else 2):
        thickness = max(0.08 * image_size, image_size * rng.uniform(0.45, 0.9) / rng.uniform(3.5, 8.0))
        length = max(image_size * rng.uniform(0.45, 0.9), 3.5 * thickness)
        is_horizontal = rng.random() < 0.8
        angle = rng.uniform(-0.35, 0.35) + (0.0 if is_horizontal else np.pi / 2)
        end_thicknesses = (thickness, thickness * rng.uniform(0.7, 1.0))  # perspective: the far end looks thinner
        if rng.random() < 0.5:
            end_thicknesses = end_thicknesses[::-1]
        corners = _quadrilateral(rng.uniform(0.3, 0.7, 2) * image_size, angle, length, *end_thicknesses)
        panel, glyphs = _banner_panel(rng, round(thickness), round(length))
        colors, mask, glyph_mask = _warp_panel(panel, glyphs, corners, image_size)
        if any((mask & earlier).sum() > 0.5 * earlier.sum() for earlier in banners):
            continue  # would hide most of an earlier banner
        if rng.random() < 0.4:  # hung between two poles, behind it
            pole_width = image_size * rng.uniform(0.015, 0.03)
            pole_color = random_color(rng, 0.0, 0.6)
            pole_fill = tinted_photograph(rng, MATERIAL_PHOTOGRAPHS, image_size, image_size, pole_color, 0.05)
            for end_x, end_y in (corners[0], corners[1]):
                pole = _trapezoid_mask(end_x, end_y, image_size, pole_width, pole_width, image_size)
                _paint(canvas, pole, pole_fill)
        _paint(canvas, mask, colors)
        banners.append(mask)
        glyph_masks.append(glyph_mask)
        horizontal.append(is_horizontal)

    front = np.zeros((image_size, image_size), bool)
    if horizontal[-1] and rng.random() < 0.35:  # a post in front of the last banner, crossing it (not along it)
        columns = np.flatnonzero(banners[-1].any(axis=0))
        post_x = rng.uniform(columns[0] + 0.2 * columns.size, columns[-1] - 0.2 * columns.size)
        post_width = image_size * rng.uniform(0.02, 0.04)
        post_top = rng.uniform(0, 0.3) * image_size
        front = _trapezoid_mask(post_x, post_top, image_size, post_width / 2, post_width / 2, image_size)
        post_color = random_color(rng, 0.0, 0.5)
        _paint(canvas, front, tinted_photograph(rng, MATERIAL_PHOTOGRAPHS, image_size, image_size, post_color, 0.06))

    objects, covering = [], front.copy()
    for mask in reversed(banners):  # front to back
        objects.insert(0, SceneObject("banner", mask & ~covering))
        covering |= mask
    text = np.zeros_like(front)
    for obj, glyph_mask in zip(objects, glyph_masks, strict=True):
        text |= glyph_mask & obj.mask
    image = _finish(rng, canvas, noise=0.025, blur_probability=0.2)
    return SyntheticScene(image, objects, {"text": text, "post": front})


def _plate_panel(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """
    The flat face of a licence plate: a light background, usually a dark frame, sometimes a blue country band on
    the left, and 3-9 dark characters (fewer when they do not fit).

    Returns:
        `(colors, glyphs)`: `(height, width, 3)` float32 and the `(height, width)` bool mask of the characters.
    """
    palette = np.float32([[0.93, 0.93, 0.9], [0.96, 0.8, 0.15], [0.8, 0.88, 0.95]])
    background = palette[rng.choice(3, p=[0.6, 0.25, 0.15])] * rng.uniform(0.8, 1.0)
    plate = tinted_photograph(rng, MATERIAL_PHOTOGRAPHS, height, width, background, rng.uniform(0.01, 0.03))
    frame = max(1, round(0.07 * height)) if rng.random() < 0.8 else 0
    if frame:
        border = np.ones((height, width), bool)
        border[frame:-frame, frame:-frame] = False
        plate[border] = np.float32([0.1, 0.1, 0.12])
    left = frame
    if rng.random() < 0.35:  # country band
        band = max(2, round(0.12 * width))
        plate[frame : height - frame, frame : frame + band] = np.float32([0.1, 0.2, 0.65])
        left = frame + band
    glyphs = _print_text(rng, height, width, round(rng.uniform(0.65, 0.8) * height), left + 1, width - frame - 1)
    plate[glyphs] = np.float32([0.05, 0.05, 0.08]) if rng.random() < 0.85 else np.float32([0.6, 0.08, 0.08])
    return plate, glyphs


def _plate_scene(rng: np.random.Generator, image_size: int) -> SyntheticScene:
    """
    The front of a car close up: body, windscreen, wheels, headlights, a slatted grille, a bumper and a licence
    plate (in slight perspective) carrying characters.

    The task wants the **whole plate**, characters included. A click on a character plausibly means that character,
    a click on the plate's margin the bumper or the car.
    """
    canvas = _background(rng, image_size, SCENE_PHOTOGRAPHS + ("brick", "gravel"))
    plate_width = image_size * rng.uniform(0.22, 0.4)
    plate_height = max(0.08 * image_size, plate_width / rng.uniform(2.0, 4.2))
    plate_center = image_size * np.array([rng.uniform(0.3, 0.7), rng.uniform(0.55, 0.75)])
    car_width = plate_width * rng.uniform(3.2, 4.5)
    left = plate_center[0] - car_width * rng.uniform(0.42, 0.58)
    right = left + car_width
    plate_top = plate_center[1] - plate_height / 2
    beltline = plate_top - plate_height * rng.uniform(1.2, 2.0)  # where the bonnet meets the windscreen
    bottom = plate_center[1] + plate_height * rng.uniform(1.2, 2.0)
    roof = beltline - (bottom - beltline) * rng.uniform(0.6, 0.9)

    for side in (left + 0.14 * car_width, right - 0.14 * car_width):  # wheels, behind the body
        wheel_outline = _ellipse_outline(np.array([side, bottom]), 0.1 * car_width, 0.35 * (bottom - plate_top), 0.0)
        _paint(canvas, _polygon_mask(wheel_outline, image_size), np.float32([0.06, 0.06, 0.06]))
    paint_color = random_color(rng, 0.05, 0.95)
    body_fill = tinted_photograph(
        rng, MATERIAL_PHOTOGRAPHS, image_size, image_size, paint_color, rng.uniform(0.01, 0.03)
    )
    body_fill = np.clip(body_fill * np.linspace(1.1, 0.75, image_size, dtype=np.float32)[:, None, None], 0, 1)
    front_center = np.array([(left + right) / 2, (beltline + bottom) / 2])
    front = _polygon_mask(
        _rounded_rectangle_outline(front_center, car_width / 2, (bottom - beltline) / 2, 0.25 * (bottom - beltline), 0),
        image_size,
    )
    center_x = (left + right) / 2
    cabin = _trapezoid_mask(center_x, roof, beltline + 1, 0.3 * car_width, 0.44 * car_width, image_size)
    body = front | cabin
    _paint(canvas, body, body_fill)
    glass_top, glass_bottom = roof + 0.12 * (beltline - roof), beltline - 0.05 * (beltline - roof)
    windscreen = _trapezoid_mask(center_x, glass_top, glass_bottom, 0.26 * car_width, 0.39 * car_width, image_size)
    _paint(canvas, windscreen, photograph_crop(rng, SCENE_PHOTOGRAPHS, image_size, image_size) * 0.35 + 0.05)
    # Headlights and grille share the band between the bonnet's edge and the plate.
    lamp_y, lamp_half_height = (beltline + plate_top) / 2, 0.3 * (plate_top - beltline)
    headlight_color = np.float32([0.95, 0.93, 0.8]) * rng.uniform(0.8, 1.0)
    headlights = np.zeros((image_size, image_size), bool)
    for side in (left + 0.15 * car_width, right - 0.15 * car_width):
        lamp_outline = _ellipse_outline(np.array([side, lamp_y]), 0.1 * car_width, lamp_half_height, 0.0)
        headlights |= _polygon_mask(lamp_outline, image_size)
    _paint(canvas, headlights, headlight_color)
    grille_width = min(plate_width * rng.uniform(1.1, 1.8), 0.45 * car_width)
    grille_outline = _rounded_rectangle_outline(
        np.array([center_x, lamp_y]), grille_width / 2, lamp_half_height, 0.3 * lamp_half_height, 0.0
    )
    grille = _polygon_mask(grille_outline, image_size)
    slat_period = max(2, round(lamp_half_height / 2))
    slats = np.where((np.arange(image_size) // slat_period) % 2 == 0, 0.08, 0.25).astype(np.float32)  # per row
    _paint(canvas, grille, np.broadcast_to(slats[:, None, None], (image_size, image_size, 3)))
    bumper_half_height = plate_height * rng.uniform(0.7, 1.1)
    bumper = front & (np.abs(np.arange(image_size)[:, None] + 0.5 - plate_center[1]) <= bumper_half_height)
    bumper_fill = body_fill * rng.uniform(0.5, 0.9) if rng.random() < 0.6 else np.float32([0.1, 0.1, 0.1])
    _paint(canvas, bumper, bumper_fill)

    corners = _quadrilateral(
        plate_center, rng.uniform(-0.12, 0.12), plate_width, plate_height, plate_height * rng.uniform(0.85, 1.0)
    )
    panel, glyphs = _plate_panel(rng, round(plate_height), round(plate_width))
    colors, plate, characters = _warp_panel(panel, glyphs, corners, image_size)
    _paint(canvas, plate, colors)
    distractors = {
        "characters": characters,
        "body": body & ~plate & ~windscreen & ~headlights & ~grille & ~bumper,
        "bumper": bumper & ~plate,
        "grille": grille & ~plate,
        "headlights": headlights,
    }
    image = _finish(rng, canvas, noise=0.02, blur_probability=0.3)
    return SyntheticScene(image, [SceneObject("licence_plate", plate)], distractors)


# ---------------------------------------------------------------------------------------------------------------------
# Registry and datasets.
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SyntheticTask:
    description: str
    render: Callable[[np.random.Generator, int], SyntheticScene]
    default_sizes: tuple[int, int, int]  # train, validation, test


_TASKS = {
    "simple": _SyntheticTask(
        "1-3 plain, uniformly coloured shapes (ellipses, rectangles, triangles, blobs) with occlusion over plain, "
        "noisy or striped backgrounds; every visible shape annotated. The first stage of the tiny SAM's pre-training.",
        _simple_scene,
        (2000, 200, 200),
    ),
    "generic": _SyntheticTask(
        "Promptable segmentation of shapes (ellipses, rounded rectangles, polygons, stars, blobs, rings, crescents) "
        "with occlusion and nested parts over photographic and procedural textures; every whole and part annotated.",
        _generic_scene,
        (2000, 200, 200),
    ),
    "face_parts": _SyntheticTask(
        "Frontal faces (hair, brows, eyes, nose, lips, ears, neck, shoulders); the task wants the facial skin only.",
        _face_scene,
        (400, 100, 100),
    ),
    "banners": _SyntheticTask(
        "Long thin printed banners in perspective on cluttered photographs; the task wants each whole banner, "
        "text and border included.",
        _banner_scene,
        (400, 100, 100),
    ),
    "plates": _SyntheticTask(
        "Car fronts with a licence plate carrying characters; the task wants the whole plate even where a click lands "
        "on a character.",
        _plate_scene,
        (400, 100, 100),
    ),
}

SYNTHETIC_TASKS: dict[str, str] = {name: task.description for name, task in _TASKS.items()}


def _check_task(name: str) -> _SyntheticTask:
    if name not in _TASKS:
        raise ValueError(f"Unknown synthetic task {name!r}; expected one of {sorted(_TASKS)}.")
    return _TASKS[name]


def generate_scene(name: str, *, split: str, index: int, image_size: int = 128, seed: int = 0) -> SyntheticScene:
    """
    Render row `index` of `split` of task `name`, exactly as `load_synthetic_task` does, with its distractor masks.

    Args:
        name (`str`): a key of `SYNTHETIC_TASKS`.
        split (`str`): one of `"train"`, `"validation"`, `"test"`.
        index (`int`): row index within the split.
        image_size (`int`, *optional*, defaults to 128): side of the square images.
        seed (`int`, *optional*, defaults to 0): the suite's seed.

    Returns:
        `SyntheticScene`.
    """
    task = _check_task(name)
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
    # crc32 of the name rather than `hash()`, which Python salts per process.
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), SPLITS.index(split), index])
    return task.render(rng, image_size)


def _scene_row(scene: SyntheticScene, name: str, image_id: int) -> dict:
    """The dataset row of a scene: COCO-style objects with uncompressed RLE and `[x, y, width, height]` boxes."""
    objects = []
    for object_index, scene_object in enumerate(scene.objects):
        x_min, y_min, x_max, y_max = mask_to_box(scene_object.mask)
        objects.append(
            {
                "id": image_id * OBJECTS_PER_IMAGE_STRIDE + object_index,
                "bbox": [x_min, y_min, x_max - x_min + 1, y_max - y_min + 1],
                "category": scene_object.category,
                "segmentation": encode_rle(scene_object.mask),
            }
        )
    return {"image": Image.fromarray(scene.image), "image_id": image_id, "task": name, "objects": objects}


def load_synthetic_task(
    name: str,
    *,
    image_size: int = 128,
    num_train: int | None = None,
    num_validation: int | None = None,
    num_test: int | None = None,
    seed: int = 0,
) -> DatasetDict:
    """
    Generate one task of the embedded synthetic suite, deterministically and without any download.

    Args:
        name (`str`):
            A key of `SYNTHETIC_TASKS`: `"simple"`, `"generic"`, `"face_parts"`, `"banners"` or `"plates"`.
        image_size (`int`, *optional*, defaults to 128):
            Side of the square RGB images, at least 64 (scenes are laid out relative to it).
        num_train (`int`, *optional*), num_validation (`int`, *optional*), num_test (`int`, *optional*):
            Rows per split; `None` takes the task's default (2000/200/200 for `simple` and `generic`, 400/100/100
            otherwise). Row `i` of a split is the same whatever the other sizes.
        seed (`int`, *optional*, defaults to 0):
            Seed of the whole suite; each row's generator is seeded by `(seed, task, split, row index)`.

    Returns:
        `DatasetDict` with `train`, `validation` and `test` splits of features `SYNTHETIC_FEATURES`: `image` (RGB
        PNG), `image_id` (unique within the task), `task`, and `objects`: a list of `{"id", "bbox" ([x, y, width,
        height]), "category", "segmentation" (COCO uncompressed RLE)}`, only what the task wants segmented.
    """
    task = _check_task(name)
    if image_size < 64:
        raise ValueError(f"image_size must be at least 64, got {image_size}.")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}.")
    requested = (num_train, num_validation, num_test)
    sizes = [default if size is None else size for size, default in zip(requested, task.default_sizes, strict=True)]
    for split, size in zip(SPLITS, sizes, strict=True):
        if not 0 <= size < IMAGE_ID_STRIDE:
            raise ValueError(f"num_{split} must be in [0, {IMAGE_ID_STRIDE}), got {size}.")

    info = DatasetInfo(description=task.description, features=SYNTHETIC_FEATURES)
    splits = {}
    for split_index, (split, size) in enumerate(zip(SPLITS, sizes, strict=True)):
        rows = [
            _scene_row(
                generate_scene(name, split=split, index=index, image_size=image_size, seed=seed),
                name,
                image_id=split_index * IMAGE_ID_STRIDE + index,
            )
            for index in hf_tqdm(range(size), desc=f"Generating {name} {split}", unit=" images")
        ]
        columns = {column: [row[column] for row in rows] for column in SYNTHETIC_FEATURES}
        # `from_dict` fingerprints the table's content: same arguments -> same `_fingerprint`, in any process.
        splits[split] = Dataset.from_dict(columns, features=SYNTHETIC_FEATURES, info=info, split=split)
    return DatasetDict(splits)

"""Fills for the synthetic task suite: photographic textures from scikit-image's bundled samples, and procedural ones.

Every fill is a float32 RGB array of shape `(height, width, 3)` in [0, 1], drawn from a `numpy.random.Generator`
so a scene is reproducible from its seed. Only the sample images that ship inside the scikit-image wheel are used;
the ones `skimage.data` would fetch from the network (e.g. `skin`, `lily`) are deliberately absent.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image

# Bundled with scikit-image (loaded offline). Grouped by what they look like when cropped and rescaled.
SCENE_PHOTOGRAPHS = ("astronaut", "camera", "chelsea", "coffee", "coins", "rocket", "hubble_deep_field")
MATERIAL_PHOTOGRAPHS = ("brick", "grass", "gravel", "moon", "immunohistochemistry", "coffee", "coins")
PHOTOGRAPHS = tuple(dict.fromkeys(SCENE_PHOTOGRAPHS + MATERIAL_PHOTOGRAPHS))


@cache
def load_photograph(name: str) -> np.ndarray:
    """
    Load one of scikit-image's bundled sample images as RGB.

    Args:
        name (`str`):
            One of `PHOTOGRAPHS`, the name of a `skimage.data` loader.

    Returns:
        `np.ndarray` of shape `(height, width, 3)` and dtype uint8 (grayscale samples are repeated over channels).
    """
    if name not in PHOTOGRAPHS:
        raise ValueError(f"Unknown photograph {name!r}; expected one of {PHOTOGRAPHS}.")
    import skimage.data  # deferred: only scene generation needs scikit-image

    photograph = np.asarray(getattr(skimage.data, name)())
    if photograph.ndim == 2:
        photograph = np.repeat(photograph[..., None], 3, axis=-1)
    return np.ascontiguousarray(photograph[..., :3].astype(np.uint8))


def random_color(rng: np.random.Generator, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """A random RGB colour of shape `(3,)`, each channel uniform in `[low, high]`."""
    return rng.uniform(low, high, size=3).astype(np.float32)


def photograph_crop(
    rng: np.random.Generator, names: tuple[str, ...], height: int, width: int, zoom: tuple[float, float] = (0.3, 1.0)
) -> np.ndarray:
    """
    A random crop of a random photograph, flipped / rotated at random and resized to `(height, width)`.

    Args:
        rng (`np.random.Generator`): source of randomness.
        names (`tuple[str, ...]`): photographs to choose from.
        height (`int`), width (`int`): size of the fill.
        zoom (`tuple[float, float]`):
            Range of the crop side as a fraction of the photograph's shorter side; small values magnify detail.

    Returns:
        `np.ndarray` of shape `(height, width, 3)`, float32 in [0, 1].
    """
    photograph = load_photograph(names[rng.integers(len(names))])
    if rng.random() < 0.5:
        photograph = np.swapaxes(photograph, 0, 1)  # transpose: a quarter turn up to a flip, for more variety
    photo_height, photo_width = photograph.shape[:2]
    side = rng.uniform(*zoom) * min(photo_height, photo_width)
    # Keep the crop's aspect equal to the fill's so the texture is not stretched.
    crop_height = max(2, min(photo_height, int(side * min(1.0, height / width))))
    crop_width = max(2, min(photo_width, int(side * min(1.0, width / height))))
    top = int(rng.integers(photo_height - crop_height + 1))
    left = int(rng.integers(photo_width - crop_width + 1))
    crop = photograph[top : top + crop_height, left : left + crop_width]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    resized = Image.fromarray(np.ascontiguousarray(crop)).resize((width, height), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32) / 255.0


def color_jitter(rng: np.random.Generator, fill: np.ndarray, strength: float = 0.3) -> np.ndarray:
    """
    Random per-channel gains, brightness and contrast, so one photograph yields many looks.

    Args:
        rng (`np.random.Generator`): source of randomness.
        fill (`np.ndarray` of shape `(height, width, 3)`): float fill in [0, 1].
        strength (`float`): spread of the random factors around 1.

    Returns:
        `np.ndarray` of the same shape, clipped to [0, 1].
    """
    gains = rng.uniform(1.0 - strength, 1.0 + strength, size=3).astype(np.float32)
    contrast = np.float32(rng.uniform(1.0 - strength, 1.0 + strength))
    brightness = np.float32(rng.uniform(-strength, strength) * 0.5)
    mean = fill.mean(axis=(0, 1), keepdims=True)
    return np.clip((fill - mean) * contrast + mean * gains + brightness, 0.0, 1.0)


def tinted_photograph(
    rng: np.random.Generator,
    names: tuple[str, ...],
    height: int,
    width: int,
    color: np.ndarray,
    detail: float,
    zoom: tuple[float, float] = (0.1, 0.5),
) -> np.ndarray:
    """
    A colour carrying the luminance detail of a photograph crop: `color + detail * standardised luminance`.

    Used for materials with a known colour but a real texture (skin, hair, painted metal, printed cloth).

    Args:
        rng (`np.random.Generator`): source of randomness.
        names (`tuple[str, ...]`): photographs to borrow the detail from.
        height (`int`), width (`int`): size of the fill.
        color (`np.ndarray` of shape `(3,)`): base RGB colour in [0, 1].
        detail (`float`): standard deviation of the added luminance detail.
        zoom (`tuple[float, float]`): as in `photograph_crop`.

    Returns:
        `np.ndarray` of shape `(height, width, 3)`, float32 in [0, 1].
    """
    luminance = photograph_crop(rng, names, height, width, zoom=zoom).mean(axis=-1, keepdims=True)
    standardised = (luminance - luminance.mean()) / (luminance.std() + 1e-3)
    return np.clip(color + np.float32(detail) * standardised, 0.0, 1.0).astype(np.float32)


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int, channels: int = 3) -> np.ndarray:
    """
    Smooth value noise: a `cells x cells` random grid upsampled bicubically.

    Returns:
        `np.ndarray` of shape `(height, width, channels)`, float32 roughly in [0, 1].
    """
    grid = rng.random((cells, cells, channels)).astype(np.float32)
    layers = [
        np.asarray(Image.fromarray(grid[..., channel], mode="F").resize((width, height), Image.BICUBIC))
        for channel in range(channels)
    ]
    return np.stack(layers, axis=-1)


def procedural_fill(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """
    A random procedural fill: flat colour, linear gradient, stripes, or coloured value noise, each with grain.

    Returns:
        `np.ndarray` of shape `(height, width, 3)`, float32 in [0, 1].
    """
    first, second = random_color(rng), random_color(rng)
    kind = rng.integers(4)
    if kind == 0:  # flat
        fill = np.broadcast_to(first, (height, width, 3))
    else:
        rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
        angle = rng.uniform(0, np.pi)
        along = (columns * np.cos(angle) + rows * np.sin(angle)) / max(height, width)  # (height, width), ~[-1, 1.5]
        if kind == 1:  # gradient
            weight = np.clip(along - along.min(), 0, None) / (np.ptp(along) + 1e-6)
        elif kind == 2:  # stripes
            period = rng.uniform(0.05, 0.25)
            weight = (np.sin(2 * np.pi * along / period) > rng.uniform(-0.5, 0.5)).astype(np.float32)
        else:  # noise
            weight = smooth_noise(rng, height, width, cells=int(rng.integers(3, 9)), channels=1)[..., 0]
        fill = first + weight[..., None] * (second - first)
    grain = rng.normal(0.0, rng.uniform(0.0, 0.05), size=(height, width, 1)).astype(np.float32)
    return np.clip(fill + grain, 0.0, 1.0).astype(np.float32)


def random_fill(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """
    The generic set's fill for objects and backgrounds: a colour-jittered photograph crop, a tinted photograph,
    or a procedural fill.

    Returns:
        `np.ndarray` of shape `(height, width, 3)`, float32 in [0, 1].
    """
    kind = rng.random()
    if kind < 0.45:
        return color_jitter(rng, photograph_crop(rng, PHOTOGRAPHS, height, width))
    if kind < 0.7:
        return tinted_photograph(rng, MATERIAL_PHOTOGRAPHS, height, width, random_color(rng), rng.uniform(0.05, 0.2))
    return procedural_fill(rng, height, width)

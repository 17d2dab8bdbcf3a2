"""Prediction grids: one PNG that shows a person what each method segments, next to the prompt and the ground truth.

Each row is one sample; its columns are the image with the prompt drawn on it, the ground-truth mask, and one
column per method (e.g. zero-shot and adapted SAM) with that method's IoU against the ground truth. Masks are shown
as a semi-transparent fill with an opaque 1-pixel contour, so that boundary errors stay visible where the fill is
faint. Small images are enlarged with nearest-neighbour sampling, so every image pixel stays a sharp square and the
masks line up with it exactly.

Only Pillow is used (no plotting library): its bundled font renders the titles without any font file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .data import to_rgb
from .metrics import binary_erosion, mask_iou

PROMPT_COLUMN_TITLE = "image + prompt"
GROUND_TRUTH_COLUMN_TITLE = "ground truth"

BACKGROUND_COLOR = (24, 24, 24)  # letterbox bars, header, gaps between panels
TEXT_COLOR = (240, 240, 240)
LABEL_BACKGROUND_COLOR = (0, 0, 0, 170)  # semi-transparent backing that keeps labels legible on any image
# Pink and cyan: far apart from each other and from the prompt colours, and rarely the colour of the object itself.
GROUND_TRUTH_COLOR = (255, 60, 170)
PREDICTION_COLOR = (0, 225, 255)
POSITIVE_POINT_COLOR = (0, 220, 0)
NEGATIVE_POINT_COLOR = (235, 20, 20)
BOX_COLOR = (0, 220, 0)  # a box marks where the object is, like a positive point
MASK_FILL_OPACITY = 0.5
MIN_PANEL_SIZE = 64  # below this the labels cover most of the panel


@dataclass
class PredictionExample:
    """
    One row of a prediction grid.

    Args:
        image (`PIL.Image.Image`):
            The image at its original size `(W, H)`; any mode, shown as RGB.
        ground_truth (`np.ndarray` of shape `(H, W)`):
            Binary ground-truth mask (bool or 0/1).
        predictions (`dict[str, np.ndarray]`):
            Method name -> binary predicted mask of shape `(H, W)`, in the order of the columns. Every example of a
            grid must have the same method names in the same order.
        points (`np.ndarray` of shape `(n, 2)`, *optional*):
            Point prompts, float `x, y` pixel indices in the original image (SAM's convention: the point is on the
            centre of that pixel).
        point_labels (`np.ndarray` of shape `(n,)`, *optional*):
            Label of each point: 1 positive, 0 negative; any other value is padding and is not drawn. Required with
            `points`.
        box (`np.ndarray` of shape `(4,)`, *optional*):
            Box prompt `x0, y0, x1, y1` as inclusive pixel indices in the original image (SAM's convention, as
            `mask_to_box` returns); drawn around the outer edges of those pixels.
        title (`str`, *optional*):
            Shown in the prompt panel, e.g. the sample id.
    """

    image: Image.Image
    ground_truth: np.ndarray
    predictions: dict[str, np.ndarray]
    points: np.ndarray | None = None
    point_labels: np.ndarray | None = None
    box: np.ndarray | None = None
    title: str = ""


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at `size` pixels (no font file needed)."""
    return ImageFont.load_default(size=size)


def _header_font_size(panel_size: int) -> int:
    return max(12, panel_size // 16)


def _label_font_size(panel_size: int) -> int:
    return max(10, panel_size // 18)


def _binary_mask(mask: np.ndarray, height: int, width: int, what: str) -> np.ndarray:
    """`mask` as a bool `(height, width)` array, or a `ValueError` naming `what` (sample and mask) and the problem."""
    mask = np.asarray(mask)
    if mask.shape != (height, width):
        raise ValueError(f"{what} has shape {mask.shape}, but the image is {height} x {width} (height x width).")
    if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
        raise ValueError(
            f"{what} is not binary (values other than 0 and 1); threshold logits first, e.g. `logits > 0`."
        )
    return mask.astype(bool)


def _checked_masks(
    example: PredictionExample, row: int, method_names: list[str]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """
    Check everything `render_prediction_grid` needs from one example, with a `ValueError` naming the row otherwise.

    Returns:
        The ground truth `(H, W)` and the predictions (method name -> `(H, W)`), as bool arrays.
    """
    sample = f"examples[{row}]" + (f" ({example.title!r})" if example.title else "")
    if not isinstance(example.image, Image.Image):
        raise ValueError(f"{sample}: image must be a PIL image, got {type(example.image).__name__}.")
    if list(example.predictions) != method_names:
        raise ValueError(
            f"{sample} has methods {list(example.predictions)}, but examples[0] has {method_names}: every row needs "
            "the same methods in the same order, one per column."
        )
    if (example.points is None) != (example.point_labels is None):
        raise ValueError(f"{sample}: points and point_labels must be given together.")
    if example.points is not None:
        points, labels = np.asarray(example.points), np.asarray(example.point_labels)
        if points.ndim != 2 or points.shape[1] != 2 or labels.shape != (points.shape[0],):
            raise ValueError(
                f"{sample}: points must have shape (n, 2) and point_labels (n,), got {points.shape} and {labels.shape}."
            )
    if example.box is not None and np.asarray(example.box).shape != (4,):
        raise ValueError(f"{sample}: box must have shape (4,) (x0, y0, x1, y1), got {np.asarray(example.box).shape}.")
    width, height = example.image.size
    ground_truth = _binary_mask(example.ground_truth, height, width, f"{sample} ground_truth")
    predictions = {
        name: _binary_mask(prediction, height, width, f"{sample} prediction {name!r}")
        for name, prediction in example.predictions.items()
    }
    return ground_truth, predictions


def _fitted_size(width: int, height: int, panel_size: int) -> tuple[int, int]:
    """Size `(w, h)` of the image scaled so that its longer side fills the panel, aspect ratio kept."""
    scale = panel_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _overlay_mask(pixels: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """
    Blend `color` over the mask and draw the mask's 1-pixel inner contour in it, opaque.

    Args:
        pixels (`np.ndarray` of shape `(h, w, 3)`): uint8 RGB panel pixels.
        mask (`np.ndarray` of shape `(h, w)`): bool mask at the panel's resolution.
        color (`tuple[int, int, int]`): RGB overlay colour.

    Returns:
        `np.ndarray` of shape `(h, w, 3)`, uint8.
    """
    # The contour is drawn at display resolution so it is one screen pixel wide whatever the upscaling.
    contour = mask & ~binary_erosion(torch.from_numpy(mask), 1).numpy()  # (h, w)
    blended = pixels.astype(np.float32)
    blended[mask] = (1 - MASK_FILL_OPACITY) * blended[mask] + MASK_FILL_OPACITY * np.asarray(color, np.float32)
    blended[contour] = color
    return np.round(blended).astype(np.uint8)


def _shortened(draw: ImageDraw.ImageDraw, text: str, font_size: int, max_width: float) -> str:
    """`text`, cut and ended with "..." if it is wider than `max_width` pixels, so that it stays in its panel."""
    font = _font(font_size)
    if draw.textlength(text, font=font) <= max_width:
        return text
    while text and draw.textlength(text + "...", font=font) > max_width:
        text = text[:-1]
    return text + "..."


def _draw_label(
    draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, font_size: int, anchor: str, max_width: float
) -> None:
    """Text on a semi-transparent dark box, so that it reads on bright and dark images alike, at most `max_width`
    pixels wide with its box."""
    font = _font(font_size)
    padding = max(2, font_size // 5)
    text = _shortened(draw, text, font_size, max_width - 2 * padding)
    left, top, right, bottom = draw.textbbox(xy, text, font=font, anchor=anchor)
    draw.rectangle((left - padding, top - padding, right + padding, bottom + padding), fill=LABEL_BACKGROUND_COLOR)
    draw.text(xy, text, font=font, fill=TEXT_COLOR, anchor=anchor)


def _draw_prompt(
    draw: ImageDraw.ImageDraw,
    example: PredictionExample,
    scale: tuple[float, float],
    offset: tuple[int, int],
    radius: int,
) -> None:
    """Draw the box (first, so that points stay on top) and the non-padding points of `example` on its panel."""
    scale_x, scale_y = scale
    offset_x, offset_y = offset
    if example.box is not None:
        x0, y0, x1, y1 = np.asarray(example.box, dtype=np.float64).tolist()
        # Inclusive pixel indices: the outline runs along the outer edges of the corner pixels.
        outline = (
            offset_x + x0 * scale_x,
            offset_y + y0 * scale_y,
            offset_x + (x1 + 1) * scale_x - 1,
            offset_y + (y1 + 1) * scale_y - 1,
        )
        draw.rectangle(outline, outline=BOX_COLOR, width=2)
    if example.points is None:
        return
    colors = {1: POSITIVE_POINT_COLOR, 0: NEGATIVE_POINT_COLOR}
    for (x, y), label in zip(
        np.asarray(example.points, dtype=np.float64), np.asarray(example.point_labels).tolist(), strict=True
    ):
        if label not in colors:
            continue  # padding
        # A point is the centre of the pixel it indexes.
        center_x, center_y = offset_x + (x + 0.5) * scale_x, offset_y + (y + 0.5) * scale_y
        draw.ellipse(
            (center_x - radius, center_y - radius, center_x + radius, center_y + radius),
            fill=colors[label],
            outline=(255, 255, 255),
            width=1,
        )
        # A white + or - inside tells the two kinds apart without relying on red vs green.
        arm = radius // 2
        draw.line((center_x - arm, center_y, center_x + arm, center_y), fill=(255, 255, 255), width=1)
        if label == 1:
            draw.line((center_x, center_y - arm, center_x, center_y + arm), fill=(255, 255, 255), width=1)


def _panels(
    example: PredictionExample, ground_truth: np.ndarray, predictions: dict[str, np.ndarray], panel_size: int
) -> list[Image.Image]:
    """
    The row's square RGB panels, left to right: image + prompt, ground truth, then one per method.

    Args:
        example (`PredictionExample`): the row (image, prompts, title).
        ground_truth (`np.ndarray` of shape `(H, W)`): its checked bool ground truth.
        predictions (`dict[str, np.ndarray]`): its checked bool predictions, each `(H, W)`, in column order.
        panel_size (`int`): side of each panel in pixels.
    """
    image = to_rgb(example.image)
    width, height = image.size
    fitted_width, fitted_height = _fitted_size(width, height, panel_size)
    # Enlarging keeps pixels sharp (nearest); shrinking averages them (box) instead of dropping rows and columns.
    resample = Image.NEAREST if fitted_width >= width else Image.BOX
    pixels = np.asarray(image.resize((fitted_width, fitted_height), resample))  # (h, w, 3)
    offset = ((panel_size - fitted_width) // 2, (panel_size - fitted_height) // 2)  # letterbox, centred
    scale = (fitted_width / width, fitted_height / height)

    def fitted_mask(mask: np.ndarray) -> np.ndarray:
        mask_image = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
        return np.asarray(mask_image.resize((fitted_width, fitted_height), Image.NEAREST)) > 127  # (h, w)

    def panel(panel_pixels: np.ndarray) -> Image.Image:
        canvas = Image.new("RGB", (panel_size, panel_size), BACKGROUND_COLOR)
        canvas.paste(Image.fromarray(panel_pixels), offset)
        return canvas

    label_size = _label_font_size(panel_size)
    margin = max(4, panel_size // 64)

    prompt_panel = panel(pixels)
    draw = ImageDraw.Draw(prompt_panel, "RGBA")
    _draw_prompt(draw, example, scale, offset, radius=max(3, panel_size // 40))
    if example.title:
        _draw_label(draw, (margin, margin), example.title, label_size, "lt", max_width=panel_size - 2 * margin)
    panels = [prompt_panel, panel(_overlay_mask(pixels, fitted_mask(ground_truth), GROUND_TRUTH_COLOR))]

    for prediction in predictions.values():
        iou = mask_iou(torch.from_numpy(prediction), torch.from_numpy(ground_truth)).item()
        method_panel = panel(_overlay_mask(pixels, fitted_mask(prediction), PREDICTION_COLOR))
        _draw_label(
            ImageDraw.Draw(method_panel, "RGBA"),
            (margin, panel_size - margin),
            f"IoU {iou:.3f}",
            label_size,
            "lb",
            max_width=panel_size - 2 * margin,
        )
        panels.append(method_panel)
    return panels


def render_prediction_grid(examples: Sequence[PredictionExample], panel_size: int = 256) -> Image.Image:
    """
    Render predictions side by side for a person to compare.

    The grid has one row per example and the columns `"image + prompt"` (positive points green, negative points
    red, each with a white + or -, and the box outlined in green), `"ground truth"` (pink overlay), then one column per
    method (cyan overlay, the method's IoU against the ground truth in the bottom-left corner), under a header row
    with the column titles (too long titles are cut). Every image is scaled to fit a `panel_size` square, centred,
    with its aspect ratio kept; adjacent panels are separated by a 2-pixel line drawn over their shared edge.

    Args:
        examples (`Sequence[PredictionExample]`):
            The rows, top to bottom; all with the same method names in the same order.
        panel_size (`int`, *optional*, defaults to 256):
            Side of each square panel in pixels, at least 64. E.g. 256 shows a 128-pixel image at 2x.

    Returns:
        `PIL.Image.Image` in mode RGB, of size `(num_columns * panel_size, header + num_rows * panel_size)` with
        `num_columns = 2 + number of methods`.

    Raises:
        `ValueError`: for no examples, a `panel_size` below 64, a non-PIL image, a mask that is not binary or whose
        shape differs from its image, examples whose method names differ, or malformed prompts; the message names the
        example.
    """
    if len(examples) == 0:
        raise ValueError("No examples to render: give at least one PredictionExample.")
    if panel_size < MIN_PANEL_SIZE:
        raise ValueError(f"panel_size must be at least {MIN_PANEL_SIZE} pixels, got {panel_size}.")
    method_names = list(examples[0].predictions)
    # Everything is checked before anything is drawn, so a bad row fails fast with its index.
    checked_masks = [_checked_masks(example, row, method_names) for row, example in enumerate(examples)]

    column_titles = [PROMPT_COLUMN_TITLE, GROUND_TRUTH_COLUMN_TITLE, *method_names]
    header_font_size = _header_font_size(panel_size)
    header_height = 2 * header_font_size
    grid = Image.new(
        "RGB", (len(column_titles) * panel_size, header_height + len(examples) * panel_size), BACKGROUND_COLOR
    )
    draw = ImageDraw.Draw(grid)
    for column, title in enumerate(column_titles):
        center = (column * panel_size + panel_size / 2, header_height / 2)
        title = _shortened(draw, title, header_font_size, max_width=panel_size - header_font_size)
        draw.text(center, title, font=_font(header_font_size), fill=TEXT_COLOR, anchor="mm")
    for row, (example, (ground_truth, predictions)) in enumerate(zip(examples, checked_masks, strict=True)):
        for column, panel in enumerate(_panels(example, ground_truth, predictions, panel_size)):
            grid.paste(panel, (column * panel_size, header_height + row * panel_size))
    # Adjacent panels often show the same image; a 2-pixel gap over their shared edge tells where one ends.
    for column in range(1, len(column_titles)):
        draw.rectangle(
            (column * panel_size - 1, header_height, column * panel_size, grid.height), fill=BACKGROUND_COLOR
        )
    for row in range(1, len(examples)):
        top = header_height + row * panel_size
        draw.rectangle((0, top - 1, grid.width, top), fill=BACKGROUND_COLOR)
    return grid


def save_prediction_grid(path: str | os.PathLike, examples: Sequence[PredictionExample], panel_size: int = 256) -> Path:
    """
    Render `examples` with [`render_prediction_grid`] and write the grid as a PNG, creating missing parent folders.

    Args:
        path (`str` or `os.PathLike`): the file to write (PNG whatever its suffix).
        examples (`Sequence[PredictionExample]`): the rows, see [`render_prediction_grid`].
        panel_size (`int`, *optional*, defaults to 256): side of each square panel in pixels.

    Returns:
        `Path` of the written file.
    """
    path = Path(path)
    grid = render_prediction_grid(examples, panel_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path, format="PNG")
    return path

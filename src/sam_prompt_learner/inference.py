"""Inference: segment what a prompt points at in an image, save the mask and an overlay, and the `predict` command.

```python
from PIL import Image
from sam_prompt_learner.inference import load_for_inference, predict_mask, save_mask_and_overlay

model, processor = load_for_inference("outputs/plates")  # a checkpoint, a trained-parts or a peft adapter directory
image = Image.open("car.jpg")
result = predict_mask(model, processor, image, points=[(412, 305)])  # result.mask: (H, W) bool at the image's size
save_mask_and_overlay(image, result.mask, "car_mask.png", points=[(412, 305)])  # + car_mask_overlay.png
```

The command does the same from a shell, for one image or every image of a folder:

    sam-prompt-learner predict --model outputs/plates --image car.jpg --point 412,305 --output car_mask.png
    sam-prompt-learner predict --model outputs/plates --image photos/ --box 10,20,200,180 --output masks/
    sam-prompt-learner predict --model outputs/plates --image photos/ --prompts prompts.json --output masks/

Coordinates are pixels of the image as stored, after its EXIF orientation is applied (so, as image viewers show it):
`x` from the left, `y` from the top, a point `(x, y)` on the centre of that pixel, a box `x0,y0,x1,y1` from its
top-left to its bottom-right corner pixel. Models load only from safetensors; nothing is ever unpickled.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError
from tqdm.auto import tqdm
from transformers import SamProcessor

from .data import to_rgb, upright
from .modeling_prompt_learner import PromptLearnerMixin, load_prompt_learner_model
from .processing import load_processor
from .trained_parts import is_trained_parts_directory, load_trained_parts, trained_parts_base
from .visualization import (
    BOX_COLOR,
    MASK_FILL_OPACITY,
    NEGATIVE_POINT_COLOR,
    POSITIVE_POINT_COLOR,
    PREDICTION_COLOR,
)

OVERLAY_SUFFIX = "_overlay"  # out.png -> out_overlay.png
BATCH_SUMMARY_NAME = "predictions.json"
PROMPT_KEYS = ("points", "negative_points", "box")


@dataclass
class PromptSpec:
    """
    The prompt for one image, in original-image pixels.

    Args:
        points (`list[tuple[float, float]]`): point prompts `(x, y)`, positive then negative.
        point_labels (`list[int]`): 1 (positive) or 0 (negative) for each point.
        box (`tuple[float, float, float, float]`, *optional*): box prompt `(x0, y0, x1, y1)`.
    """

    points: list[tuple[float, float]] = field(default_factory=list)
    point_labels: list[int] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None

    @classmethod
    def from_positive_negative(
        cls,
        positive: Sequence[Sequence[float]] = (),
        negative: Sequence[Sequence[float]] = (),
        box: Sequence[float] | None = None,
    ) -> PromptSpec:
        points = [tuple(point) for point in (*positive, *negative)]
        return cls(points, [1] * len(positive) + [0] * len(negative), tuple(box) if box is not None else None)

    def to_json(self) -> dict[str, Any]:
        """This prompt as one entry of a `--prompts` file (see [`read_prompts_file`]); keys without values are left
        out. Point order within each kind is kept; SAM's answer does not depend on the order of its prompt tokens."""
        entry: dict[str, Any] = {}
        for key, label in (("points", 1), ("negative_points", 0)):
            chosen = [list(point) for point, point_label in zip(self.points, self.point_labels, strict=True)
                      if point_label == label]  # fmt: skip
            if chosen:
                entry[key] = chosen
        if self.box is not None:
            entry["box"] = list(self.box)
        return entry


@dataclass
class PredictionResult:
    """
    What [`predict_mask`] returns.

    Args:
        mask (`np.ndarray` of shape `(H, W)`, bool): the mask the model rates best (highest predicted IoU), at the
            image's size.
        score (`float`): its predicted IoU.
        masks (`np.ndarray` of shape `(M, H, W)`, bool): every returned mask (M = 3 with `multimask_output`, else 1).
        scores (`np.ndarray` of shape `(M,)`, float32): their predicted IoUs.
        best_index (`int`): index of `mask` in `masks`.
    """

    mask: np.ndarray
    score: float
    masks: np.ndarray
    scores: np.ndarray
    best_index: int


def check_prompt(
    width: int,
    height: int,
    points: Sequence[Sequence[float]] | None = None,
    point_labels: Sequence[int] | None = None,
    box: Sequence[float] | None = None,
) -> None:
    """
    Raise `ValueError` unless the prompt is usable on a `width` x `height` image: at least one point or a box, one
    label (0 or 1) per point (none given: all positive), every coordinate finite and inside the image
    (`0 <= x <= width`, `0 <= y <= height`), and a box with `x0 <= x1`, `y0 <= y1`.
    """
    points = [] if points is None else [tuple(point) for point in points]
    point_labels = [1] * len(points) if point_labels is None else list(point_labels)
    if not points and box is None:
        raise ValueError("Give at least one point or a box.")
    if len(point_labels) != len(points):
        raise ValueError(f"Give one label per point: {len(points)} point(s), labels {point_labels}.")
    if any(label not in (0, 1) for label in point_labels):
        raise ValueError(f"Point labels must be 1 (positive) or 0 (negative), got {list(point_labels)}.")

    def check_inside(what: str, x: float, y: float) -> None:
        if not (np.isfinite(x) and np.isfinite(y) and 0 <= x <= width and 0 <= y <= height):
            raise ValueError(f"{what} ({x:g}, {y:g}) is outside the {width}x{height} image.")

    for point in points:
        if len(point) != 2:
            raise ValueError(f"A point is (x, y), got {point}.")
        check_inside("Point", *point)
    if box is not None:
        if len(box) != 4:
            raise ValueError(f"A box is (x0, y0, x1, y1), got {tuple(box)}.")
        x0, y0, x1, y1 = box
        check_inside("Box corner", x0, y0)
        check_inside("Box corner", x1, y1)
        if x0 > x1 or y0 > y1:
            raise ValueError(f"A box is (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, got {tuple(box)}.")


@torch.no_grad()
def predict_mask(
    model: PromptLearnerMixin,
    processor: SamProcessor,
    image: Image.Image,
    points: Sequence[Sequence[float]] | None = None,
    point_labels: Sequence[int] | None = None,
    box: Sequence[float] | None = None,
    multimask_output: bool = True,
    image_embeddings: torch.Tensor | None = None,
) -> PredictionResult:
    """
    Segment the object one prompt points at.

    Args:
        model (a prompt-learner model, or transformers' `SamModel` / `SamHQModel` / `Sam2Model`): the model, on the
            device to run on.
        processor (`SamProcessor`): a processor whose geometry matches the model (see `load_for_inference`).
        image (`PIL.Image.Image`): the image, any mode (converted to RGB), read upright (EXIF orientation applied).
        points (`Sequence[tuple[float, float]]`, *optional*): point prompts `(x, y)` in image pixels.
        point_labels (`Sequence[int]`, *optional*): 1 (positive) or 0 (negative) per point; defaults to all positive.
        box (`tuple[float, float, float, float]`, *optional*): box prompt `(x0, y0, x1, y1)` in image pixels.
        multimask_output (`bool`, *optional*, defaults to `True`): ask for SAM's three candidate masks and keep the
            one with the highest predicted IoU (SAM's own choice); `False` asks for the single-mask output.
        image_embeddings (`torch.Tensor` of shape `(1, C, E, E)`, *optional*): this image's embedding from
            [`encode_image`] with the same model; given, the image encoder does not run (an interactive session
            encodes each image once and reuses it for every prompt).

    Returns:
        [`PredictionResult`], masks at the image's size `(H, W)`.

    Raises:
        `ValueError`: no prompt, a label per point missing, or a coordinate outside the image.
    """
    if points is not None and point_labels is None:
        point_labels = [1] * len(points)
    image = to_rgb(image)  # upright: prompts are in the pixels viewers show
    check_prompt(image.width, image.height, points, point_labels, box)
    prompt_inputs = {}
    if points is not None and len(points) > 0:
        prompt_inputs["input_points"] = [[[list(point) for point in points]]]  # [image][prompt][point][xy]
        prompt_inputs["input_labels"] = [[list(point_labels)]]  # [image][prompt][point]
    if box is not None:
        prompt_inputs["input_boxes"] = [[list(box)]]  # [image][prompt][xyxy]
    inputs = processor(images=image, return_tensors="pt", **prompt_inputs)
    # The processor gives float64 coordinates; everything floating point runs in the model's dtype.
    model_inputs = {
        name: value.to(model.device, model.dtype if value.is_floating_point() else value.dtype)
        for name, value in inputs.items()
        if name in ("pixel_values", "input_points", "input_labels", "input_boxes")
    }
    if image_embeddings is not None:
        model_inputs.pop("pixel_values")
        model_inputs["image_embeddings"] = image_embeddings.to(model.device, model.dtype)
    outputs = model(**model_inputs, multimask_output=multimask_output)
    masks = processor.post_process_masks(
        outputs.pred_masks.float().cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )[0][0]  # (M, H, W) bool: image 0, prompt 0
    scores = outputs.iou_scores[0, 0].float().cpu()  # (M,)
    best_index = int(scores.argmax())
    return PredictionResult(
        mask=masks[best_index].numpy(),
        score=float(scores[best_index]),
        masks=masks.numpy(),
        scores=scores.numpy(),
        best_index=best_index,
    )


@torch.no_grad()
def encode_image(model: PromptLearnerMixin, processor: SamProcessor, image: Image.Image) -> torch.Tensor:
    """
    Run the image encoder once, for [`predict_mask`]'s `image_embeddings`.

    Args:
        model ([`SamPromptLearnerModel`] or `SamModel`): the model, on the device to run on.
        processor (`SamProcessor`): a processor whose geometry matches the model.
        image (`PIL.Image.Image`): the image, any mode (converted to RGB).

    Returns:
        `torch.Tensor` of shape `(1, C, E, E)` on the model's device (C = 256, E = 64 for every Meta SAM).
    """
    pixel_values = processor.image_processor(to_rgb(image), return_tensors="pt")["pixel_values"]
    return model.get_image_embeddings(pixel_values.to(model.device, model.dtype))


def overlay_path_for(mask_path: str | os.PathLike) -> Path:
    """Where the overlay of a mask written to `mask_path` goes: `out.png` -> `out_overlay.png`."""
    mask_path = Path(mask_path)
    return mask_path.with_name(f"{mask_path.stem}{OVERLAY_SUFFIX}{mask_path.suffix}")


def render_overlay(
    image: Image.Image,
    mask: np.ndarray,
    points: Sequence[Sequence[float]] | None = None,
    point_labels: Sequence[int] | None = None,
    box: Sequence[float] | None = None,
) -> Image.Image:
    """
    The image (RGB, its own size) with the mask filled semi-transparently and the prompt drawn on top, in the
    colours of the prediction grids (`sam_prompt_learner.visualization`).

    Args:
        image (`PIL.Image.Image`): the image, any mode.
        mask (`np.ndarray` of shape `(H, W)`): binary mask at the image's size.
        points, point_labels, box: the prompt, as for [`predict_mask`]; labels default to positive.
    """
    image = to_rgb(image)
    if mask.shape != (image.height, image.width):
        raise ValueError(f"The mask has shape {mask.shape}, the image is {image.height}x{image.width} (H x W).")
    tinted = Image.blend(image, Image.new("RGB", image.size, PREDICTION_COLOR), MASK_FILL_OPACITY)
    overlay = Image.composite(tinted, image, Image.fromarray(mask.astype(np.uint8) * 255))
    draw = ImageDraw.Draw(overlay)
    line_width = max(1, round(max(image.size) / 200))
    if box is not None:
        draw.rectangle(tuple(box), outline=BOX_COLOR, width=line_width)
    points = points or []
    point_labels = [1] * len(points) if point_labels is None else point_labels
    radius = max(2, round(max(image.size) / 80))
    for (x, y), label in zip(points, point_labels, strict=True):
        color = POSITIVE_POINT_COLOR if label == 1 else NEGATIVE_POINT_COLOR
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color, outline=(255, 255, 255))
    return overlay


def save_mask_and_overlay(
    image: Image.Image,
    mask: np.ndarray,
    output_path: str | os.PathLike,
    points: Sequence[Sequence[float]] | None = None,
    point_labels: Sequence[int] | None = None,
    box: Sequence[float] | None = None,
) -> tuple[Path, Path]:
    """
    Write the mask as a PNG (mode "L", 255 inside, 0 outside, the image's size) to `output_path`, and the overlay
    ([`render_overlay`]) next to it as `<stem>_overlay.png`. Parent directories are created.

    Returns:
        `(mask_path, overlay_path)`.
    """
    mask_path = Path(output_path)
    if mask_path.suffix.lower() != ".png":
        raise ValueError(f"The mask is written as a PNG (lossless): {mask_path} must end with .png.")
    overlay = render_overlay(image, mask, points, point_labels, box)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
    overlay_path = overlay_path_for(mask_path)
    overlay.save(overlay_path)
    return mask_path, overlay_path


def load_for_inference(
    model_name_or_path: str, base_model_name_or_path: str | None = None, device: str | torch.device | None = None
) -> tuple[PromptLearnerMixin, SamProcessor]:
    """
    Load a model for prediction, from safetensors only, with a processor matching its geometry.

    Args:
        model_name_or_path (`str`): a checkpoint (Hub id or directory; plain SAM or adapted), or a directory written
            by `save_trained_parts` or peft (then the base SAM it names is loaded and the parts put over it).
        base_model_name_or_path (`str`, *optional*): for a trained-parts directory, the base to load instead of the
            recorded one.
        device (`str` or `torch.device`, *optional*): defaults to CUDA when available, else CPU.

    Returns:
        `(model, processor)`, the model in eval mode on `device`; the processor is the checkpoint's (for trained
        parts, the base's) or, when it ships none, one built for the model's config.

    Raises:
        `ValueError`: a path (absolute, or starting with `.`) that is not a directory, or a malformed directory;
        `OSError`: a Hub id that cannot be found or fetched.
    """
    path = Path(model_name_or_path)
    if (path.is_absolute() or str(model_name_or_path).startswith(".")) and not path.is_dir():
        raise ValueError(f"{model_name_or_path}: no such model directory.")  # not a Hub id either
    if is_trained_parts_directory(model_name_or_path):
        model = load_trained_parts(model_name_or_path, base_model_name_or_path)
        processor_source = base_model_name_or_path or trained_parts_base(model_name_or_path)
    else:
        model = load_prompt_learner_model(model_name_or_path, use_safetensors=True)
        processor_source = model_name_or_path
    processor = load_processor(processor_source, model.config)
    device = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor


def open_image(path: str | os.PathLike) -> Image.Image:
    """Read an image fully (EXIF orientation applied); `ValueError` naming the file when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such image file.")
    try:
        with Image.open(path) as image:
            image.load()
            return upright(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:  # PIL raises SyntaxError on some broken headers
        raise ValueError(f"{path}: not a readable image ({error}).") from error


def image_files(directory: Path) -> list[Path]:
    """The files of `directory` (not its subfolders) that Pillow reads by their extension, sorted by name."""
    extensions = {extension.lower() for extension in Image.registered_extensions()}
    return sorted(path for path in directory.iterdir() if path.is_file() and path.suffix.lower() in extensions)


def parse_coordinates(count: int, what: str):
    """An argparse `type` for `count` comma-separated numbers (e.g. `x,y`), named `what` in its error message."""

    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(value) for value in text.split(","))
        except ValueError:
            values = ()
        if len(values) != count or not all(np.isfinite(values)):
            raise argparse.ArgumentTypeError(f"expected {what} as {count} comma-separated numbers, got {text!r}")
        return values

    return parse


def read_prompts_file(path: Path, image_directory: Path) -> dict[str, PromptSpec]:
    """
    Read a `--prompts` JSON: an object mapping file names in `image_directory` to prompts, e.g.
    `{"a.jpg": {"points": [[120, 80]], "negative_points": [[40, 30]], "box": [100, 60, 180, 140]}}`; each prompt
    has any of these keys, and at least one point or a box.
    """
    try:
        entries = json.loads(path.read_text())
    except OSError as error:
        raise ValueError(f"--prompts {path}: cannot read it ({error}).") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"--prompts {path}: not valid JSON ({error}).") from error
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f"--prompts {path}: expected a non-empty object mapping image file names to prompts.")
    prompts = {}
    for name, entry in entries.items():
        where = f"--prompts {path}, entry {name!r}"
        if not (image_directory / name).is_file():
            raise ValueError(f"{where}: no such file in {image_directory}.")
        if not isinstance(entry, dict) or not set(entry) <= set(PROMPT_KEYS):
            raise ValueError(f"{where}: expected an object with keys among {list(PROMPT_KEYS)}, got {entry!r}.")
        try:
            prompts[name] = PromptSpec.from_positive_negative(
                positive=[_numbers(point, 2) for point in entry.get("points", [])],
                negative=[_numbers(point, 2) for point in entry.get("negative_points", [])],
                box=_numbers(entry["box"], 4) if "box" in entry else None,
            )
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: {error}") from error
    return prompts


def _numbers(values: Any, count: int) -> tuple[float, ...]:
    if not isinstance(values, list) or len(values) != count or not all(isinstance(v, (int, float)) for v in values):
        raise ValueError(f"expected a list of {count} numbers, got {values!r}")
    return tuple(float(value) for value in values)


def plan_predictions(args: argparse.Namespace) -> list[tuple[Path, PromptSpec, Path]]:
    """
    Check every input before the model loads and list `(image, prompt, mask output path)`: one entry for a single
    image, one per image for a folder. Every image is opened and every prompt checked against its size, so an error
    (named after its file or flag) comes before any prediction is written.
    """
    flag_prompt = PromptSpec.from_positive_negative(args.point or (), args.negative_point or (), args.box)
    has_flag_prompt = bool(flag_prompt.points) or flag_prompt.box is not None
    if args.prompts is not None and has_flag_prompt:
        raise ValueError("Give the prompt either with --point/--negative_point/--box or with --prompts, not both.")
    if args.prompts is None and not has_flag_prompt:
        raise ValueError("Give a prompt: --point x,y (repeatable), --negative_point x,y, --box x0,y0,x1,y1.")
    if not args.image.exists():
        raise ValueError(f"--image {args.image}: no such file or directory.")

    if args.image.is_dir():
        if args.output.suffix.lower() == ".png" or (args.output.exists() and not args.output.is_dir()):
            raise ValueError(f"--output {args.output}: with a folder of images, --output is a directory.")
        if args.output.resolve() == args.image.resolve():
            raise ValueError("--output must differ from the --image folder: the masks would overwrite the images.")
        if args.prompts is not None:
            prompts = read_prompts_file(args.prompts, args.image)
            images = [args.image / name for name in prompts]
        else:
            images = image_files(args.image)
            if not images:
                raise ValueError(f"--image {args.image}: the folder holds no image files.")
            prompts = {path.name: flag_prompt for path in images}
        stems = {}
        for path in images:
            if path.stem in stems:
                raise ValueError(f"{stems[path.stem]} and {path} would both write {path.stem}.png; rename one.")
            stems[path.stem] = path
        outputs = [args.output / f"{path.stem}.png" for path in images]
    else:
        if args.prompts is not None:
            raise ValueError("--prompts maps the files of a folder: pass a folder to --image, or use --point/--box.")
        images, prompts, outputs = [args.image], {args.image.name: flag_prompt}, [args.output]
        if args.output.suffix.lower() != ".png":
            raise ValueError(f"--output {args.output}: the mask is written as a PNG, so the name must end with .png.")
        if args.output.resolve() == args.image.resolve():
            raise ValueError(f"--output {args.output} is the input image; choose another name.")

    plan = []
    for path, output in zip(images, outputs, strict=True):
        prompt = prompts[path.name]
        image = open_image(path)
        try:
            check_prompt(image.width, image.height, prompt.points, prompt.point_labels, prompt.box)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error
        plan.append((path, prompt, output))
    return plan


def predict_command(args: argparse.Namespace) -> int:
    """Run `sam-prompt-learner predict`; 0 on success, 2 (with a message on stderr) on bad input."""
    try:
        plan = plan_predictions(args)
        model, processor = load_for_inference(args.model, args.base_model, args.device)
    except (OSError, ValueError) as error:
        print(f"sam-prompt-learner predict: error: {error}", file=sys.stderr)
        return 2

    summary = {}
    for path, prompt, output in tqdm(plan, desc="predict", unit=" images", disable=len(plan) == 1):
        try:
            image = open_image(path)  # checked in the plan; read again to keep one image in memory at a time
        except ValueError as error:  # the file changed since
            print(f"sam-prompt-learner predict: error: {error}", file=sys.stderr)
            return 2
        result = predict_mask(
            model, processor, image, prompt.points, prompt.point_labels, prompt.box, args.multimask_output
        )
        mask_path, overlay_path = save_mask_and_overlay(
            image, result.mask, output, prompt.points, prompt.point_labels, prompt.box
        )
        summary[path.name] = {"mask": mask_path.name, "overlay": overlay_path.name, "score": result.score}
    if args.image.is_dir():
        (args.output / BATCH_SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n")
        print(f"{len(summary)} masks and overlays in {args.output} (scores: {args.output / BATCH_SUMMARY_NAME})")
    else:
        print(f"mask: {mask_path}\noverlay: {overlay_path}\npredicted IoU: {result.score:.3f}")
    return 0


def register_predict_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `predict` to the `sam-prompt-learner` command's subparsers; its handler is `args.handler`."""
    predict = subparsers.add_parser(
        "predict",
        help="Segment what a point or box prompt points at; write the mask and an overlay PNG.",
        description=(
            "Write the mask (PNG, 0/255, the image's size) and an overlay (<mask stem>_overlay.png). With a folder "
            f"--image, --output is a directory that receives <image stem>.png and <image stem>_overlay.png per "
            f"image, and {BATCH_SUMMARY_NAME} with the predicted IoU of each."
        ),
    )
    predict.add_argument(
        "--model", required=True,
        help="Checkpoint (Hub id or directory), or a trained-parts / peft adapter directory. Safetensors only.",
    )  # fmt: skip
    predict.add_argument("--base_model", default=None, help="For a trained-parts directory: base SAM to load instead.")
    predict.add_argument("--image", type=Path, required=True, help="An image file, or a folder of images.")
    predict.add_argument(
        "--point", type=parse_coordinates(2, "x,y"), action="append", metavar="X,Y",
        help="Positive point in image pixels; repeat for several.",
    )  # fmt: skip
    predict.add_argument(
        "--negative_point", type=parse_coordinates(2, "x,y"), action="append", metavar="X,Y",
        help="Negative point (not the object); repeatable.",
    )  # fmt: skip
    predict.add_argument("--box", type=parse_coordinates(4, "x0,y0,x1,y1"), metavar="X0,Y0,X1,Y1")
    predict.add_argument(
        "--prompts", type=Path, default=None,
        help='With a folder: JSON {"<file name>": {"points": [[x, y]], "negative_points": [...], "box": [x0, y0, '
        'x1, y1]}}; only the listed images are segmented. Without it, the flags\' prompt applies to every image.',
    )  # fmt: skip
    predict.add_argument("--output", type=Path, required=True, help="Mask PNG path, or a directory with a folder.")
    predict.add_argument(
        "--multimask_output", action=argparse.BooleanOptionalAction, default=True,
        help="Choose among SAM's three masks by predicted IoU (default), or use its single-mask output.",
    )  # fmt: skip
    predict.add_argument("--device", default=None, help="Defaults to cuda when available, else cpu.")
    predict.set_defaults(handler=predict_command)
    return predict

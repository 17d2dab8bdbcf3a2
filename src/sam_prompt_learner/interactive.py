"""Interactive segmentation: everything `sam-prompt-learner demo` does, without any UI library.

A person loads an image, adds positive and negative clicks and a box, undoes, clears; after every prompt each model
(the adapted one and, beside it, its base SAM) answers with its mask and predicted IoU. The Gradio app
(`sam_prompt_learner.demo`) only forwards events to an [`InteractiveSession`] and shows what it returns, so all of
this is tested without a browser.

```python
from sam_prompt_learner.interactive import DemoModel, InteractiveSession, POSITIVE_POINT

models = [DemoModel.load("outputs/plates", role="adapted"), DemoModel.load(str(embedded_model_path()), role="base")]
session = InteractiveSession(models)
session.load_image(image, name="car.png")  # the image encoder runs here, once per distinct encoder
session.add_prompt(POSITIVE_POINT, 412, 305)  # only the prompt encoder, prompt learner and mask decoder run
answers = session.segment()  # one `Segmentation` per model: mask, predicted IoU, the three candidates
```

Coordinates are pixels of the image as loaded (see `sam_prompt_learner.inference`). The app shows the image enlarged
or reduced to `DISPLAY_SIZE` ([`DisplayFrame`] converts clicks back), so small images such as the embedded tasks' 128
px scenes stay legible.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from transformers import SamProcessor

from .data import to_rgb
from .data.synthetic import generate_scene
from .data.synthetic_textures import load_photograph
from .inference import PredictionResult, PromptSpec, check_prompt, encode_image, load_for_inference, predict_mask
from .inference import render_overlay as render_prompt_overlay
from .trained_parts import is_trained_parts_directory, trained_parts_base
from .visualization import BOX_COLOR

POSITIVE_POINT = "positive point"
NEGATIVE_POINT = "negative point"
BOX_CORNER = "box (two corners)"
PROMPT_KINDS = (POSITIVE_POINT, NEGATIVE_POINT, BOX_CORNER)
ADAPTED, BASE = "adapted", "base"

DISPLAY_SIZE = 512  # longest side, in screen pixels, of the images the app shows
METRICS_NAME = "metrics.json"  # written by examples/train.py next to the adapted model; names its base
EXAMPLE_TASKS = ("face_parts", "plates", "banners", "generic")  # face_parts first: adaptation shows most
EXAMPLES_PER_TASK = 2
EXAMPLE_PHOTOGRAPHS = ("coffee", "chelsea", "astronaut", "rocket")  # scikit-image's bundled samples (offline)
EXAMPLE_PHOTOGRAPH_SIZE = 384  # longest side; the embedded SAM sees 128 px, a ViT SAM 1024


@dataclass
class DemoModel:
    """
    A model the demo runs, with its processor.

    Args:
        name (`str`): what the UI calls it (the checkpoint's id or directory).
        role (`str`): `"adapted"` or `"base"` (the zero-shot SAM shown for comparison).
        model ([`SamPromptLearnerModel`], *optional*): `None` when loading failed.
        processor (`SamProcessor`, *optional*): its processor.
        error (`str`, *optional*): why loading failed, shown in the UI in place of the model's answers.
    """

    name: str
    role: str
    model: torch.nn.Module | None = None
    processor: SamProcessor | None = None
    error: str | None = None

    @classmethod
    def load(cls, name_or_path: str, role: str, device: str | None = None) -> DemoModel:
        """Load with [`load_for_inference`] (checkpoints, trained-parts and peft adapter directories); a model that
        does not load becomes a `DemoModel` holding the error, so the app starts and says why."""
        try:
            model, processor = load_for_inference(name_or_path, device=device)
        except (OSError, ValueError) as error:  # a missing directory or Hub id, a broken checkpoint
            return cls(name_or_path, role, error=f"{name_or_path} did not load: {error}")
        return cls(name_or_path, role, model, processor)


def recorded_base_model(model_name_or_path: str) -> str | None:
    """The base SAM an adapted model was trained from, when its directory records it: a trained-parts or peft
    adapter directory, or an `examples/train.py` output (its `metrics.json`); otherwise `None`."""
    path = Path(model_name_or_path)
    if is_trained_parts_directory(path):
        return trained_parts_base(path)
    metrics = path / METRICS_NAME
    if metrics.is_file():
        try:
            return json.loads(metrics.read_text()).get("base_model")
        except (json.JSONDecodeError, AttributeError):
            return None
    return None


def same_image_encoder(first: DemoModel, second: DemoModel) -> bool:
    """Whether two loaded models compute the same image embedding: equal encoder weights and image processing.
    This is the usual case for an adapted model and its base (the encoder stays frozen), which then share one
    encoder run per image."""
    if first.model is None or second.model is None:
        return False
    if first.processor.image_processor.to_dict() != second.processor.image_processor.to_dict():
        return False
    first_state, second_state = first.model.vision_encoder.state_dict(), second.model.vision_encoder.state_dict()
    return first_state.keys() == second_state.keys() and all(
        first_state[name].dtype == second_state[name].dtype and torch.equal(first_state[name], second_state[name])
        for name in first_state
    )


@dataclass(frozen=True)
class PromptState:
    """
    The prompts on one image at one moment, in image pixels.

    Args:
        positive (`tuple[tuple[float, float], ...]`): positive points `(x, y)`, in the order they were added.
        negative (`tuple[tuple[float, float], ...]`): negative points.
        box (`tuple[float, float, float, float]`, *optional*): the box `(x0, y0, x1, y1)`.
        box_corner (`tuple[float, float]`, *optional*): the first corner of a box being drawn (not a prompt yet).
    """

    positive: tuple[tuple[float, float], ...] = ()
    negative: tuple[tuple[float, float], ...] = ()
    box: tuple[float, float, float, float] | None = None
    box_corner: tuple[float, float] | None = None

    @property
    def is_empty(self) -> bool:
        return not self.positive and not self.negative and self.box is None and self.box_corner is None

    @property
    def is_promptable(self) -> bool:
        """Whether there is a prompt to segment (a point or a finished box)."""
        return bool(self.positive or self.negative) or self.box is not None

    def to_spec(self) -> PromptSpec:
        """What the models receive; the same as `predict` builds from this state's JSON."""
        return PromptSpec.from_positive_negative(self.positive, self.negative, self.box)


class PromptHistory:
    """
    The prompt states of one image, newest last: every change adds a state, so [`undo`](#undo) steps back through
    points, box corners and clears alike.

    Args:
        width (`int`), height (`int`): the image's size; a prompt outside it is refused.
    """

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.states: list[PromptState] = [PromptState()]

    @property
    def state(self) -> PromptState:
        return self.states[-1]

    def add(self, kind: str, x: float, y: float) -> PromptState:
        """
        Add a point, or a box corner (the second corner finishes the box; a new box replaces the old one).

        Raises:
            `ValueError`: an unknown kind, or a point outside the image.
        """
        if kind not in PROMPT_KINDS:
            raise ValueError(f"Unknown prompt kind {kind!r}; expected one of {list(PROMPT_KINDS)}.")
        check_prompt(self.width, self.height, points=[(x, y)])
        state, point = self.state, (float(x), float(y))
        if kind == POSITIVE_POINT:
            state = replace(state, positive=(*state.positive, point))
        elif kind == NEGATIVE_POINT:
            state = replace(state, negative=(*state.negative, point))
        elif state.box_corner is None:
            state = replace(state, box_corner=point)
        else:
            (x0, y0), (x1, y1) = state.box_corner, point
            state = replace(state, box=(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), box_corner=None)
        self.states.append(state)
        return state

    def undo(self) -> PromptState:
        """Go back one change (nothing happens at the start)."""
        if len(self.states) > 1:
            self.states.pop()
        return self.state

    def clear(self) -> PromptState:
        """Remove every prompt; undoable."""
        if not self.state.is_empty:
            self.states.append(PromptState())
        return self.state


@dataclass
class Segmentation:
    """
    One model's answer to the current prompts.

    Args:
        model (`DemoModel`): who answered.
        result ([`PredictionResult`], *optional*): mask (its own choice among three), predicted IoU, candidates;
            `None` when the model did not load.
        seconds (`float`): time to answer the prompt from the cached image embedding.
    """

    model: DemoModel
    result: PredictionResult | None
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the UI: the predicted IoU, the mask's size and the latency, or why there is no answer."""
        if self.result is None:
            return self.model.error or "No answer."
        area = int(self.result.mask.sum())
        share = 100 * area / self.result.mask.size
        return (
            f"predicted IoU {self.result.score:.3f} · mask {area:,} px ({share:.1f}% of the image) · "
            f"{1000 * self.seconds:.0f} ms"
        )


@dataclass
class ExampleImage:
    """An image the app offers: `name` (also its file name in downloads) and the image."""

    name: str
    image: Image.Image


def example_images() -> list[ExampleImage]:
    """The bundled examples: `EXAMPLES_PER_TASK` validation scenes of each embedded task (rendered as training
    sees them, 128 px) and a few of scikit-image's sample photographs reduced to `EXAMPLE_PHOTOGRAPH_SIZE`."""
    examples = [
        ExampleImage(
            f"{task}-{index}.png", Image.fromarray(generate_scene(task, split="validation", index=index).image)
        )
        for task in EXAMPLE_TASKS
        for index in range(EXAMPLES_PER_TASK)
    ]
    for name in EXAMPLE_PHOTOGRAPHS:
        photograph = Image.fromarray(load_photograph(name))
        photograph.thumbnail((EXAMPLE_PHOTOGRAPH_SIZE, EXAMPLE_PHOTOGRAPH_SIZE), Image.Resampling.LANCZOS)
        examples.append(ExampleImage(f"{name}.png", photograph))
    return examples


@dataclass(frozen=True)
class DisplayFrame:
    """
    How an `image_width` x `image_height` image is shown: scaled by `scale` to `width` x `height`, its longest side
    `DISPLAY_SIZE`. A displayed pixel `u` covers image coordinates around `(u + 0.5) / scale - 0.5` (pixel centres
    map to pixel centres both ways).
    """

    image_width: int
    image_height: int
    width: int
    height: int
    scale: float

    @classmethod
    def for_image(cls, image: Image.Image, display_size: int = DISPLAY_SIZE) -> DisplayFrame:
        scale = display_size / max(image.size)
        display = max(1, round(image.width * scale)), max(1, round(image.height * scale))
        return cls(image.width, image.height, *display, scale)

    def to_image(self, u: float, v: float) -> tuple[float, float]:
        """A clicked display pixel `(u, v)` -> image coordinates `(x, y)`, rounded to 0.01 px; a click on the
        outer half of an edge pixel lands on that pixel's centre."""
        x = min(max((u + 0.5) / self.scale - 0.5, 0.0), self.image_width - 1.0)
        y = min(max((v + 0.5) / self.scale - 0.5, 0.0), self.image_height - 1.0)
        return round(x, 2), round(y, 2)

    def to_display(self, x: float, y: float) -> tuple[float, float]:
        return (x + 0.5) * self.scale - 0.5, (y + 0.5) * self.scale - 0.5

    def image(self, image: Image.Image) -> Image.Image:
        """The image at display size: enlarged with nearest-neighbour sampling (each pixel a sharp square, as in
        the prediction grids), reduced with Lanczos."""
        resample = Image.Resampling.NEAREST if self.scale >= 1 else Image.Resampling.LANCZOS
        return to_rgb(image).resize((self.width, self.height), resample)

    def mask(self, mask: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((self.width, self.height))) > 127

    def render(self, image: Image.Image, state: PromptState, mask: np.ndarray | None = None) -> Image.Image:
        """The displayed image with `mask` (image size) filled and the prompts of `state` drawn on top, in the
        colours of `predict`'s overlays; the first corner of an unfinished box is a small square."""
        spec = state.to_spec()
        points = [self.to_display(*point) for point in spec.points]
        box = None
        if spec.box is not None:
            x0, y0 = self.to_display(*spec.box[:2])
            x1, y1 = self.to_display(*spec.box[2:])
            box = (x0, y0, x1, y1)
        shown_mask = self.mask(mask) if mask is not None else np.zeros((self.height, self.width), dtype=bool)
        overlay = render_prompt_overlay(self.image(image), shown_mask, points, spec.point_labels, box)
        if state.box_corner is not None:
            x, y = self.to_display(*state.box_corner)
            half = max(3, round(max(self.width, self.height) / 100))
            ImageDraw.Draw(overlay).rectangle((x - half, y - half, x + half, y + half), outline=BOX_COLOR, width=2)
        return overlay


def image_digest(image: Image.Image) -> str:
    """A content hash of an image (size, mode and pixels), so the same picture is recognised however it arrives."""
    digest = hashlib.sha256(f"{image.mode} {image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


@dataclass
class InteractiveSession:
    """
    One person's session: the models, the current image with one embedding per distinct image encoder, and the
    prompt history.

    Args:
        models (`Sequence[DemoModel]`): the models to answer, in the order of the UI's panels.
    """

    models: Sequence[DemoModel]
    image: Image.Image | None = None
    image_name: str = ""
    history: PromptHistory | None = None
    # Index of the model whose encoder run each model reuses (itself when its encoder is unlike the earlier ones').
    encoder_owner: list[int] = field(default_factory=list)
    embeddings: dict[int, torch.Tensor] = field(default_factory=dict)
    digest: str | None = None
    encode_seconds: float = 0.0

    def __post_init__(self):
        self.encoder_owner = [
            next(j for j in range(i + 1) if j == i or same_image_encoder(self.models[j], model))
            for i, model in enumerate(self.models)
        ]

    def load_image(self, image: Image.Image, name: str = "image.png") -> None:
        """
        Make `image` the current one and clear the prompts. Each distinct image encoder runs once, unless this is
        the image already loaded (then its embeddings are kept).

        Raises:
            `ValueError`: the image is empty.
        """
        image = to_rgb(image)
        if image.width < 1 or image.height < 1:
            raise ValueError(f"{name}: the image is empty ({image.width}x{image.height}).")
        digest = image_digest(image)
        if digest != self.digest:
            started = time.perf_counter()
            self.embeddings = {
                owner: encode_image(self.models[owner].model, self.models[owner].processor, image)
                for owner in sorted(set(self.encoder_owner))
                if self.models[owner].model is not None
            }
            self.encode_seconds = time.perf_counter() - started
            self.digest = digest
        self.image, self.image_name = image, Path(name).with_suffix(".png").name
        self.history = PromptHistory(image.width, image.height)

    @property
    def state(self) -> PromptState:
        return self.history.state if self.history is not None else PromptState()

    def _require_image(self) -> PromptHistory:
        if self.history is None:
            raise ValueError("Load an image first: upload one or pick an example.")
        return self.history

    def add_prompt(self, kind: str, x: float, y: float) -> PromptState:
        """Add a point or box corner at image coordinates `(x, y)`; `ValueError` outside the image."""
        return self._require_image().add(kind, x, y)

    def undo(self) -> PromptState:
        return self._require_image().undo()

    def clear(self) -> PromptState:
        return self._require_image().clear()

    def segment(self) -> list[Segmentation]:
        """Every model's answer to the current prompts (empty when there is no point or finished box yet), from the
        cached embeddings: no image encoder runs here."""
        state = self.state
        if self.image is None or not state.is_promptable:
            return []
        spec = state.to_spec()
        answers = []
        for index, demo_model in enumerate(self.models):
            if demo_model.model is None:
                answers.append(Segmentation(demo_model, None))
                continue
            started = time.perf_counter()
            result = predict_mask(
                demo_model.model, demo_model.processor, self.image, spec.points, spec.point_labels, spec.box,
                image_embeddings=self.embeddings[self.encoder_owner[index]],
            )  # fmt: skip
            answers.append(Segmentation(demo_model, result, time.perf_counter() - started))
        return answers

    def prompts_json(self) -> dict:
        """The current prompts as a `predict --prompts` file: `{image file name: {"points": ..., ...}}`."""
        return {self.image_name: self.state.to_spec().to_json()}

    def save_downloads(self, directory: str | Path, mask: np.ndarray | None) -> list[Path]:
        """
        Write what a person takes away into `directory`: the image (`<name>.png`), the first model's mask
        (`<name stem>_mask.png`, 0/255, the image's size) when there is one, and `prompts.json`, so that
        `sam-prompt-learner predict --model M --image <directory> --prompts <directory>/prompts.json` reproduces it.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        image_path = directory / self.image_name
        self.image.save(image_path)
        paths = [image_path]
        if mask is not None:
            mask_path = directory / f"{image_path.stem}_mask.png"
            Image.fromarray(mask.astype(np.uint8) * 255).save(mask_path)
            paths.append(mask_path)
        prompts_path = directory / "prompts.json"
        prompts_path.write_text(json.dumps(self.prompts_json(), indent=2) + "\n")
        return [*paths, prompts_path]

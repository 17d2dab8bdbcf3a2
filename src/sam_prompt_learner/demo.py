"""`sam-prompt-learner demo`: click on an image and see the adapted model's mask beside its base SAM's.

    sam-prompt-learner demo                                   # the embedded tiny SAM, offline
    sam-prompt-learner demo --model outputs/plates            # an adapted model beside the base it was trained from
    sam-prompt-learner demo --model your-name/sam-plates --compare facebook/sam-vit-base

A thin Gradio layer (the `[demo]` extra: `pip install "sam-prompt-learner[demo]"`) over
`sam_prompt_learner.interactive`, which holds all the logic. Without `--compare`, the base is the one the model's
directory records (a `trained_parts/` or peft adapter directory, or an `examples/train.py` output through its
`metrics.json`); a model with no recorded base, such as the embedded tiny SAM itself, is shown alone. The page needs
nothing from the internet: Gradio's analytics are off and its assets and fonts are served by the app itself.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

from .embedded import embedded_model_path
from .inference import open_image
from .interactive import (
    ADAPTED,
    BASE,
    BOX_CORNER,
    POSITIVE_POINT,
    PROMPT_KINDS,
    DemoModel,
    DisplayFrame,
    InteractiveSession,
    example_images,
    recorded_base_model,
)

# Gradio reads this when it is imported: no usage statistics, no version check over the network.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

DEMO_TITLE = "sam-prompt-learner: interactive segmentation"
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
# System fonts only: the page must render without fetching anything.
FONT_STACK = ("system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif")


def import_gradio():
    """Gradio, or an `ImportError` that says how to install the optional extra."""
    try:
        import gradio
    except ImportError as error:
        raise ImportError(
            'The demo needs Gradio, an optional dependency: pip install "sam-prompt-learner[demo]".'
        ) from error
    return gradio


def load_demo_models(model: str | None, compare: str | None, device: str | None = None) -> list[DemoModel]:
    """
    The models the demo shows, left to right: `model` (default: the embedded tiny SAM), then the base to compare
    with: `compare`, else the base `model`'s directory records, else none.
    """
    model = model or str(embedded_model_path())
    compare = compare or recorded_base_model(model)
    models = [DemoModel.load(model, role=ADAPTED if compare else BASE, device=device)]
    if compare:
        models.append(DemoModel.load(compare, role=BASE, device=device))
    return models


def model_display_name(name_or_path: str) -> str:
    """How the UI names a model: the embedded one by what it is, others as given, long paths by their end."""
    if Path(name_or_path).resolve() == embedded_model_path().resolve():
        return "embedded tiny SAM"
    return name_or_path if len(name_or_path) <= 40 else "..." + name_or_path[-37:]


def panel_label(demo_model: DemoModel) -> str:
    role = "adapted" if demo_model.role == ADAPTED else "base SAM (zero-shot)"
    return f"{role}: {model_display_name(demo_model.name)}"


def build_demo(models: list[DemoModel]):
    """
    The Gradio app: one panel per model (click any of them to prompt), prompt controls, the base's three
    candidates on request, examples, upload, and downloads (image, mask, `prompts.json`).

    Returns:
        `(gradio.Blocks, theme)`: pass the theme to `launch` (Gradio takes it there).
    """
    gr = import_gradio()
    examples = example_images()
    candidates_of = models[-1]  # the base when comparing: its three masks show the ambiguity the method resolves
    theme = gr.themes.Soft(font=FONT_STACK, font_mono=("ui-monospace", "monospace"))

    def model_line() -> str:
        names = [f"**{panel_label(m)}**" for m in models]
        line = " beside ".join(names) + ". Click on either image to prompt both; each answers with its own choice "
        line += "of mask and its predicted IoU."
        if len(models) == 1:
            line += (
                " To compare an adapted model with its base, train one (`accelerate launch examples/train.py`) and "
                "run `sam-prompt-learner demo --model outputs/plates` (or pass `--compare BASE`)."
            )
        errors = [f"\n\n⚠️ {m.error}" for m in models if m.error]
        return line + "".join(errors)

    downloads_root = Path(tempfile.mkdtemp(prefix="sam-prompt-learner-demo-"))

    def view(session: InteractiveSession | None, show_candidates: bool, message: str = ""):
        """Everything the page shows for a session: panels, scores, candidates, downloads, and the status line
        (`message` when given: a hint, or an error starting with a warning sign)."""
        if session is None or session.image is None:
            empty = [None] * len(models) + ["Pick an example or upload an image."] * len(models)
            return [*empty, gr.update(value=None, visible=show_candidates), None, message]
        answers = session.segment()
        frame = DisplayFrame.for_image(session.image)
        panels, scores = [], []
        for index, demo_model in enumerate(models):
            answer = answers[index] if answers else None
            mask = answer.result.mask if answer is not None and answer.result is not None else None
            panels.append(frame.render(session.image, session.state, mask))
            if answer is not None:
                scores.append(answer.summary())
            elif demo_model.error:
                scores.append(f"⚠️ {demo_model.error}")
            else:
                scores.append("Click on the image: a positive point, a negative point, or two box corners.")
        candidates = []
        candidate_answer = answers[-1] if answers else None
        if show_candidates and candidate_answer is not None and candidate_answer.result is not None:
            result = candidate_answer.result
            for index, (mask, score) in enumerate(zip(result.masks, result.scores, strict=True)):
                chosen = " (its choice)" if index == result.best_index else ""
                candidates.append(
                    (
                        frame.render(session.image, session.state, mask),
                        f"{index + 1}: predicted IoU {score:.3f}{chosen}",
                    )
                )
        downloads = None
        if answers:
            first = answers[0].result
            # One folder per session, rewritten after each prompt (Gradio serves copies of the files).
            directory = downloads_root / str(id(session))
            downloads = [str(path) for path in session.save_downloads(directory, first.mask if first else None)]
        timing = [f"image encoded once in {1000 * session.encode_seconds:.0f} ms (reused for every prompt)"]
        timing += [f"{panel_label(a.model)}: {1000 * a.seconds:.0f} ms per prompt" for a in answers if a.result]
        status = message or f"**{session.image_name}** · " + " · ".join(timing)
        return [*panels, *scores, gr.update(value=candidates, visible=show_candidates), downloads, status]

    def load_image(session, image, name, show_candidates):
        session = session or InteractiveSession(models)
        try:
            session.load_image(image, name)
        except ValueError as error:
            return [session, *view(session, show_candidates, f"⚠️ {error}")]
        return [session, *view(session, show_candidates)]

    def pick_example(session, show_candidates, event: gr.SelectData):
        example = examples[event.index]
        return load_image(session, example.image, example.name, show_candidates)

    def upload(session, path, show_candidates):
        if path is None:
            return [session, *view(session, show_candidates)]
        try:
            image = open_image(path)
        except ValueError as error:
            # The message names Gradio's temporary copy; the person knows the file by its name.
            message = str(error).replace(str(path), Path(path).name)
            return [session, *view(session, show_candidates, f"⚠️ {message}")]
        return load_image(session, image, Path(path).name, show_candidates)

    def click(session, kind, show_candidates, event: gr.SelectData):
        if session is None or session.image is None:
            return [session, *view(session, show_candidates, "⚠️ Load an image first: upload one or pick an example.")]
        u, v = event.index
        x, y = DisplayFrame.for_image(session.image).to_image(u, v)
        try:
            session.add_prompt(kind, x, y)
        except ValueError as error:
            return [session, *view(session, show_candidates, f"⚠️ {error}")]
        message = "Box: now click the opposite corner." if session.state.box_corner is not None else ""
        return [session, *view(session, show_candidates, message)]

    def undo(session, show_candidates):
        if session is not None and session.image is not None:
            session.undo()
        return [session, *view(session, show_candidates)]

    def clear(session, show_candidates):
        if session is not None and session.image is not None:
            session.clear()
        return [session, *view(session, show_candidates)]

    with gr.Blocks(title=DEMO_TITLE, analytics_enabled=False) as demo:
        session = gr.State(None, time_to_live=3600)  # embeddings are freed an hour after the last event
        gr.Markdown(f"## {DEMO_TITLE}\n{model_line()}", elem_id="models")
        panel_images, panel_scores = [], []
        with gr.Row(equal_height=True):
            for index, demo_model in enumerate(models):
                with gr.Column():
                    panel_images.append(
                        gr.Image(
                            label=panel_label(demo_model),
                            type="pil",
                            format="png",
                            interactive=False,
                            elem_id=f"panel-{index}",
                            buttons=[],
                        )  # fmt: skip
                    )
                    panel_scores.append(gr.Markdown(elem_id=f"score-{index}"))
        with gr.Row():
            kind = gr.Radio(list(PROMPT_KINDS), value=POSITIVE_POINT, label="A click adds", elem_id="prompt-kind",
                            scale=3)  # fmt: skip
            undo_button = gr.Button("Undo", elem_id="undo", scale=1)
            clear_button = gr.Button("Clear", elem_id="clear", scale=1)
            show_candidates = gr.Checkbox(
                label=f"Show the three candidate masks of {panel_label(candidates_of)}", elem_id="show-candidates",
                scale=2,
            )  # fmt: skip
        status = gr.Markdown(elem_id="status")
        candidates = gr.Gallery(
            label=f"the three candidates of {panel_label(candidates_of)}", columns=3, height="auto", visible=False,
            object_fit="contain", allow_preview=False, elem_id="candidates",
        )  # fmt: skip
        with gr.Row():
            example_gallery = gr.Gallery(
                [(example.image, example.name) for example in examples], label="Examples: click one",
                columns=6, height=260, allow_preview=False, elem_id="examples", scale=3,
            )  # fmt: skip
            with gr.Column(scale=1):
                # A file, not gr.Image: Gradio would decode an image before the handler, and fail on a broken one
                # with no message of ours.
                upload_file = gr.File(label="Upload an image", file_types=["image"], type="filepath", height=120,
                                      elem_id="upload")  # fmt: skip
                downloads = gr.File(label="Download: image, mask, prompts.json", file_count="multiple",
                                    interactive=False, elem_id="downloads")  # fmt: skip
        gr.Markdown(
            f"Prompts: a click adds the selected kind; **{BOX_CORNER}** takes two clicks. The downloads reproduce "
            "the first panel's mask with `sam-prompt-learner predict --model M --image <folder> --prompts "
            "<folder>/prompts.json --output masks/`."
        )

        outputs = [session, *panel_images, *panel_scores, candidates, downloads, status]
        example_gallery.select(pick_example, [session, show_candidates], outputs)
        upload_file.upload(upload, [session, upload_file, show_candidates], outputs)
        for panel in panel_images:
            panel.select(click, [session, kind, show_candidates], outputs)
        undo_button.click(undo, [session, show_candidates], outputs)
        clear_button.click(clear, [session, show_candidates], outputs)
        show_candidates.change(lambda s, show: [s, *view(s, show)], [session, show_candidates], outputs)
    return demo, theme


def launch_demo(
    model: str | None = None,
    compare: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    share: bool = False,
    device: str | None = None,
    **launch_kwargs,
):
    """Load the models (see [`load_demo_models`]), build the app and serve it until interrupted."""
    models = load_demo_models(model, compare, device)
    for demo_model in models:
        if demo_model.error:
            print(f"sam-prompt-learner demo: warning: {demo_model.error}", file=sys.stderr)
    demo, theme = build_demo(models)
    return demo.launch(server_name=host, server_port=port, share=share, theme=theme, **launch_kwargs)


def demo_command(args: argparse.Namespace) -> int:
    try:
        launch_demo(args.model, args.compare, args.host, args.port, args.share, args.device)
    except ImportError as error:
        print(f"sam-prompt-learner demo: error: {error}", file=sys.stderr)
        return 2
    return 0


def register_demo_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `demo` to the `sam-prompt-learner` command's subparsers; its handler is `args.handler`."""
    demo = subparsers.add_parser(
        "demo",
        help="Interactive segmentation in the browser (Gradio): the adapted model beside its base.",
        description=(
            "Serve a page where clicks, negative clicks and a box segment an image, the adapted model's answer beside "
            "its base SAM's, each with its predicted IoU. Offline by default: the embedded tiny SAM and its examples."
        ),
    )
    demo.add_argument(
        "--model", default=None,
        help="Checkpoint (Hub id or directory), or a trained-parts / peft adapter directory. Default: the embedded "
        "tiny SAM.",
    )  # fmt: skip
    demo.add_argument(
        "--compare", default=None, metavar="BASE",
        help="The base SAM to show beside --model, zero-shot. Default: the base its directory records, if any.",
    )  # fmt: skip
    demo.add_argument("--host", default=DEFAULT_HOST, help="Interface to serve on (0.0.0.0: every interface).")
    demo.add_argument("--port", type=int, default=DEFAULT_PORT)
    demo.add_argument("--share", action="store_true", help="Also open a temporary public link (gradio.live).")
    demo.add_argument("--device", default=None, help="Defaults to cuda when available, else cpu.")
    demo.set_defaults(handler=demo_command)
    return demo

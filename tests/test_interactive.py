"""The demo's logic without a browser: prompt history, embedding reuse, the answers, downloads, model choice."""

import argparse
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import save_tiny_sam

from sam_prompt_learner import SamPromptLearnerModel, embedded_model_path, save_trained_parts
from sam_prompt_learner.demo import load_demo_models, register_demo_command
from sam_prompt_learner.inference import predict_mask, register_predict_command
from sam_prompt_learner.interactive import (
    ADAPTED,
    BASE,
    BOX_CORNER,
    DISPLAY_SIZE,
    EXAMPLE_PHOTOGRAPH_SIZE,
    NEGATIVE_POINT,
    POSITIVE_POINT,
    DemoModel,
    DisplayFrame,
    InteractiveSession,
    PromptHistory,
    PromptState,
    example_images,
    recorded_base_model,
)

HEIGHT, WIDTH = 96, 160


def random_image(seed=0, height=HEIGHT, width=WIDTH) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory):
    return save_tiny_sam(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def adapted_parts(base_checkpoint, tmp_path_factory):
    """Trained parts over the base: a prompt learner that changes SAM's answer, the encoder untouched."""
    model = SamPromptLearnerModel.from_pretrained(base_checkpoint)
    with torch.no_grad():
        model.prompt_learner.out_proj.weight.normal_(0.0, 0.5)
    return save_trained_parts(model, tmp_path_factory.mktemp("adapted") / "trained_parts", ["prompt_learner"])


@pytest.fixture(scope="module")
def models(adapted_parts, base_checkpoint):
    return [DemoModel.load(str(adapted_parts), ADAPTED, "cpu"), DemoModel.load(str(base_checkpoint), BASE, "cpu")]


def count_encoder_calls(models) -> list[int]:
    """A list that counts, per model, the runs of its image encoder from now on."""
    calls = [0] * len(models)
    for index, demo_model in enumerate(models):

        def count(*_, index=index):
            calls[index] += 1

        demo_model.model.vision_encoder.register_forward_hook(count)
    return calls


def test_history_adds_points_and_a_box_and_undoes_every_change():
    history = PromptHistory(WIDTH, HEIGHT)
    history.add(POSITIVE_POINT, 10, 20)
    history.add(NEGATIVE_POINT, 30, 40)
    corner = history.add(BOX_CORNER, 150, 90)
    assert corner.box is None and corner.box_corner == (150, 90) and not corner.to_spec().box
    boxed = history.add(BOX_CORNER, 50, 5)  # corners in any order
    assert boxed.box == (50, 5, 150, 90) and boxed.box_corner is None
    spec = boxed.to_spec()
    assert spec.points == [(10, 20), (30, 40)] and spec.point_labels == [1, 0] and spec.box == (50, 5, 150, 90)

    assert history.clear().is_empty
    assert history.undo() == boxed  # a clear is undone like any change
    assert history.undo() == corner
    assert history.undo().box_corner is None and history.state.negative == ((30, 40),)
    history.undo()
    history.undo()
    assert history.state == PromptState() and history.undo() == PromptState()  # nothing before the start


@pytest.mark.parametrize(
    ("kind", "x", "y", "message"),
    [(POSITIVE_POINT, WIDTH + 1, 5, "outside the 160x96 image"), (BOX_CORNER, 5, -1, "outside"),
     ("lasso", 5, 5, "Unknown prompt kind")],
)  # fmt: skip
def test_history_refuses_prompts_outside_the_image(kind, x, y, message):
    history = PromptHistory(WIDTH, HEIGHT)
    with pytest.raises(ValueError, match=message):
        history.add(kind, x, y)
    assert history.state.is_empty and len(history.states) == 1


def test_one_encoder_run_per_image_for_any_number_of_prompts(models):
    session = InteractiveSession(models)
    assert session.encoder_owner == [0, 0]  # the adapted model's encoder is its base's: shared
    calls = count_encoder_calls(models)
    session.load_image(random_image(), "photo.jpg")
    for step in range(5):
        session.add_prompt(POSITIVE_POINT if step % 2 == 0 else NEGATIVE_POINT, 10 + 20 * step, 10 + 10 * step)
        assert len(session.segment()) == 2
    session.add_prompt(BOX_CORNER, 5, 5)
    session.add_prompt(BOX_CORNER, 100, 80)
    session.segment()
    session.undo()
    session.segment()
    assert calls == [1, 0]

    session.load_image(random_image(), "again.png")  # the same picture: embeddings kept, prompts cleared
    assert session.state.is_empty and calls == [1, 0]
    session.load_image(random_image(seed=1), "other.png")
    assert calls == [2, 0]


def test_different_encoders_each_run_once(tmp_path):
    first, second = save_tiny_sam(tmp_path / "a", seed=0), save_tiny_sam(tmp_path / "b", seed=1)
    models = [DemoModel.load(str(first), ADAPTED, "cpu"), DemoModel.load(str(second), BASE, "cpu")]
    session = InteractiveSession(models)
    assert session.encoder_owner == [0, 1]
    calls = count_encoder_calls(models)
    session.load_image(random_image())
    session.add_prompt(POSITIVE_POINT, 40, 40)
    session.add_prompt(POSITIVE_POINT, 60, 40)
    session.segment()
    assert calls == [1, 1]


def test_answers_match_predict_and_undo_restores_them(models):
    session = InteractiveSession(models)
    image = random_image()
    session.load_image(image)
    assert session.segment() == []  # nothing to segment yet
    session.add_prompt(POSITIVE_POINT, 120, 30)
    session.add_prompt(BOX_CORNER, 100, 10)
    session.add_prompt(BOX_CORNER, 150, 60)
    answers = session.segment()
    for answer in answers:
        expected = predict_mask(answer.model.model, answer.model.processor, image, [(120, 30)], [1], (100, 10, 150, 60))
        assert np.array_equal(answer.result.mask, expected.mask) and answer.result.mask.shape == (HEIGHT, WIDTH)
        assert answer.result.score == pytest.approx(expected.score, abs=1e-5)
        assert answer.result.masks.shape == (3, HEIGHT, WIDTH)
        assert "predicted IoU" in answer.summary() and " px " in answer.summary()
    assert not np.array_equal(answers[0].result.masks, answers[1].result.masks)  # two different models

    session.add_prompt(NEGATIVE_POINT, 110, 20)
    assert not np.array_equal(session.segment()[1].result.masks, answers[1].result.masks)
    session.undo()
    for restored, answer in zip(session.segment(), answers, strict=True):
        assert np.array_equal(restored.result.mask, answer.result.mask)


def test_session_needs_an_image(models):
    session = InteractiveSession(models)
    with pytest.raises(ValueError, match="Load an image first"):
        session.add_prompt(POSITIVE_POINT, 1, 1)
    assert session.segment() == []


def test_downloads_reproduce_the_mask_with_predict(models, adapted_parts, tmp_path):
    session = InteractiveSession(models)
    session.load_image(random_image(), "street photo.jpg")
    session.add_prompt(POSITIVE_POINT, 120.5, 30)
    session.add_prompt(NEGATIVE_POINT, 20, 80)
    session.add_prompt(POSITIVE_POINT, 90, 50)
    mask = session.segment()[0].result.mask
    paths = session.save_downloads(tmp_path / "downloads", mask)
    assert [path.name for path in paths] == ["street photo.png", "street photo_mask.png", "prompts.json"]
    assert json.loads(paths[2].read_text()) == {
        "street photo.png": {"points": [[120.5, 30.0], [90.0, 50.0]], "negative_points": [[20.0, 80.0]]}
    }

    parser = argparse.ArgumentParser()
    register_predict_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["predict", "--model", str(adapted_parts), "--image", str(tmp_path / "downloads"),
                              "--prompts", str(paths[2]), "--output", str(tmp_path / "masks")])  # fmt: skip
    assert args.handler(args) == 0
    with Image.open(tmp_path / "masks" / "street photo.png") as predicted, Image.open(paths[1]) as downloaded:
        assert np.array_equal(np.asarray(predicted), np.asarray(downloaded))
    assert np.array_equal(np.asarray(Image.open(paths[1])) > 0, mask)


def test_display_frame_round_trips_clicks_and_draws_the_prompts():
    small = DisplayFrame.for_image(random_image(height=64, width=128))
    assert (small.width, small.height, small.scale) == (DISPLAY_SIZE, DISPLAY_SIZE // 2, 4.0)
    assert small.to_image(*small.to_display(17, 33)) == (17, 33)
    assert small.to_image(0, 0) == (0, 0) and small.to_image(511, 255) == (127, 63)  # edges stay on the image
    large = DisplayFrame.for_image(random_image(height=1024, width=2048))
    assert (large.width, large.height) == (DISPLAY_SIZE, DISPLAY_SIZE // 2)
    assert large.to_image(*large.to_display(1000, 700)) == pytest.approx((1000, 700), abs=0.01)

    image = random_image(height=64, width=128)
    shown = np.asarray(small.image(image))
    assert shown.shape == (256, 512, 3) and np.array_equal(shown[::4, ::4], np.asarray(image))  # sharp squares
    mask = np.zeros((64, 128), dtype=bool)
    mask[10:20, 30:60] = True
    state = PromptHistory(128, 64)
    state.add(POSITIVE_POINT, 100, 50)
    state.add(BOX_CORNER, 2, 2)
    rendered = np.asarray(small.render(image, state.state, mask)).astype(int)
    assert rendered.shape == shown.shape
    inside = small.mask(mask)
    assert (rendered[inside] != shown[inside]).any(axis=-1).mean() > 0.95  # the mask is filled
    x, y = (round(c) for c in small.to_display(100, 50))
    assert tuple(rendered[y, x]) == (0, 220, 0)  # the positive point, in predict's colour
    far = (slice(100, 140), slice(200, 300))  # away from the mask and the prompts: the image itself
    assert np.array_equal(rendered[far], shown[far])


def test_recorded_base_model(adapted_parts, base_checkpoint, tmp_path):
    assert recorded_base_model(str(adapted_parts)) == str(base_checkpoint)
    (tmp_path / "metrics.json").write_text(json.dumps({"base_model": "facebook/sam-vit-base"}))
    assert recorded_base_model(str(tmp_path)) == "facebook/sam-vit-base"
    assert recorded_base_model(str(base_checkpoint)) is None
    assert recorded_base_model("facebook/sam-vit-base") is None


def test_demo_model_choice(adapted_parts, base_checkpoint):
    alone = load_demo_models(None, None, "cpu")
    assert [(m.name, m.role) for m in alone] == [(str(embedded_model_path()), BASE)] and alone[0].error is None
    recorded = load_demo_models(str(adapted_parts), None, "cpu")
    assert [(m.name, m.role) for m in recorded] == [(str(adapted_parts), ADAPTED), (str(base_checkpoint), BASE)]
    chosen = load_demo_models(str(adapted_parts), str(embedded_model_path()), "cpu")
    assert chosen[1].name == str(embedded_model_path())


def test_a_model_that_does_not_load_is_reported_not_fatal(base_checkpoint, tmp_path):
    broken = DemoModel.load(str(tmp_path / "missing"), ADAPTED, "cpu")
    assert broken.model is None and "missing: no such model directory" in broken.error
    session = InteractiveSession([broken, DemoModel.load(str(base_checkpoint), BASE, "cpu")])
    session.load_image(random_image())
    session.add_prompt(POSITIVE_POINT, 50, 50)
    failed, answered = session.segment()
    assert failed.result is None and failed.summary() == broken.error
    assert answered.result is not None


def test_examples_cover_every_embedded_task_and_some_photographs():
    examples = example_images()
    names = [example.name for example in examples]
    assert len(set(names)) == len(names) == 12
    assert {"plates-0.png", "face_parts-1.png", "banners-0.png", "generic-1.png", "coffee.png"} <= set(names)
    assert all(max(example.image.size) <= EXAMPLE_PHOTOGRAPH_SIZE for example in examples)
    assert all(example.image.mode == "RGB" for example in examples)


def test_demo_command_is_registered():
    parser = argparse.ArgumentParser()
    register_demo_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "--model", "m", "--compare", "b", "--port", "8000"])
    assert (args.model, args.compare, args.host, args.port, args.share) == ("m", "b", "127.0.0.1", 8000, False)


def test_the_gradio_app_builds(models):
    pytest.importorskip("gradio", reason="the [demo] extra installs gradio")
    from sam_prompt_learner.demo import build_demo

    demo, _ = build_demo(models)
    ids = {block.elem_id for block in demo.blocks.values()}
    assert {"panel-0", "panel-1", "score-0", "score-1", "examples", "upload", "undo", "clear", "downloads"} <= ids


def test_the_space_app_builds_from_its_variables(adapted_parts, monkeypatch):
    pytest.importorskip("gradio", reason="the [demo] extra installs gradio")
    monkeypatch.setenv("SAM_PROMPT_LEARNER_MODEL", str(adapted_parts))
    monkeypatch.delenv("SAM_PROMPT_LEARNER_COMPARE", raising=False)
    app = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "space" / "app.py"))
    assert [(m.name, m.role) for m in app["models"]] == [
        (str(adapted_parts), ADAPTED),
        (recorded_base_model(str(adapted_parts)), BASE),
    ]
    assert app["demo"].title.startswith("sam-prompt-learner")

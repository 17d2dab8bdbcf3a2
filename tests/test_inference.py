import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import IMAGE_SIZE, save_tiny_sam

from sam_prompt_learner import SamPromptLearnerModel
from sam_prompt_learner.inference import (
    BATCH_SUMMARY_NAME,
    load_for_inference,
    predict_mask,
    register_predict_command,
    render_overlay,
    save_mask_and_overlay,
)
from sam_prompt_learner.trained_parts import save_trained_parts

HEIGHT, WIDTH = 96, 160  # non-square on purpose: masks must come back at (H, W), not padded or transposed


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_sam(tmp_path_factory.mktemp("tiny-sam"))


@pytest.fixture(scope="module")
def model_and_processor(checkpoint):
    return load_for_inference(str(checkpoint), device="cpu")


@pytest.fixture(autouse=True)
def never_unpickle(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called: checkpoints must load from safetensors only")

    monkeypatch.setattr(torch, "load", refuse)


def random_image(height=HEIGHT, width=WIDTH, seed=0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def run_predict(argv: list[str]) -> int:
    """What `sam-prompt-learner predict ...` runs, through a parser that holds only this command."""
    parser = argparse.ArgumentParser(prog="sam-prompt-learner")
    register_predict_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["predict", *argv])
    with torch.no_grad():
        return args.handler(args)


def test_predict_mask_picks_the_best_mask_at_image_size(model_and_processor):
    model, processor = model_and_processor
    points, labels, box = [(120.0, 30.0), (20.0, 80.0)], [1, 0], (100.0, 10.0, 150.0, 60.0)
    result = predict_mask(model, processor, random_image(), points, labels, box)
    assert result.mask.shape == (HEIGHT, WIDTH) and result.mask.dtype == bool
    assert result.masks.shape == (3, HEIGHT, WIDTH) and result.scores.shape == (3,)
    assert result.best_index == int(np.argmax(result.scores)) and result.score == result.scores.max()
    assert np.array_equal(result.mask, result.masks[result.best_index])

    # The prompt reaches the model in its input frame: the longest side (160) is resized to 128 px, so both
    # coordinates scale by 128 / 160 (the height becomes round(96 * 0.8) = 77).
    scale = IMAGE_SIZE / WIDTH
    inputs = processor(images=random_image(), return_tensors="pt")
    with torch.no_grad():
        direct = model(
            pixel_values=inputs["pixel_values"],
            input_points=torch.tensor([[points]]) * torch.tensor([scale, 77 / HEIGHT]),
            input_labels=torch.tensor([[labels]]),
            input_boxes=torch.tensor([[box]]) * torch.tensor([scale, 77 / HEIGHT] * 2),
        )
    assert np.allclose(result.scores, direct.iou_scores[0, 0].numpy(), atol=1e-5)

    single = predict_mask(model, processor, random_image(), points=[(5.0, 5.0)], multimask_output=False)
    assert single.masks.shape == (1, HEIGHT, WIDTH) and single.best_index == 0


@pytest.mark.parametrize(
    "prompt, message",
    [
        (dict(), "at least one point or a box"),
        (dict(points=[(WIDTH + 1.0, 10.0)]), "outside the 160x96 image"),
        (dict(box=(10.0, 10.0, 5.0, 20.0)), "x0 <= x1"),
        (dict(points=[(1.0, 1.0)], point_labels=[2]), "1 \\(positive\\) or 0"),
    ],
)
def test_predict_mask_rejects_bad_prompts(model_and_processor, prompt, message):
    with pytest.raises(ValueError, match=message):
        predict_mask(*model_and_processor, random_image(), **prompt)


def test_mask_and_overlay_files(tmp_path):
    image = random_image()
    mask = np.zeros((HEIGHT, WIDTH), dtype=bool)
    mask[20:60, 40:100] = True
    mask_path, overlay_path = save_mask_and_overlay(image, mask, tmp_path / "sub" / "out.png", points=[(5, 90)])
    assert overlay_path == tmp_path / "sub" / "out_overlay.png"

    with Image.open(mask_path) as written:
        assert written.format == "PNG" and written.mode == "L" and written.size == (WIDTH, HEIGHT)
        assert np.array_equal(np.asarray(written), mask.astype(np.uint8) * 255)
    with Image.open(overlay_path) as written:
        written.verify()
    with Image.open(overlay_path) as written:
        assert written.format == "PNG" and written.mode == "RGB" and written.size == (WIDTH, HEIGHT)
        overlay = np.asarray(written).astype(int)
    pixels = np.asarray(image).astype(int)
    assert np.array_equal(overlay[0:10, 120:], pixels[0:10, 120:])  # away from the mask and the point: untouched
    assert (overlay[mask] != pixels[mask]).any(axis=-1).mean() > 0.95  # tinted where the mask is
    with pytest.raises(ValueError, match="must end with .png"):
        save_mask_and_overlay(image, mask, tmp_path / "out.jpg")
    with pytest.raises(ValueError, match="mask has shape"):
        render_overlay(image, mask.T)


def test_cli_single_image_writes_mask_and_overlay(checkpoint, model_and_processor, tmp_path, capsys):
    random_image().save(tmp_path / "photo.png")
    argv = ["--model", str(checkpoint), "--image", str(tmp_path / "photo.png"), "--point", "120,30"]
    assert run_predict([*argv, "--negative_point", "20,80", "--output", str(tmp_path / "out" / "mask.png")]) == 0
    assert "predicted IoU" in capsys.readouterr().out

    expected = predict_mask(*model_and_processor, random_image(), [(120, 30), (20, 80)], [1, 0]).mask
    with Image.open(tmp_path / "out" / "mask.png") as mask, Image.open(tmp_path / "out" / "mask_overlay.png") as ov:
        assert mask.size == ov.size == (WIDTH, HEIGHT)
        assert np.array_equal(np.asarray(mask) > 0, expected)


def test_cli_trained_parts_directory_as_model(checkpoint, tmp_path):
    """A small trained-parts checkpoint predicts exactly what the full adapted checkpoint predicts."""
    model = SamPromptLearnerModel.from_pretrained(checkpoint)
    with torch.no_grad():
        model.prompt_learner.out_proj.weight.normal_(0.0, 0.5)  # a PLM that changes SAM's answer
    model.save_pretrained(tmp_path / "full")
    save_trained_parts(model, tmp_path / "parts", ["prompt_learner", "point_matching_head"])
    random_image().save(tmp_path / "photo.png")
    for name in ("full", "parts"):
        argv = ["--model", str(tmp_path / name), "--image", str(tmp_path / "photo.png"), "--box", "30,10,150,90"]
        assert run_predict([*argv, "--output", str(tmp_path / f"{name}.png")]) == 0
    with Image.open(tmp_path / "full.png") as full, Image.open(tmp_path / "parts.png") as parts:
        assert np.array_equal(np.asarray(full), np.asarray(parts))


def test_cli_batch_over_a_folder(checkpoint, model_and_processor, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    sizes = {"a.png": (HEIGHT, WIDTH), "b.jpg": (120, 70)}
    for seed, (name, (height, width)) in enumerate(sizes.items()):
        random_image(height, width, seed).save(images / name)
    (images / "notes.txt").write_text("not an image")

    assert run_predict(["--model", str(checkpoint), "--image", str(images), "--point", "30,40",
                        "--output", str(tmp_path / "out")]) == 0  # fmt: skip
    written = sorted(path.name for path in (tmp_path / "out").iterdir())
    assert written == sorted(["a.png", "a_overlay.png", "b.png", "b_overlay.png", BATCH_SUMMARY_NAME])
    for name, (height, width) in sizes.items():
        stem = name.split(".")[0]
        for output in (f"{stem}.png", f"{stem}_overlay.png"):
            with Image.open(tmp_path / "out" / output) as image:
                assert image.size == (width, height), output
    summary = json.loads((tmp_path / "out" / BATCH_SUMMARY_NAME).read_text())
    assert summary["b.jpg"] == {"mask": "b.png", "overlay": "b_overlay.png", "score": summary["b.jpg"]["score"]}
    expected = predict_mask(*model_and_processor, random_image(*sizes["a.png"], seed=0), [(30, 40)])
    assert summary["a.png"]["score"] == pytest.approx(expected.score)

    # With --prompts, each listed image gets its own prompt and only those are segmented.
    prompts = {"b.jpg": {"points": [[10, 100]], "negative_points": [[60, 5]], "box": [0, 50, 69, 119]}}
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    assert run_predict(["--model", str(checkpoint), "--image", str(images), "--prompts", str(tmp_path / "prompts.json"),
                        "--output", str(tmp_path / "listed")]) == 0  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "listed").iterdir()) == ["b.png", "b_overlay.png", BATCH_SUMMARY_NAME]


def test_cli_rejects_bad_input_with_exit_code_2(checkpoint, tmp_path, capsys):
    random_image().save(tmp_path / "photo.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    images = tmp_path / "images"
    images.mkdir()
    random_image().save(images / "a.png")
    (tmp_path / "prompts.json").write_text(json.dumps({"a.png": {"points": [[1, 2, 3]]}}))
    model = ["--model", str(checkpoint)]
    output = ["--output", str(tmp_path / "out.png")]

    with pytest.raises(SystemExit) as exit_info:
        run_predict([*model, "--image", str(tmp_path / "photo.png"), "--point", "12;30", *output])
    assert exit_info.value.code == 2 and "--point" in capsys.readouterr().err

    cases = [
        (["--image", str(tmp_path / "photo.png"), "--point", f"{WIDTH + 5},10", *output], "photo.png: Point"),
        (["--image", str(tmp_path / "photo.png"), "--box", f"0,0,10,{HEIGHT + 1}", *output], "outside the 160x96"),
        (["--image", str(tmp_path / "missing.png"), "--point", "1,1", *output], "missing.png: no such file"),
        (["--image", str(tmp_path / "broken.png"), "--point", "1,1", *output], "broken.png: not a readable image"),
        (["--image", str(tmp_path / "photo.png"), *output], "Give a prompt"),
        (["--image", str(tmp_path / "photo.png"), "--point", "1,1", "--output", str(tmp_path / "out.jpg")], ".png"),
        (["--image", str(images), "--prompts", str(tmp_path / "prompts.json"), "--output", str(tmp_path / "o")],
         "entry 'a.png': expected a list of 2 numbers"),
        (["--image", str(images), "--point", "1,1", "--output", str(images)], "would overwrite the images"),
    ]  # fmt: skip
    for argv, message in cases:
        assert run_predict([*model, *argv]) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "out.png").exists()
    assert run_predict(["--model", str(tmp_path / "nowhere"), "--image", str(tmp_path / "photo.png"),
                        "--point", "1,1", *output]) == 2  # fmt: skip
    assert "nowhere" in capsys.readouterr().err


def test_load_for_inference_names_a_missing_directory(tmp_path):
    with pytest.raises(ValueError, match="no such model directory"):
        load_for_inference(str(tmp_path / "nothing"))

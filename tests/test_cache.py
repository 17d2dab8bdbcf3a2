"""Tests of the frozen-encoder image-embedding cache: equality with the pixel path, reuse, invalidation, memory mapping,
bad images."""

import contextlib
import copy
import io
import os

import datasets
import numpy as np
import pytest
import torch
from datasets.table import MemoryMappedTable
from PIL import Image
from tiny import tiny_config, tiny_image_processor
from transformers import SamModel

from sam_prompt_learner.data.cache import (
    EMBEDDING_CACHE_COLUMNS,
    IMAGE_EMBEDDINGS_COLUMN,
    build_embedding_cache,
    embedding_cache_fingerprint,
)

# (width, height): landscape, portrait, square larger and smaller than the 128 px input, and odd sizes.
IMAGE_SIZES = [(60, 40), (90, 200), (128, 128), (300, 300), (32, 64), (131, 77)]


@pytest.fixture(scope="module")
def model() -> SamModel:
    torch.manual_seed(0)
    return SamModel(tiny_config()).eval()


@pytest.fixture
def images() -> list[Image.Image]:
    generator = np.random.default_rng(0)
    return [
        Image.fromarray(generator.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
        for width, height in IMAGE_SIZES
    ]


def make_dataset(images: list, directory: str) -> datasets.Dataset:
    """A dataset saved to and memory-mapped from `directory`, as `load_dataset` / `load_from_disk` give."""
    in_memory = datasets.Dataset.from_dict({"image": images, "label": list(range(len(images)))})
    in_memory.cast_column("image", datasets.Image()).save_to_disk(directory)
    return datasets.load_from_disk(directory)


@pytest.fixture
def dataset(images, tmp_path) -> datasets.Dataset:
    return make_dataset(images, str(tmp_path / "dataset"))


@contextlib.contextmanager
def count_encoded_images(model: SamModel):
    """Yield a one-element list holding the number of images the vision encoder has encoded so far."""
    encoded = [0]
    handle = model.vision_encoder.register_forward_hook(
        lambda module, args, output: encoded.__setitem__(0, encoded[0] + args[0].shape[0])
    )
    try:
        yield encoded
    finally:
        handle.remove()


def embedding_cache_files(cached: datasets.Dataset) -> list[str]:
    return [entry["filename"] for entry in cached.cache_files if "-00000-of-" not in entry["filename"]]


def test_float32_cache_equals_pixel_path(model, dataset, images):
    image_processor = tiny_image_processor()
    cached = build_embedding_cache(dataset, model, image_processor, batch_size=4)  # batches of 4 and 2 rows

    expected = image_processor(images=images, return_tensors="pt")
    with torch.no_grad():
        expected_embeddings = model.get_image_embeddings(expected["pixel_values"])  # (6, 32, 8, 8)
    rows = cached[:]
    assert rows[IMAGE_EMBEDDINGS_COLUMN].dtype == torch.float32
    assert rows[IMAGE_EMBEDDINGS_COLUMN].shape == (6, 32, 8, 8)
    torch.testing.assert_close(rows[IMAGE_EMBEDDINGS_COLUMN], expected_embeddings, rtol=1e-5, atol=1e-6)
    assert torch.equal(rows["original_sizes"], expected["original_sizes"])
    assert torch.equal(rows["reshaped_input_sizes"], expected["reshaped_input_sizes"])
    # The dataset's own columns are kept, row-aligned, in their Python format.
    assert rows["label"] == list(range(6))
    assert rows["image"][1].size == IMAGE_SIZES[1]
    assert cached.features[IMAGE_EMBEDDINGS_COLUMN] == datasets.Array3D(shape=(32, 8, 8), dtype="float32")
    assert cached.format["type"] == "torch" and cached.format["columns"] == list(EMBEDDING_CACHE_COLUMNS)


def test_float16_cache_is_close_and_half_the_size(model, dataset, images):
    image_processor = tiny_image_processor()
    float32_cache = build_embedding_cache(dataset, model, image_processor)
    with count_encoded_images(model) as encoded:
        float16_cache = build_embedding_cache(dataset, model, image_processor, dtype=torch.float16)
    assert encoded[0] == len(images), "a different storage dtype must not reuse the float32 cache"

    assert float16_cache.features[IMAGE_EMBEDDINGS_COLUMN].dtype == "float16"
    with torch.no_grad():
        expected = model.get_image_embeddings(image_processor(images=images, return_tensors="pt")["pixel_values"])
    torch.testing.assert_close(float16_cache[:][IMAGE_EMBEDDINGS_COLUMN], expected, rtol=1e-2, atol=1e-3)

    (float32_file,) = embedding_cache_files(float32_cache)
    (float16_file,) = embedding_cache_files(float16_cache)
    assert os.path.getsize(float16_file) < 0.6 * os.path.getsize(float32_file)


def test_same_inputs_reuse_the_cache(model, dataset):
    first = build_embedding_cache(dataset, model, tiny_image_processor())
    with count_encoded_images(model) as encoded:
        second = build_embedding_cache(dataset, model, tiny_image_processor())
    assert encoded[0] == 0
    assert embedding_cache_files(second) == embedding_cache_files(first)
    assert torch.equal(second[:][IMAGE_EMBEDDINGS_COLUMN], first[:][IMAGE_EMBEDDINGS_COLUMN])


def test_cache_is_memory_mapped_from_disk(model, dataset, tmp_path):
    cached = build_embedding_cache(dataset, model, tiny_image_processor())
    (cache_file,) = embedding_cache_files(cached)
    # Next to the dataset's own files by default.
    assert os.path.dirname(cache_file) == str(tmp_path / "dataset")
    embedding_blocks = [
        block for row in cached.data.blocks for block in row if IMAGE_EMBEDDINGS_COLUMN in block.column_names
    ]
    assert embedding_blocks and all(isinstance(block, MemoryMappedTable) for block in embedding_blocks)


def test_changed_encoder_weight_rebuilds(model, dataset):
    image_processor = tiny_image_processor()
    original = build_embedding_cache(dataset, model, image_processor)
    edited_model = copy.deepcopy(model)
    with torch.no_grad():
        edited_model.vision_encoder.neck.conv1.weight[0, 0, 0, 0] += 1.0

    with count_encoded_images(edited_model) as encoded:
        rebuilt = build_embedding_cache(dataset, edited_model, image_processor)
    assert encoded[0] == len(dataset)
    assert embedding_cache_files(rebuilt) != embedding_cache_files(original)
    assert not torch.equal(rebuilt[:][IMAGE_EMBEDDINGS_COLUMN], original[:][IMAGE_EMBEDDINGS_COLUMN])


def test_changes_outside_the_vision_encoder_reuse_the_cache(model, dataset):
    build_embedding_cache(dataset, model, tiny_image_processor())
    edited_model = copy.deepcopy(model)
    with torch.no_grad():
        edited_model.mask_decoder.iou_token.weight.add_(1.0)
    # The mask sizes only apply to segmentation maps, never to pixel values.
    mask_size_processor = tiny_image_processor()
    mask_size_processor.mask_size = {"longest_edge": 64}
    mask_size_processor.mask_pad_size = {"height": 64, "width": 64}

    with count_encoded_images(edited_model) as encoded:
        build_embedding_cache(dataset, edited_model, mask_size_processor)
    assert encoded[0] == 0


def test_changed_processor_setting_rebuilds(model, dataset):
    original = build_embedding_cache(dataset, model, tiny_image_processor())
    smaller_resize = tiny_image_processor()
    smaller_resize.size = {"longest_edge": 96}  # resized to 96 px, still padded to the encoder's 128 px

    with count_encoded_images(model) as encoded:
        rebuilt = build_embedding_cache(dataset, model, smaller_resize)
    assert encoded[0] == len(dataset)
    assert embedding_cache_files(rebuilt) != embedding_cache_files(original)
    assert rebuilt[:]["reshaped_input_sizes"].max() == 96
    assert original[:]["reshaped_input_sizes"].max() == 128


def test_fingerprint_follows_the_dataset(model, dataset):
    image_processor = tiny_image_processor()
    fingerprint = embedding_cache_fingerprint(dataset, model, image_processor)
    assert fingerprint == embedding_cache_fingerprint(dataset, copy.deepcopy(model), image_processor)
    assert fingerprint != embedding_cache_fingerprint(dataset.select([0, 1, 2]), model, image_processor)
    assert fingerprint != embedding_cache_fingerprint(dataset, model, image_processor, image_column="mask")


def test_in_memory_dataset_goes_to_the_default_or_given_cache_dir(model, images, tmp_path, monkeypatch):
    in_memory = datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    (cache_file,) = embedding_cache_files(build_embedding_cache(in_memory, model, tiny_image_processor()))
    assert os.path.dirname(cache_file) == str(tmp_path / "hf-datasets" / "sam_prompt_learner_embeddings")

    cached = build_embedding_cache(in_memory, model, tiny_image_processor(), cache_dir=tmp_path / "embeddings")
    (cache_file,) = embedding_cache_files(cached)
    assert os.path.dirname(cache_file) == str(tmp_path / "embeddings")
    assert cached[2][IMAGE_EMBEDDINGS_COLUMN].shape == (32, 8, 8)


def test_undecodable_image_names_its_row(model, images, tmp_path):
    encoded_images = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded_images.append({"bytes": buffer.getvalue(), "path": None})
    encoded_images[4] = {"bytes": encoded_images[4]["bytes"][:100], "path": None}  # truncated PNG
    corrupt = make_dataset(encoded_images, str(tmp_path / "corrupt"))

    with pytest.raises(ValueError, match=r"Row 4: the image in column 'image' cannot be encoded"):
        build_embedding_cache(corrupt, model, tiny_image_processor(), batch_size=4)


def test_input_validation(model, dataset):
    with pytest.raises(ValueError, match="bfloat16"):
        build_embedding_cache(dataset, model, tiny_image_processor(), dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="'label' must have the feature type `datasets.Image`"):
        build_embedding_cache(dataset, model, tiny_image_processor(), image_column="label")
    with_embeddings = build_embedding_cache(dataset, model, tiny_image_processor())
    with pytest.raises(ValueError, match="already has the column"):
        build_embedding_cache(with_embeddings.with_format(None), model, tiny_image_processor())


def test_training_mode_is_restored(model, dataset):
    trained = copy.deepcopy(model).train()
    build_embedding_cache(dataset, trained, tiny_image_processor())
    assert trained.training and trained.vision_encoder.training


def test_peft_model_and_accelerator(model, dataset):
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model

    image_processor = tiny_image_processor()
    plain = build_embedding_cache(dataset, model, image_processor)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, lora_alpha=4, target_modules=["qkv"]))

    with count_encoded_images(peft_model) as encoded:
        adapted = build_embedding_cache(dataset, peft_model, image_processor, accelerator=Accelerator(cpu=True))
    # Adapter weights are part of the encoder's state, so they get their own cache; LoRA's B matrices start at
    # zero, so the embeddings equal the base model's.
    assert encoded[0] == len(dataset)
    assert embedding_cache_files(adapted) != embedding_cache_files(plain)
    torch.testing.assert_close(adapted[:][IMAGE_EMBEDDINGS_COLUMN], plain[:][IMAGE_EMBEDDINGS_COLUMN])

    # Another process (same files, same inputs) only reads the finished cache.
    with count_encoded_images(model) as encoded:
        build_embedding_cache(dataset, model, image_processor, accelerator=Accelerator(cpu=True))
    assert encoded[0] == 0


@pytest.mark.parametrize("family", ["sam", "sam_hq", "sam2"])
@pytest.mark.parametrize("trainable", ["default", "with_mask_decoder"])
def test_training_step_from_the_cache_equals_training_from_pixels(tmp_path, family, trainable):
    """The loss and the gradients of the trained parts are the same whether the batch carries cached features or
    pixels that the frozen encoder turns into the same features, in every family (SAM-HQ's decoder also reads ViT
    features, SAM 2's two high-resolution maps: the cache holds them too)."""
    from tiny import tiny_sam2_config, tiny_sam_hq_config

    from sam_prompt_learner import (
        PromptLearnerConfig,
        Sam2PromptLearnerConfig,
        Sam2PromptLearnerModel,
        SamHQPromptLearnerConfig,
        SamHQPromptLearnerModel,
        SamPromptLearnerModel,
    )
    from sam_prompt_learner.data import PromptConfig, SamPromptCollator, load_synthetic_task, prepare_dataset
    from sam_prompt_learner.evaluation import model_inputs
    from sam_prompt_learner.image_features import image_feature_shapes

    model_class, config = {
        "sam": (SamPromptLearnerModel, tiny_config(PromptLearnerConfig)),
        "sam_hq": (SamHQPromptLearnerModel, tiny_sam_hq_config(SamHQPromptLearnerConfig)),
        "sam2": (Sam2PromptLearnerModel, tiny_sam2_config(Sam2PromptLearnerConfig)),
    }[family]
    torch.manual_seed(0)
    model = model_class(config).train()
    if trainable == "with_mask_decoder":
        model.set_trainable(["prompt_learner", "point_matching_head", "mask_decoder"])
    raw = load_synthetic_task("generic", num_train=4, num_validation=0, num_test=0)
    normalized, _ = prepare_dataset(raw["train"])
    cached = build_embedding_cache(normalized, model, tiny_image_processor(), cache_dir=tmp_path)
    shapes = image_feature_shapes(model.config)
    assert len(shapes) == {"sam": 1, "sam_hq": 2, "sam2": 3}[family]
    for column, shape in shapes.items():
        assert tuple(cached[0][column].shape) == shape, column
    prompts = PromptConfig(mode_weights={"points_and_box": 1.0}, num_positive_points=(1, 3))
    rows = [cached[index] for index in range(4)]

    def loss_and_gradients(use_image_embeddings: bool):
        batch = SamPromptCollator(tiny_image_processor(), prompts, use_image_embeddings=use_image_embeddings)(rows)
        assert ("pixel_values" in batch) != use_image_embeddings
        model.zero_grad()
        torch.manual_seed(1)  # the boundary-band points of the loss
        loss = model(**model_inputs(batch), labels=batch["labels"], prompt_mask=batch["prompt_mask"]).loss
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    cached_loss, cached_gradients = loss_and_gradients(True)
    pixel_loss, pixel_gradients = loss_and_gradients(False)
    assert cached_loss == pytest.approx(pixel_loss, rel=1e-5)
    assert cached_gradients.keys() == pixel_gradients.keys() and cached_gradients
    assert any(name.startswith("mask_decoder.") for name in cached_gradients) == (trainable == "with_mask_decoder")
    for name, gradient in cached_gradients.items():
        torch.testing.assert_close(gradient, pixel_gradients[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("damage", ["truncate", "flip_a_byte", "no_checksum_record"])
def test_a_damaged_cache_is_rebuilt_not_reused(model, dataset, damage, caplog):
    first = build_embedding_cache(dataset, model, tiny_image_processor())
    (cache_file,) = embedding_cache_files(first)
    expected = first[:][IMAGE_EMBEDDINGS_COLUMN].clone()
    del first  # memory-maps the file, which is damaged below
    content = bytearray(open(cache_file, "rb").read())
    if damage == "truncate":  # a copy cut short, a disk that filled up
        content = content[: len(content) // 2]
    elif damage == "flip_a_byte":  # the embedding of one image silently changed
        content[-100] ^= 0xFF
    with open(cache_file + ".damaged", "wb") as handle:
        handle.write(content)
    os.replace(cache_file + ".damaged", cache_file)
    if damage == "no_checksum_record":  # a file written by a build killed before it was recorded
        os.unlink(cache_file.replace(".arrow", ".sha256.json"))

    with count_encoded_images(model) as encoded:
        rebuilt = build_embedding_cache(dataset, model, tiny_image_processor())
    assert encoded[0] == len(dataset)
    assert f"Rebuilding the embedding cache {cache_file}" in caplog.text
    torch.testing.assert_close(rebuilt[:][IMAGE_EMBEDDINGS_COLUMN], expected)
    with count_encoded_images(model) as encoded:
        build_embedding_cache(dataset, model, tiny_image_processor())
    assert encoded[0] == 0  # the rebuilt file verifies


def test_a_killed_build_leaves_nothing_the_next_build_does_not_remove(model, dataset, tmp_path):
    import subprocess
    import sys

    cache_dir = tmp_path / "cache"
    # A build killed midway: its directory and `datasets`' temporary file, with no living process holding its lock.
    abandoned = cache_dir / ".building-image_embeddings-0123-99999"
    abandoned.mkdir(parents=True)
    (abandoned / "tmpk1ll3d").write_bytes(b"\0" * 2**20)
    # A build in progress in another process: left alone.
    hold = "import sys; from sam_prompt_learner.run_lock import lock_directory; lock_directory(sys.argv[1]); "
    hold += "print('locked', flush=True); sys.stdin.read()"
    in_progress = cache_dir / ".building-image_embeddings-4567-1"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(in_progress)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        cached = build_embedding_cache(dataset, model, tiny_image_processor(), cache_dir=cache_dir)
        assert len(cached) == len(dataset)
        assert sorted(entry.name for entry in cache_dir.iterdir() if entry.name.startswith(".")) == [in_progress.name]
        assert sorted(entry.suffix for entry in cache_dir.iterdir() if not entry.name.startswith(".")) == [
            ".arrow",
            ".json",
        ]
    finally:
        holder.kill()
        holder.wait()


def test_non_finite_embeddings_name_their_row(model, dataset):
    overflowing = copy.deepcopy(model)
    with torch.no_grad():
        overflowing.vision_encoder.neck.layer_norm2.bias.fill_(1e6)  # beyond float16's 65504
    with pytest.raises(ValueError, match=r"Row 0: the vision encoder gave non-finite image embeddings \(in float16\)"):
        build_embedding_cache(dataset, overflowing, tiny_image_processor(), dtype=torch.float16)


def test_sam2_fingerprint_covers_the_decoder_projections_applied_in_image_encoding(dataset):
    """SAM 2's cached high-resolution features pass through the decoder's conv_s0/conv_s1 and the no-memory
    embedding: changing those changes the cache, changing the rest of the decoder does not."""
    from tiny import tiny_sam2_config
    from transformers import Sam2Model

    torch.manual_seed(0)
    model = Sam2Model(tiny_sam2_config()).eval()
    processor = tiny_image_processor()
    original = embedding_cache_fingerprint(dataset, model, processor)
    with torch.no_grad():
        model.mask_decoder.iou_token.weight.add_(1.0)
    assert embedding_cache_fingerprint(dataset, model, processor) == original
    for parameter in (model.mask_decoder.conv_s0.weight, model.mask_decoder.conv_s1.bias, model.no_memory_embedding):
        with torch.no_grad():
            parameter.add_(1.0)
        changed = embedding_cache_fingerprint(dataset, model, processor)
        assert changed != original
        original = changed

"""Frozen-encoder image-embedding cache.

With SAM's image encoder frozen, its output for an image never changes, and at ViT-B size the encoder is more than 98%
of a training step. [`build_embedding_cache`] therefore runs the encoder once per image with `datasets.map`, stores the
embeddings in an Arrow file next to the dataset (or in `cache_dir`), and returns the dataset with the embeddings added
as memory-mapped columns, so every epoch after the first reads them from disk instead of recomputing them.

The cache file is named by [`embedding_cache_fingerprint`], which covers everything the embeddings depend on: the
dataset and its image column, the vision encoder's configuration and weights, the image processor's settings and the
storage dtype. Rebuilding with the same inputs reuses the file; any change to one of them writes a new one, so a cache
computed with another base model or processor is never read back.

A finished cache file is only reused once verified: its checksum record (`image_embeddings-<fingerprint>.sha256.json`,
written when the build ends, after every embedding was checked finite) must match its row count and its bytes; a
truncated, altered or unrecorded file is rebuilt, with a warning. A build runs in a locked directory of its own
(`.building-*`) and moves its file into place when done, so a build killed midway leaves no half-written cache file,
and the next build removes the directory it left (with `datasets`' temporary files, gigabytes at ViT-B size).

The cache stores what the model's mask decoder reads from the image (`image_features.image_feature_shapes`): SAM's
image embedding; for SAM-HQ also the ViT features its HQ branch reads; for SAM 2 also the two high-resolution feature
maps its decoder upsamples with. A step from the cache therefore computes exactly what a step from pixels computes.

A cache holds the encoder's output at the time it was built: it is only valid while the vision encoder stays frozen.
Training the encoder (LoRA on its attention, for example) or augmenting images needs the pixel path instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers.image_processing_utils import BaseImageProcessor

from ..image_features import (
    IMAGE_EMBEDDINGS_COLUMN,
    encode_image_features,
    image_encoding_tensors,
    image_feature_shapes,
)
from ..run_lock import DirectoryInUseError, lock_directory
from .formats import upright

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from accelerate import Accelerator


ORIGINAL_SIZES_COLUMN = "original_sizes"
RESHAPED_INPUT_SIZES_COLUMN = "reshaped_input_sizes"
# The columns of a SAM cache; SAM-HQ and SAM 2 caches hold more image features (`image_feature_shapes`).
EMBEDDING_CACHE_COLUMNS = (IMAGE_EMBEDDINGS_COLUMN, ORIGINAL_SIZES_COLUMN, RESHAPED_INPUT_SIZES_COLUMN)

# Bump when the cached columns or the way they are computed change, so that files written by an older version of this
# module are not read back as if they were current. 2: the per-family image-feature columns.
_CACHE_FORMAT_VERSION = 2

# A build in progress (or killed) writes in `.building-<cache file>-<pid>/` next to the cache file.
_BUILD_DIR_PREFIX = ".building-"

# Arrow has no bfloat16; float16 halves the disk footprint of float32 for a relative error of about 5e-4.
_STORAGE_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16"}

# Image-processor settings that cannot change `pixel_values`: the `mask_*` sizes only apply to segmentation maps, and
# `_processor_class` names the `SamProcessor` wrapping the image processor.
_PROCESSOR_KEYS_WITHOUT_EFFECT_ON_PIXELS = ("mask_size", "mask_pad_size", "_processor_class")

# What decoding an image or preprocessing it raises on bad input (corrupt or truncated bytes, an unknown format, an
# image too large for PIL's decompression-bomb guard, a mode the processor cannot convert).
_IMAGE_ERRORS = (OSError, ValueError, Image.DecompressionBombError)


def default_embedding_cache_dir() -> Path:
    """Where caches of in-memory datasets go: `sam_prompt_learner_embeddings/` in `datasets`' cache directory
    (`HF_DATASETS_CACHE`)."""
    return Path(datasets.config.HF_DATASETS_CACHE) / "sam_prompt_learner_embeddings"


def vision_encoder_digest(vision_encoder: nn.Module) -> str:
    """
    SHA-256 digest of a vision encoder's state: the name, dtype, shape and bytes of every tensor in its `state_dict`
    (parameters and persistent buffers, including adapter weights injected by peft).

    Every byte is hashed, rather than a few strided slices of each tensor or the checkpoint's safetensors metadata,
    because the digest must change whenever the encoder's output can: a sampled hash misses an edit outside the sampled
    positions (a fine-tuned or merged row), and checkpoint metadata says nothing about weights changed in memory after
    loading. The full hash stays cheap: SHA-256 runs at about 0.6 s/GB on one CPU core, i.e. about 0.2 s for ViT-B's
    encoder and 1.5 s for ViT-H's (2.5 GB in float32), less than reading those weights from disk in the first place and
    far less than encoding a single image with ViT-H on CPU. Tensors are copied to the CPU one at a time, so the peak
    extra memory is the largest single tensor.

    Args:
        vision_encoder (`nn.Module`):
            The module that maps pixel values to image embeddings, e.g. `SamModel.vision_encoder`.

    Returns:
        `str`: the 64-character hexadecimal digest.
    """
    return tensors_digest(vision_encoder.state_dict())


def tensors_digest(named_tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 digest of the name, dtype, shape and bytes of every tensor (see [`vision_encoder_digest`])."""
    digest = hashlib.sha256()
    for name, tensor in named_tensors.items():
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)};".encode())
        # Viewing the flattened tensor as bytes works for every dtype, bfloat16 included, which numpy cannot represent.
        digest.update(tensor.detach().reshape(-1).view(torch.uint8).cpu().numpy())
    return digest.hexdigest()


def embedding_cache_fingerprint(
    dataset: datasets.Dataset,
    model: nn.Module,
    image_processor: BaseImageProcessor,
    *,
    image_column: str = "image",
    dtype: torch.dtype = torch.float32,
) -> str:
    """
    Fingerprint of the image embeddings that [`build_embedding_cache`] computes for these inputs: equal fingerprints
    mean equal embeddings, and it names the cache file.

    It combines the dataset's own `_fingerprint` (which `datasets` derives from its files and every transform applied
    to it) and the image column, the vision encoder's configuration and weights ([`vision_encoder_digest`]), the image
    processor's settings and the storage dtype. The prompt encoder, the mask decoder and any prompt-learning module are
    deliberately left out: they do not touch the image embeddings, so changing them reuses the cache.

    Args:
        dataset (`datasets.Dataset`):
            The dataset whose images are encoded.
        model (`SamModel`, a subclass such as `SamPromptLearnerModel`, or a `PeftModel` wrapping one):
            The model whose vision encoder computes the embeddings.
        image_processor (`BaseImageProcessor`):
            The SAM image processor that turns images into `pixel_values`.
        image_column (`str`, *optional*, defaults to `"image"`):
            Name of the dataset's image column.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`):
            Storage dtype of the embeddings, `torch.float32` or `torch.float16`.

    Returns:
        `str`: a 64-character hexadecimal fingerprint, valid as `datasets`' `new_fingerprint`.
    """
    vision_config = model.config.vision_config.to_dict()
    # Where the weights were loaded from does not matter: the digest below identifies them.
    vision_config.pop("_name_or_path", None)
    processor_settings = {
        key: value
        for key, value in image_processor.to_dict().items()
        if key not in _PROCESSOR_KEYS_WITHOUT_EFFECT_ON_PIXELS
    }
    components = {
        "cache_format_version": _CACHE_FORMAT_VERSION,
        "dataset_fingerprint": dataset._fingerprint,
        "image_column": image_column,
        "vision_config": vision_config,
        "vision_encoder_weights": vision_encoder_digest(model.vision_encoder),
        # SAM 2's features also pass through two decoder projections and a learned embedding.
        "image_encoding_weights": tensors_digest(image_encoding_tensors(model)),
        "image_feature_shapes": image_feature_shapes(model.config),
        "image_processor": processor_settings,
        "storage_dtype": _storage_dtype_name(dtype),
    }
    # `repr` serialises the few non-JSON values (e.g. PIL's `Resampling` enum) deterministically.
    serialized = json.dumps(components, sort_keys=True, default=repr)
    return hashlib.sha256(serialized.encode()).hexdigest()


def build_embedding_cache(
    dataset: datasets.Dataset,
    model: nn.Module,
    image_processor: BaseImageProcessor,
    *,
    image_column: str = "image",
    batch_size: int = 8,
    dtype: torch.dtype = torch.float32,
    accelerator: Accelerator | None = None,
    cache_dir: str | os.PathLike | None = None,
    load_from_cache_file: bool | None = None,
) -> datasets.Dataset:
    """
    Compute SAM image embeddings for every row of a dataset once, store them on disk, and return the dataset with them.

    Each image is decoded, preprocessed by `image_processor` (resize of the longest side to the encoder's `image_size`,
    normalisation, bottom/right padding) and encoded by the vision encoder, in eval mode under `torch.inference_mode()`,
    `batch_size` images at a time with `datasets.map` (which shows a progress bar). The cache file holds only the new
    columns; they are joined to the dataset's own columns without copying the images. Its name is
    [`embedding_cache_fingerprint`]: when the file already exists and verifies (row count and SHA-256 checksum, see
    the module docstring), it is memory-mapped and no image is encoded; when it does not, it is rebuilt.

    Under Accelerate, pass `accelerator`: the main process builds the cache first
    (`accelerator.main_process_first()`) while the other processes wait, and they then find the finished file and
    memory-map it. This needs the cache location (the dataset's cache directory or `cache_dir`) to be on a file system
    every process can read, as the `datasets` cache usually is on one machine. The model is moved to
    `accelerator.device`, as `accelerator.prepare` would do, and encodes there.

    Args:
        dataset (`datasets.Dataset`):
            Dataset with an image column of feature type `datasets.Image`. A dataset that changes by row selection
            (`select`, `shuffle`, `filter`) has its indices mapping flattened by `datasets` when the columns are joined,
            i.e. it is rewritten once; shuffle in the `DataLoader` instead to avoid that.
        model (`SamModel`, `SamHQModel`, `Sam2Model`, a prompt-learner subclass, or a `PeftModel` wrapping one):
            Model whose frozen vision encoder computes the embeddings (through `get_image_embeddings`). Its training
            mode is restored on return.
        image_processor (`BaseImageProcessor`):
            The SAM image processor used for the model, e.g. `SamProcessor.image_processor`. Its `size` and `pad_size`
            must match the encoder's `image_size`.
        image_column (`str`, *optional*, defaults to `"image"`):
            Name of the dataset's image column.
        batch_size (`int`, *optional*, defaults to 8):
            Number of images encoded per forward pass; also the number of rows written to disk at a time.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`):
            Storage dtype of the embeddings: `torch.float32`, or `torch.float16` to halve the disk space (about 2 MiB
            instead of 4 MiB per image at ViT-B size).
        accelerator (`accelerate.Accelerator`, *optional*):
            When given, the cache is built by the main process first and the model runs on `accelerator.device`.
            Otherwise the model runs where it is.
        cache_dir (`str` or `os.PathLike`, *optional*):
            Directory of the cache file. Defaults to the directory of the dataset's own cache files (where
            `load_dataset` / `load_from_disk` put them), or, for a dataset built in memory (e.g. with
            `Dataset.from_dict`, like the embedded synthetic tasks), to `default_embedding_cache_dir()`.
        load_from_cache_file (`bool`, *optional*):
            Reuse an existing cache file with the same fingerprint. Defaults to `datasets`' global caching setting
            (`datasets.is_caching_enabled()`); `False` recomputes the embeddings in every process.

    Returns:
        `datasets.Dataset`: the input dataset with more columns, formatted with `with_format("torch",
        columns=<the new columns>, output_all_columns=True)` (the other columns keep their Python format, e.g.
        PIL images):
        - `"image_embeddings"`: feature `Array3D(shape=(C, E, E), dtype="float32" | "float16")`, read as a float32
          `torch.Tensor` of shape `(C, E, E)` per row (`datasets`' torch format returns float32 for every floating
          column), with `C = vision_config.output_channels` and `E = image_size // patch_size`;
        - for SAM-HQ and SAM 2, the further feature columns of `image_feature_shapes(model.config)`, stored alike
          (`intermediate_embeddings`; `high_resolution_features_s0` and `_s1`);
        - `"original_sizes"`: `List(Value("int64"), length=2)`, the image's `(height, width)` before preprocessing;
        - `"reshaped_input_sizes"`: `List(Value("int64"), length=2)`, its `(height, width)` after resizing and before
          padding, i.e. the valid region of the padded `(image_size, image_size)` input frame.

    Raises:
        `ValueError`: for an unsupported `dtype`, a missing or non-image `image_column`, an output column already in the
        dataset, or a row whose image is missing, cannot be decoded or cannot be preprocessed, or whose embeddings are
        not finite in the storage dtype (the message names the row index).
    """
    storage_dtype_name = _storage_dtype_name(dtype)
    image_feature = dataset.features.get(image_column)
    if not isinstance(image_feature, datasets.Image):
        raise ValueError(
            f"The image column {image_column!r} must have the feature type `datasets.Image`, got {image_feature!r}; "
            f"available columns: {dataset.column_names}."
        )
    feature_shapes = image_feature_shapes(model.config)  # {column: shape per image}
    cache_columns = [*feature_shapes, ORIGINAL_SIZES_COLUMN, RESHAPED_INPUT_SIZES_COLUMN]
    existing_output_columns = [column for column in cache_columns if column in dataset.column_names]
    if existing_output_columns:
        raise ValueError(f"The dataset already has the column(s) {existing_output_columns} that the cache adds.")
    if cache_dir is None:
        # An in-memory dataset has no directory of its own; the fingerprint makes a shared directory safe.
        cache_dir = Path(dataset.cache_files[0]["filename"]).parent if dataset.cache_files else None
        cache_dir = cache_dir or default_embedding_cache_dir()

    fingerprint = embedding_cache_fingerprint(dataset, model, image_processor, image_column=image_column, dtype=dtype)
    os.makedirs(cache_dir, exist_ok=True)
    cache_file = Path(cache_dir) / f"image_embeddings-{fingerprint}.arrow"
    if load_from_cache_file is None:
        load_from_cache_file = datasets.is_caching_enabled()

    if accelerator is not None:
        model.to(accelerator.device)
    cache_features = datasets.Features(
        {
            **{
                column: datasets.Array3D(shape=shape, dtype=storage_dtype_name)
                for column, shape in feature_shapes.items()
            },
            ORIGINAL_SIZES_COLUMN: datasets.List(datasets.Value("int64"), length=2),
            RESHAPED_INPUT_SIZES_COLUMN: datasets.List(datasets.Value("int64"), length=2),
        }
    )
    # The images reach `encode` undecoded so that a bad one is reported with its row index; `datasets` would otherwise
    # decode the whole batch before the function runs and fail without saying which row.
    image_decoder = datasets.Image(mode=image_feature.mode)
    vision_parameter = next(model.vision_encoder.parameters())  # pixel values go to its device and dtype
    undecoded_images = dataset.select_columns([image_column]).cast_column(
        image_column, datasets.Image(mode=image_feature.mode, decode=False)
    )

    def encode(encoded_images: list[dict[str, Any] | None], indices: list[int]) -> dict[str, np.ndarray]:
        pixel_values, original_sizes, reshaped_input_sizes = [], [], []
        for encoded_image, index in zip(encoded_images, indices, strict=True):
            inputs = _preprocess_row(encoded_image, index, image_column, image_decoder, image_processor)
            pixel_values.append(inputs["pixel_values"])  # (1, 3, S, S)
            original_sizes.append(inputs["original_sizes"])  # (1, 2)
            reshaped_input_sizes.append(inputs["reshaped_input_sizes"])  # (1, 2)
        pixel_values = torch.cat(pixel_values).to(vision_parameter.device, vision_parameter.dtype)  # (B, 3, S, S)
        with torch.inference_mode():
            features = encode_image_features(model, pixel_values)  # {column: (B, ...)}
        stored = {column: feature.to(dtype) for column, feature in features.items()}
        # Checked once here, in the storage dtype (float16 overflows to inf above 65504): the checksum written with the
        # finished file then proves every later reuse finite too.
        finite = torch.stack([feature.flatten(1).isfinite().all(1) for feature in stored.values()]).all(0)  # (B,)
        if not finite.all():
            row = indices[int((~finite).nonzero()[0])]
            raise ValueError(
                f"Row {row}: the vision encoder gave non-finite image embeddings (in {storage_dtype_name}); with "
                "--cache_dtype float16, float32 avoids an overflow."
            )
        return {
            **{column: feature.cpu().numpy() for column, feature in stored.items()},
            ORIGINAL_SIZES_COLUMN: torch.cat(original_sizes).numpy(),  # (B, 2)
            RESHAPED_INPUT_SIZES_COLUMN: torch.cat(reshaped_input_sizes).numpy(),  # (B, 2)
        }

    def map_to(file: Path, reuse: bool) -> datasets.Dataset:
        return undecoded_images.map(
            encode,
            batched=True,
            batch_size=batch_size,
            with_indices=True,
            input_columns=[image_column],
            remove_columns=[image_column],
            features=cache_features,
            # `datasets` buffers `writer_batch_size` rows (1000 by default) before writing: 4 GB of float32 ViT-B
            # embeddings. Writing each encoded batch keeps memory flat.
            writer_batch_size=batch_size,
            new_fingerprint=fingerprint,
            cache_file_name=str(file),
            load_from_cache_file=reuse,
            desc="Caching SAM image embeddings",
        )

    main_process_first = accelerator.main_process_first() if accelerator is not None else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    try:
        with main_process_first:
            problem = _verification_problem(cache_file, len(dataset)) if load_from_cache_file else "not reused"
            if problem is not None:
                if load_from_cache_file and cache_file.exists():
                    logger.warning(f"Rebuilding the embedding cache {cache_file}: {problem}.")
                _build_verified(cache_file, len(dataset), lambda file: map_to(file, reuse=False))
            embeddings = map_to(cache_file, reuse=True)  # memory-maps the verified file
    finally:
        model.train(was_training)

    cached_dataset = datasets.concatenate_datasets([dataset, embeddings], axis=1)
    return cached_dataset.with_format("torch", columns=cache_columns, output_all_columns=True)


def _checksum_file(cache_file: Path) -> Path:
    return cache_file.with_suffix(".sha256.json")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _verification_problem(cache_file: Path, num_rows: int) -> str | None:
    """Why a finished cache file must not be reused (`None` when it may): it is missing, has no checksum record (a
    build killed before the record was written, or a file from an older version), holds another number of rows, or
    its bytes changed since it was written (a truncated copy, a disk error). Reading it for the SHA-256 costs about
    0.6 s/GB on one CPU core."""
    if not cache_file.is_file():
        return "no cache file"
    try:
        record = json.loads(_checksum_file(cache_file).read_text())
    except (OSError, ValueError):
        return f"no readable checksum record {_checksum_file(cache_file).name}"
    if record.get("num_rows") != num_rows:
        return f"it holds {record.get('num_rows')} rows, the dataset {num_rows}"
    if _sha256(cache_file) != record.get("sha256"):
        return "its contents changed since it was written (checksum mismatch)"
    return None


def _build_verified(cache_file: Path, num_rows: int, build: Any) -> None:
    """
    Build `cache_file` with `build(path)` in a locked directory of its own next to it, record its checksum, then move
    both into place (a rename: atomic). A build killed midway leaves only that directory, whose `datasets` temporary
    files can be gigabytes: each build first removes every such directory no living process holds.
    """
    cache_dir = cache_file.parent
    for abandoned in cache_dir.glob(f"{_BUILD_DIR_PREFIX}*"):
        try:
            lock_directory(abandoned).close()
        except DirectoryInUseError:  # a build in progress
            continue
        shutil.rmtree(abandoned, ignore_errors=True)
    staging = cache_dir / f"{_BUILD_DIR_PREFIX}{cache_file.stem}-{os.getpid()}"
    lock = lock_directory(staging)
    try:
        build(staging / cache_file.name)
        record = {"num_rows": num_rows, "sha256": _sha256(staging / cache_file.name)}
        _checksum_file(staging / cache_file.name).write_text(json.dumps(record) + "\n")
        _checksum_file(cache_file).unlink(missing_ok=True)  # never a new file with the old record
        os.replace(staging / cache_file.name, cache_file)
        os.replace(_checksum_file(staging / cache_file.name), _checksum_file(cache_file))
    finally:
        lock.close()
        shutil.rmtree(staging, ignore_errors=True)


def _storage_dtype_name(dtype: torch.dtype) -> str:
    """Arrow dtype name of a supported embedding storage dtype."""
    if dtype not in _STORAGE_DTYPE_NAMES:
        raise ValueError(f"Embeddings can be stored as {list(_STORAGE_DTYPE_NAMES)}, got dtype={dtype}.")
    return _STORAGE_DTYPE_NAMES[dtype]


def _preprocess_row(
    encoded_image: dict[str, Any] | None,
    index: int,
    image_column: str,
    image_decoder: datasets.Image,
    image_processor: BaseImageProcessor,
) -> dict[str, torch.Tensor]:
    """Decode one row's image and preprocess it, turning any failure into a `ValueError` that names the row."""
    if encoded_image is None:
        raise ValueError(f"Row {index}: the image column {image_column!r} is empty.")
    try:
        # Upright as `prepare_dataset` reads images (and masks): older `datasets` versions decode without the EXIF
        # orientation.
        image = upright(image_decoder.decode_example(encoded_image))
        # (1, 3, S, S) pixel values, (1, 2) original and (1, 2) reshaped (height, width)
        return image_processor(images=image, return_tensors="pt")
    except _IMAGE_ERRORS as error:
        raise ValueError(f"Row {index}: the image in column {image_column!r} cannot be encoded: {error}") from error

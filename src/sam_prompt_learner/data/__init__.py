"""Data: segmentation datasets in common formats -> normalized objects -> simulated prompts -> model batches."""

from .cache import EMBEDDING_CACHE_COLUMNS, IMAGE_EMBEDDINGS_COLUMN, build_embedding_cache, embedding_cache_fingerprint
from .collate import SamPromptCollator, masks_to_padded_frame
from .formats import (
    AnnotationFormat,
    AnnotationSpec,
    DecodedExample,
    SkipReport,
    decode_example,
    detect_annotation_spec,
    load_image_mask_folder,
    prepare_dataset,
    to_rgb,
    upright,
)
from .loading import load_segmentation_dataset
from .masks import decode_rle, encode_rle, mask_to_box, polygons_to_mask
from .prompts import ObjectPrompts, PromptConfig, prompt_rng, sample_object_prompts
from .synthetic import SYNTHETIC_TASKS, generate_scene, load_synthetic_task

__all__ = [
    "EMBEDDING_CACHE_COLUMNS",
    "IMAGE_EMBEDDINGS_COLUMN",
    "SYNTHETIC_TASKS",
    "AnnotationFormat",
    "AnnotationSpec",
    "build_embedding_cache",
    "embedding_cache_fingerprint",
    "generate_scene",
    "load_segmentation_dataset",
    "load_synthetic_task",
    "DecodedExample",
    "ObjectPrompts",
    "PromptConfig",
    "SamPromptCollator",
    "SkipReport",
    "decode_example",
    "decode_rle",
    "detect_annotation_spec",
    "encode_rle",
    "load_image_mask_folder",
    "mask_to_box",
    "masks_to_padded_frame",
    "polygons_to_mask",
    "prepare_dataset",
    "prompt_rng",
    "sample_object_prompts",
    "to_rgb",
    "upright",
]

"""sam-prompt-learner: adapt the Segment Anything Model to a task by prompt learning.

Importing the package registers `PromptLearnerConfig` / `SamPromptLearnerModel` with transformers' Auto classes, so
`AutoModel.from_pretrained(<adapted checkpoint>)` and `pipeline("mask-generation", ...)` resolve them without
`trust_remote_code`; plain `sam` checkpoints keep resolving to `SamModel`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForMaskGeneration

from .configuration_prompt_learner import PromptLearnerConfig
from .embedded import TINY_SAM, embedded_model_path
from .inference import encode_image, load_for_inference, predict_mask
from .lora import LORA_TARGETS, sam_lora_config
from .modeling_prompt_learner import (
    DEFAULT_TRAINABLE_PARTS,
    TRAINABLE_PARTS,
    PointMatchingHead,
    PromptLearningModule,
    SamPromptLearnerModel,
    SamPromptLearnerOutput,
)
from .processing import (
    SamPromptLearnerImageProcessor,
    check_processor_matches_config,
    processor_for_config,
    register_processing,
)
from .trained_parts import load_trained_parts, save_trained_parts

__version__ = "0.1.0.dev0"


def _register_auto_classes() -> None:
    AutoConfig.register(PromptLearnerConfig.model_type, PromptLearnerConfig, exist_ok=True)
    AutoModel.register(PromptLearnerConfig, SamPromptLearnerModel, exist_ok=True)
    AutoModelForMaskGeneration.register(PromptLearnerConfig, SamPromptLearnerModel, exist_ok=True)


_register_auto_classes()
register_processing()

__all__ = [
    "DEFAULT_TRAINABLE_PARTS",
    "LORA_TARGETS",
    "TRAINABLE_PARTS",
    "PointMatchingHead",
    "PromptLearnerConfig",
    "PromptLearningModule",
    "SamPromptLearnerModel",
    "SamPromptLearnerImageProcessor",
    "SamPromptLearnerOutput",
    "TINY_SAM",
    "check_processor_matches_config",
    "embedded_model_path",
    "encode_image",
    "load_for_inference",
    "load_trained_parts",
    "predict_mask",
    "processor_for_config",
    "sam_lora_config",
    "save_trained_parts",
]

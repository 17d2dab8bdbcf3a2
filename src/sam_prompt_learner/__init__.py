"""sam-prompt-learner: adapt the Segment Anything Model to a task by prompt learning.

Importing the package registers the prompt-learner configs and models of every family (`SamPromptLearnerModel`,
`SamHQPromptLearnerModel`, `Sam2PromptLearnerModel`) with transformers' Auto classes, so
`AutoModel.from_pretrained(<adapted checkpoint>)` and `pipeline("mask-generation", ...)` resolve them without
`trust_remote_code`; plain `sam`, `sam_hq` and `sam2` checkpoints keep resolving to transformers' own classes.
"""

from transformers import AutoConfig, AutoModel, AutoModelForMaskGeneration

from .configuration_prompt_learner import (
    PromptLearnerConfig,
    PromptLearnerConfigMixin,
    Sam2PromptLearnerConfig,
    SamHQPromptLearnerConfig,
)
from .embedded import TINY_SAM, embedded_model_path
from .inference import encode_image, load_for_inference, predict_mask
from .lora import LORA_TARGETS, sam_lora_config
from .modeling_prompt_learner import (
    DEFAULT_TRAINABLE_PARTS,
    PROMPT_LEARNER_MODEL_CLASSES,
    TRAINABLE_PARTS,
    PointMatchingHead,
    PromptLearnerMixin,
    PromptLearningModule,
    Sam2PromptLearnerModel,
    SamHQPromptLearnerModel,
    SamPromptLearnerModel,
    SamPromptLearnerOutput,
    load_prompt_learner_model,
    prompt_learner_class_for,
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
    for model_class in PROMPT_LEARNER_MODEL_CLASSES.values():
        config_class = model_class.config_class
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, model_class, exist_ok=True)
        AutoModelForMaskGeneration.register(config_class, model_class, exist_ok=True)


_register_auto_classes()
register_processing()

__all__ = [
    "DEFAULT_TRAINABLE_PARTS",
    "LORA_TARGETS",
    "TRAINABLE_PARTS",
    "PointMatchingHead",
    "PromptLearnerConfig",
    "PromptLearnerConfigMixin",
    "PromptLearnerMixin",
    "PromptLearningModule",
    "Sam2PromptLearnerConfig",
    "Sam2PromptLearnerModel",
    "SamHQPromptLearnerConfig",
    "SamHQPromptLearnerModel",
    "SamPromptLearnerModel",
    "SamPromptLearnerImageProcessor",
    "SamPromptLearnerOutput",
    "TINY_SAM",
    "check_processor_matches_config",
    "embedded_model_path",
    "encode_image",
    "load_for_inference",
    "load_prompt_learner_model",
    "load_trained_parts",
    "predict_mask",
    "processor_for_config",
    "prompt_learner_class_for",
    "sam_lora_config",
    "save_trained_parts",
]

"""Configurations of the prompt-learner models: a base family's config (`SamConfig`, `SamHQConfig`, `Sam2Config`)
plus the prompt learner, the point-matching head and the training-loss weights, which are the same fields with the
same meaning for every family ([`PromptLearnerConfigMixin`])."""

from __future__ import annotations

import dataclasses

from transformers import Sam2Config, SamConfig, SamHQConfig


@dataclasses.dataclass(kw_only=True)
class PromptLearnerConfigMixin:
    r"""
    The fields a prompt-learner config adds to its family's config. Every field of the family's config keeps its
    meaning (`vision_config`, `prompt_encoder_config`, `mask_decoder_config`, `initializer_range`, ...), so any
    checkpoint of that family loads into the prompt-learner config; the fields below are new. All arguments are
    keyword-only.

    Prompt Learning Module (PLM), placed between SAM's prompt encoder and its mask decoder:

    prompt_learner_depth (`int`, *optional*, defaults to 1):
        Number of PLM blocks (prompt self-attention -> prompt-to-image cross-attention -> MLP). `0` turns the PLM off,
        and the model is then exactly `SamModel`.
    prompt_learner_num_attention_heads (`int`, *optional*):
        Attention heads of the PLM blocks. Defaults to the mask decoder's `num_attention_heads` (8 for every SAM).
    prompt_learner_mlp_dim (`int`, *optional*):
        Hidden width of the PLM MLP. Defaults to 4 x the mask decoder's `hidden_size` (1024 for every SAM).
    prompt_learner_attention_downsample_rate (`int`, *optional*, defaults to 2):
        Internal width divisor of the prompt-to-image cross-attention, as in SAM's decoder
        (`hidden_size / rate` must be divisible by the number of heads).
    prompt_learner_norm_first (`bool`, *optional*, defaults to `False`):
        Pre-norm PLM blocks (each branch reads a LayerNorm of the residual stream, a final LayerNorm before the
        output projection) instead of SAM's post-norm.
    prompt_learner_gate (`bool`, *optional*, defaults to `False`):
        Close the PLM's update with a learnable per-channel gate initialised at zero, after a normally initialised
        output projection, instead of a zero-initialised output projection.
    prompt_learner_num_task_tokens (`int`, *optional*, defaults to 0):
        Learnable task tokens that the prompt tokens read in the PLM's self-attention (extra keys and values; the
        mask decoder never sees them, so the model stays exactly the base SAM at initialisation).
    prompt_learner_update_dense (`bool`, *optional*, defaults to `True`):
        Also update the dense prompt embedding (which the mask decoder adds to the image embedding) by a pixel-wise
        MLP of the image embedding with a zero-initialised output. It is one update per image, shared by its prompts.
        With the mask-score offsets below, it is what let the PLM adapt a competent base (BENCHMARKS.md, "The prompt
        learner on a competent base": on three task scenarios the gain over zero-shot roughly doubled or tripled).
    prompt_learner_dense_mlp_dim (`int`, *optional*):
        Hidden width of that pixel-wise MLP. Defaults to the mask decoder's `hidden_size` (256 for every SAM).
    prompt_learner_mask_score_offsets (`bool`, *optional*, defaults to `True`):
        Add a learnable offset per mask token (zero at initialisation, trained by the IoU loss) to the predicted IoU
        scores: the task's prior over SAM's three masks (part to whole), which decides the mask the model answers
        with.

    Point-matching head (PMM), a training-time boundary head on the mask decoder's outputs:

    use_point_matching_head (`bool`, *optional*, defaults to `True`):
        Build the head. When `False`, no boundary points are predicted and both PMM losses are zero.
    num_boundary_points (`int`, *optional*, defaults to 16):
        K, the number of boundary points predicted per mask and sampled along each ground-truth contour.
    point_matching_hidden_dim (`int`, *optional*):
        Hidden width of the head's query MLP. Defaults to the mask decoder's `hidden_size`.
    num_boundary_band_points (`int`, *optional*, defaults to 64):
        Points sampled per mask in the ground-truth boundary band (half just inside, half just outside) for the
        point-level boundary loss.

    Training loss (used only when `labels` are passed to `forward`):

    focal_loss_weight (`float`, *optional*, defaults to 20.0):
        Weight of the sigmoid focal loss on the mask logits (SAM's 20:1 focal:dice recipe).
    dice_loss_weight (`float`, *optional*, defaults to 1.0):
        Weight of the dice loss on the mask probabilities.
    iou_loss_weight (`float`, *optional*, defaults to 1.0):
        Weight of the MSE between the predicted IoU scores and the IoU each mask actually reaches.
    point_matching_loss_weight (`float`, *optional*, defaults to 1.0):
        Weight of the L1 loss between predicted boundary points and their Hungarian-matched ground-truth points.
    boundary_point_loss_weight (`float`, *optional*, defaults to 0.1):
        Weight of the BCE on the mask logits sampled at ground-truth boundary-band points. At 1.0 this term collapsed
        the masks of a prompt-learner-only adaptation of the embedded tiny SAM on `plates` (eval mIoU 0.283 -> 0.05 in
        200 steps at lr 1e-3); at 0.1 the same run reached 0.327 with the best boundary IoU (0.179, against 0.161
        without either boundary term).
    object_score_loss_weight (`float`, *optional*, defaults to 1.0):
        Weight of the BCE between SAM 2's object-score logit and whether the prompt's ground-truth mask is non-empty
        (SAM 2's own recipe). Families without an object score (SAM, SAM-HQ) have no such term.

    """

    # The family's own `model_type`, whose checkpoints this config adopts (set by each family's config class).
    base_model_type = None
    # SAM and SAM-HQ tie the prompt encoder's Fourier matrix to the image's; SAM 2 keeps two separate matrices.
    ties_positional_embeddings = True

    prompt_learner_depth: int = 1
    prompt_learner_num_attention_heads: int | None = None
    prompt_learner_mlp_dim: int | None = None
    prompt_learner_attention_downsample_rate: int = 2
    prompt_learner_norm_first: bool = False
    prompt_learner_gate: bool = False
    prompt_learner_num_task_tokens: int = 0
    prompt_learner_update_dense: bool = True
    prompt_learner_dense_mlp_dim: int | None = None
    prompt_learner_mask_score_offsets: bool = True

    use_point_matching_head: bool = True
    num_boundary_points: int = 16
    point_matching_hidden_dim: int | None = None
    num_boundary_band_points: int = 64

    focal_loss_weight: float = 20.0
    dice_loss_weight: float = 1.0
    iou_loss_weight: float = 1.0
    point_matching_loss_weight: float = 1.0
    boundary_point_loss_weight: float = 0.1
    object_score_loss_weight: float = 1.0

    def __post_init__(self, **kwargs):
        # A plain SAM config.json carries `"model_type": "sam"`; left in kwargs it would shadow the class attribute.
        kwargs.pop("model_type", None)
        super().__post_init__(**kwargs)
        decoder = self.mask_decoder_config
        if self.prompt_learner_num_attention_heads is None:
            self.prompt_learner_num_attention_heads = decoder.num_attention_heads
        if self.prompt_learner_mlp_dim is None:
            self.prompt_learner_mlp_dim = 4 * decoder.hidden_size
        if self.prompt_learner_dense_mlp_dim is None:
            self.prompt_learner_dense_mlp_dim = decoder.hidden_size
        if self.point_matching_hidden_dim is None:
            self.point_matching_hidden_dim = decoder.hidden_size
        self._validate_new_fields()

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path, **kwargs):
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if config_dict.get("model_type") == cls.base_model_type:
            # A base checkpoint is this model's documented starting point, not a model-type mismatch to warn about.
            config_dict = {**config_dict, "model_type": cls.model_type}
        return config_dict, kwargs

    def _validate_new_fields(self):
        hidden = self.mask_decoder_config.hidden_size  # the width of the prompt tokens, in every family
        for name in ("prompt_learner_depth", "prompt_learner_num_task_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        for name in (
            "prompt_learner_num_attention_heads",
            "prompt_learner_mlp_dim",
            "prompt_learner_attention_downsample_rate",
            "prompt_learner_dense_mlp_dim",
            "num_boundary_points",
            "point_matching_hidden_dim",
            "num_boundary_band_points",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}.")
        heads = self.prompt_learner_num_attention_heads
        for rate in (1, self.prompt_learner_attention_downsample_rate):
            if (hidden // rate) % heads != 0 or hidden % rate != 0:
                raise ValueError(
                    f"The prompt learner's attention width (mask decoder hidden_size {hidden} / rate {rate}) must be "
                    f"divisible by `prompt_learner_num_attention_heads` ({heads})."
                )
        for name in (
            "focal_loss_weight",
            "dice_loss_weight",
            "iou_loss_weight",
            "point_matching_loss_weight",
            "boundary_point_loss_weight",
            "object_score_loss_weight",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}.")
        if self.ties_positional_embeddings and not self.tie_word_embeddings:
            # Untied, loading a SAM checkpoint re-initialises the prompt encoder's Fourier matrix and breaks SAM.
            raise ValueError("`tie_word_embeddings` must stay True: SAM's two positional matrices are one tensor.")


class PromptLearnerConfig(PromptLearnerConfigMixin, SamConfig):
    r"""
    Configuration of a [`SamPromptLearnerModel`]: a `SamConfig` (any SAM checkpoint's `config.json` loads into it)
    plus the fields of [`PromptLearnerConfigMixin`].

    Example:

    ```python
    >>> from sam_prompt_learner import PromptLearnerConfig, SamPromptLearnerModel

    >>> config = PromptLearnerConfig(prompt_learner_depth=2, num_boundary_points=32)
    >>> model = SamPromptLearnerModel(config)  # random weights; use `from_pretrained` to start from a SAM
    ```
    """

    model_type = "sam_prompt_learner"
    base_model_type = SamConfig.model_type


class SamHQPromptLearnerConfig(PromptLearnerConfigMixin, SamHQConfig):
    r"""
    Configuration of a [`SamHQPromptLearnerModel`]: a `SamHQConfig` (any SAM-HQ checkpoint's `config.json` loads into
    it) plus the fields of [`PromptLearnerConfigMixin`].
    """

    model_type = "sam_hq_prompt_learner"
    base_model_type = SamHQConfig.model_type


class Sam2PromptLearnerConfig(PromptLearnerConfigMixin, Sam2Config):
    r"""
    Configuration of a [`Sam2PromptLearnerModel`]: a `Sam2Config` (any SAM 2 / SAM 2.1 checkpoint's `config.json`
    loads into it) plus the fields of [`PromptLearnerConfigMixin`].
    """

    model_type = "sam2_prompt_learner"
    base_model_type = Sam2Config.model_type
    ties_positional_embeddings = False


PROMPT_LEARNER_CONFIG_CLASSES = (PromptLearnerConfig, SamHQPromptLearnerConfig, Sam2PromptLearnerConfig)

# The fields this package adds to a family's config (the others describe the base model and come from its checkpoint).
PROMPT_LEARNER_FIELDS = tuple(sorted(f.name for f in dataclasses.fields(PromptLearnerConfigMixin)))

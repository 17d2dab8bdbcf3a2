"""SAM, SAM-HQ and SAM 2 with a Prompt Learning Module (PLM) and a point-matching boundary head (PMM).

`SamPromptLearnerModel` is a `transformers.SamModel`, `SamHQPromptLearnerModel` a `SamHQModel` and
`Sam2PromptLearnerModel` a `Sam2Model`: any checkpoint of the family loads into its class with `from_pretrained`, its
forward keeps the base's signature and outputs, and with the PLM untrained it reproduces the base exactly. One
implementation ([`PromptLearnerMixin`]) adds to each:

- `prompt_learner`: refines the sparse prompt tokens against the image embeddings before the mask decoder
  (prompt self-attention -> prompt-to-image cross-attention -> MLP, residual, zero-initialised output);
- `point_matching_head`: predicts K boundary points per mask from the decoder's mask token and upscaled mask features,
  trained by Hungarian matching to points on the ground-truth contour;
- `labels=`: with ground-truth masks, `forward` returns `.loss` (SAM's focal + dice + IoU losses plus the two
  boundary losses) and each term.
"""

import contextlib
import dataclasses
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    PreTrainedConfig,
    Sam2Config,
    Sam2Model,
    SamConfig,
    SamHQConfig,
    SamHQModel,
    SamModel,
)
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.models.sam.configuration_sam import SamMaskDecoderConfig
from transformers.models.sam.modeling_sam import SamAttention, SamFeedForward, SamMLPBlock
from transformers.utils import ModelOutput
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_prompt_learner import PromptLearnerConfig, Sam2PromptLearnerConfig, SamHQPromptLearnerConfig
from .losses import (
    boundary_point_loss,
    dice_loss,
    hungarian_point_loss,
    sample_boundary_band_points,
    sample_contour_points,
    sigmoid_focal_loss,
)
from .metrics import mask_iou

# The processor pads ragged point lists with this label; SAM's prompt encoder turns such points into zero tokens.
POINT_PAD_LABEL = -10

TRAINABLE_PARTS = ("prompt_learner", "point_matching_head", "mask_decoder", "prompt_encoder", "vision_encoder")
DEFAULT_TRAINABLE_PARTS = ("prompt_learner", "point_matching_head")


@dataclass
class SamPromptLearnerOutput(ModelOutput):
    r"""
    Output of every prompt-learner model: the base model's outputs (`SamModel`'s, `SamHQModel`'s, `Sam2Model`'s),
    plus the loss terms when `labels` are given and the boundary points of the point-matching head when asked for
    (or when training).

    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
        Weighted sum of the terms below (weights from the config).
    iou_scores (`torch.FloatTensor` of shape `(batch_size, point_batch_size, num_masks)`):
        Predicted IoU of each mask (num_masks is 3 with `multimask_output=True`, else 1).
    pred_masks (`torch.FloatTensor` of shape `(batch_size, point_batch_size, num_masks, 4E, 4E)`):
        Low-resolution mask logits in the padded input frame (E = image_size / patch_size); post-process with the
        processor's `post_process_masks`.
    object_score_logits (`torch.FloatTensor` of shape `(batch_size, point_batch_size, 1)`, SAM 2 only):
        Logit that the prompted object is present, as in `Sam2ImageSegmentationOutput`.
    image_embeddings (`list[torch.FloatTensor]`, SAM 2 only):
        The multi-scale features the mask decoder read, as in `Sam2ImageSegmentationOutput`.
    pred_boundary_points (`torch.FloatTensor` of shape `(batch_size, point_batch_size, num_masks, K, 2)`, *optional*):
        The point-matching head's boundary points per mask, `(x, y)` normalised to `[0, 1]` over the padded input
        frame (multiply by `image_size` for input pixels).
    focal_loss, dice_loss, iou_loss, point_matching_loss, boundary_point_loss (`torch.FloatTensor` of shape `()`):
        Unweighted loss terms, averaged over the valid prompts (the trained mask of each prompt; the IoU loss over
        every returned mask).
    object_score_loss (`torch.FloatTensor` of shape `()`, SAM 2 only):
        BCE of the object-score logit against "the ground-truth mask is non-empty", averaged over the valid prompts.
    vision_hidden_states, vision_attentions, mask_decoder_attentions:
        As in `SamImageSegmentationOutput`.
    """

    loss: torch.FloatTensor | None = None
    iou_scores: torch.FloatTensor | None = None
    pred_masks: torch.FloatTensor | None = None
    object_score_logits: torch.FloatTensor | None = None
    image_embeddings: list[torch.FloatTensor] | None = None
    pred_boundary_points: torch.FloatTensor | None = None
    focal_loss: torch.FloatTensor | None = None
    dice_loss: torch.FloatTensor | None = None
    iou_loss: torch.FloatTensor | None = None
    point_matching_loss: torch.FloatTensor | None = None
    boundary_point_loss: torch.FloatTensor | None = None
    object_score_loss: torch.FloatTensor | None = None
    vision_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    vision_attentions: tuple[torch.FloatTensor, ...] | None = None
    mask_decoder_attentions: tuple[torch.FloatTensor, ...] | None = None


class ZeroInitLinear(nn.Linear):
    """A linear layer that `_init_weights` sets to zero, so the module it closes starts as the identity."""


def absorbed_attention_is_cheaper(attention: SamAttention, num_queries: int, num_keys: int) -> bool:
    """Whether `absorbed_cross_attention` needs fewer multiply-adds than projecting every key and value."""
    channels, internal = attention.hidden_size, attention.internal_dim
    projected = num_keys * (2 * channels * internal + 2 * num_queries * internal)  # K, V projections + attention
    absorbed = 2 * attention.num_attention_heads * num_queries * num_keys * channels
    return absorbed < projected


def absorbed_cross_attention(
    attention: SamAttention, query: torch.Tensor, image_embeddings: torch.Tensor, positional_embeddings: torch.Tensor
) -> torch.Tensor:
    """`attention(query, key=image_embeddings + positional_embeddings, value=image_embeddings)` computed without
    projecting the keys and values: the key projection is moved onto the queries and the value projection after the
    attention-weighted sum, which is exact algebra. For a few prompt tokens against a 64 x 64 image this replaces two
    (4096 x 256) x (256 x 128) projections by a few products with the image, which was most of the PLM's inference
    cost at SAM's size.

    Shapes: query `(B, 1, N, C)`, image_embeddings and positional_embeddings `(B, 1, HW, C)`; returns `(B, 1, N, C)`.
    """
    heads = attention.num_attention_heads
    head_dim = attention.internal_dim // heads
    batch_size, _, num_queries, _ = query.shape
    queries = attention.q_proj(query[:, 0]).view(batch_size, num_queries, heads, head_dim).transpose(1, 2)  # (B,H,N,d)
    key_weight = attention.k_proj.weight.view(heads, head_dim, -1)  # (H, d, C)
    value_weight = attention.v_proj.weight.view(heads, head_dim, -1)  # (H, d, C)
    # q . (W_k (x + pe) + b_k) = (W_k^T q) . x + (W_k^T q) . pe + q . b_k. The bias term shifts all scores of a query
    # equally (softmax ignores it; its gradient is zero) but stays in the graph, so the parameter is used as in
    # SamAttention (DDP requires it). Heads and queries share each product with the image (read once, not per head),
    # and x + pe is never formed (a full pass over the image for one addition).
    queries_in_key_space = torch.einsum("bhnd,hdc->bhnc", queries, key_weight).flatten(1, 2)  # (B, H*N, C)
    scores = queries_in_key_space @ image_embeddings[:, 0].transpose(1, 2)  # (B, H*N, HW)
    scores = scores + queries_in_key_space @ positional_embeddings[:, 0].transpose(1, 2)
    key_bias_scores = queries @ attention.k_proj.bias.view(heads, head_dim, 1)  # (B, H, N, 1)
    scores = (scores.view(batch_size, heads, num_queries, -1) + key_bias_scores) * attention.scaling
    weights = scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(query.dtype)
    # Weights sum to 1 over the keys, so the value bias is added after pooling.
    pooled = (weights.flatten(1, 2) @ image_embeddings[:, 0]).view(batch_size, heads, num_queries, -1)  # (B,H,N,C)
    output = torch.einsum("bhnc,hdc->bhnd", pooled, value_weight) + attention.v_proj.bias.view(heads, 1, head_dim)
    output = output.transpose(1, 2).reshape(batch_size, 1, num_queries, heads * head_dim)
    return attention.out_proj(output)


class ZeroInitGate(nn.Module):
    """A per-channel scale that `_init_weights` sets to zero: `gate * x`, so the branch it closes starts switched off
    while the layer before it keeps a normal initialisation (ReZero / LayerScale)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * self.weight


class PromptLearningLayer(nn.Module):
    """One PLM block: prompt self-attention, prompt-to-image cross-attention, MLP. Post-norm (each residual followed by
    a LayerNorm, as in SAM's two-way transformer) or, with `norm_first`, pre-norm (each branch reads a LayerNorm of the
    residual stream, which then carries the prompt token itself from input to output). The prompt tokens are their own
    positional encoding; the image keys carry SAM's dense positional encoding. `task_tokens` `(N, C)`, when given,
    are extra keys and values of the self-attention (the prompts read them; they are not queries)."""

    def __init__(self, config: SamMaskDecoderConfig, norm_first: bool = False):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = SamAttention(config, downsample_rate=1)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.cross_attn_prompt_to_image = SamAttention(config, downsample_rate=config.attention_downsample_rate)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = SamMLPBlock(config)
        self.layer_norm3 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self,
        prompts: torch.Tensor,
        prompt_positional_embeddings: torch.Tensor,
        image_embeddings: torch.Tensor,
        image_positional_embeddings: torch.Tensor,
        self_attention_mask: torch.Tensor,
        task_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # prompts, prompt_positional_embeddings: (B, P, T, C); image tensors: (B, 1, HW, C);
        # self_attention_mask: (B*P, 1, 1, T + N) additive, hides padded prompt tokens as keys; task_tokens (N, C).
        batch_size, point_batch_size, num_tokens, hidden = prompts.shape
        values = self._branch_input(self.layer_norm1, prompts)
        query = values + prompt_positional_embeddings
        key = query
        if task_tokens is not None:
            extra = task_tokens.to(prompts.dtype).expand(batch_size, point_batch_size, -1, -1)
            key, values = torch.cat([query, extra], dim=2), torch.cat([values, extra], dim=2)
        attn_out, _ = self.self_attn(query=query, key=key, value=values, attention_similarity=self_attention_mask)
        prompts = self._residual_output(self.layer_norm1, prompts + attn_out)

        # Cross-attention treats every query independently, so all P*T tokens of an image share one pass over its
        # image keys instead of repeating the (HW, C) keys P times as the mask decoder does.
        query = self._branch_input(self.layer_norm2, prompts) + prompt_positional_embeddings
        query = query.reshape(batch_size, 1, point_batch_size * num_tokens, hidden)
        attention = self.cross_attn_prompt_to_image
        if absorbed_attention_is_cheaper(attention, num_queries=query.shape[2], num_keys=image_embeddings.shape[2]):
            attn_out = absorbed_cross_attention(attention, query, image_embeddings, image_positional_embeddings)
        else:
            key = image_embeddings + image_positional_embeddings
            attn_out, _ = attention(query=query, key=key, value=image_embeddings)
        prompts = self._residual_output(self.layer_norm2, prompts + attn_out.reshape(prompts.shape))
        mlp_out = self.mlp(self._branch_input(self.layer_norm3, prompts))
        return self._residual_output(self.layer_norm3, prompts + mlp_out)

    def _branch_input(self, layer_norm: nn.LayerNorm, hidden_states: torch.Tensor) -> torch.Tensor:
        """What a branch reads: the normalised stream (pre-norm) or the stream itself (post-norm)."""
        return layer_norm(hidden_states) if self.norm_first else hidden_states

    def _residual_output(self, layer_norm: nn.LayerNorm, hidden_states: torch.Tensor) -> torch.Tensor:
        """The stream after a residual: normalised (post-norm) or as it is (pre-norm)."""
        return hidden_states if self.norm_first else layer_norm(hidden_states)


class MaskScoreOffsets(nn.Module):
    """A learnable offset per mask token, added to the decoder's predicted IoU scores and zero-initialised: the task's
    prior over SAM's masks (with multimask output, the three guesses from part to whole), which decides the mask the
    model answers with. Trained by the IoU loss."""

    def __init__(self, num_mask_tokens: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_mask_tokens))

    def forward(self, iou_scores: torch.Tensor) -> torch.Tensor:
        # iou_scores (B, P, M): the multimask tokens 1..M, or the single-mask token 0 when M == 1
        num_masks = iou_scores.shape[-1]
        offsets = self.weight[1 : 1 + num_masks] if num_masks > 1 else self.weight[:1]
        return iou_scores + offsets.to(iou_scores.dtype)


class DenseEmbeddingUpdate(nn.Module):
    """A pixel-wise MLP of the image embedding, added to the dense prompt embedding that the mask decoder adds to the
    image: `dense' = dense + W_out(act(W_in(LN(f_I))))`, `W_out` zero-initialised. SAM's decoders take one dense
    embedding per image, shared by all of its prompts, so this update is the task's, not a prompt's."""

    def __init__(self, config: SamMaskDecoderConfig, mlp_dim: int):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.lin1 = nn.Linear(config.hidden_size, mlp_dim)
        self.act = ACT2FN[config.hidden_act]
        self.lin2 = ZeroInitLinear(mlp_dim, config.hidden_size)

    def forward(self, dense_embeddings: torch.Tensor, image_embeddings: torch.Tensor) -> torch.Tensor:
        # dense_embeddings, image_embeddings: (B, C, E, E)
        pixels = image_embeddings.permute(0, 2, 3, 1)  # (B, E, E, C)
        update = self.lin2(self.act(self.lin1(self.layer_norm(pixels))))
        return dense_embeddings + update.permute(0, 3, 1, 2).to(dense_embeddings.dtype)


class PromptLearningModule(nn.Module):
    """The PLM: `f_P' = f_P + W_out(blocks(f_P, f_I))` on the sparse prompt tokens, with the update zero at
    initialisation (`W_out` zero-initialised, or, with `prompt_learner_gate`, a zero per-channel gate after a normally
    initialised `W_out`), so an untrained PLM returns its input exactly. Padded tokens (SAM's zero vectors) stay
    untouched. Options (config fields): pre-norm blocks with a final LayerNorm, learnable task tokens read by the
    prompts' self-attention, a zero-initialised update of the dense embedding (`dense_update`), and learnable offsets
    of the predicted IoU scores (`mask_score_offsets`, the task's choice among SAM's masks)."""

    def __init__(self, config: PromptLearnerConfig):
        super().__init__()
        decoder = config.mask_decoder_config
        # The PLM blocks are built from SAM's own attention/MLP modules, which read their sizes from a decoder config.
        self.config = SamMaskDecoderConfig(
            hidden_size=decoder.hidden_size,
            hidden_act=decoder.hidden_act,
            mlp_dim=config.prompt_learner_mlp_dim,
            num_attention_heads=config.prompt_learner_num_attention_heads,
            attention_downsample_rate=config.prompt_learner_attention_downsample_rate,
            # SAM 2's decoder config has no `layer_norm_eps`; its decoder's LayerNorms use 1e-6, as SAM's do.
            layer_norm_eps=getattr(decoder, "layer_norm_eps", 1e-6),
        )
        self.config._attn_implementation = decoder._attn_implementation
        hidden = decoder.hidden_size
        self.layers = nn.ModuleList(
            PromptLearningLayer(self.config, norm_first=config.prompt_learner_norm_first)
            for _ in range(config.prompt_learner_depth)
        )
        self.final_layer_norm = (
            nn.LayerNorm(hidden, eps=self.config.layer_norm_eps) if config.prompt_learner_norm_first else None
        )
        self.task_tokens = None
        if config.prompt_learner_num_task_tokens:
            self.task_tokens = nn.Embedding(config.prompt_learner_num_task_tokens, hidden)
        if config.prompt_learner_gate:
            self.out_proj, self.gate = nn.Linear(hidden, hidden), ZeroInitGate(hidden)
        else:
            self.out_proj, self.gate = ZeroInitLinear(hidden, hidden), None
        self.dense_update = None
        if config.prompt_learner_update_dense:
            self.dense_update = DenseEmbeddingUpdate(self.config, config.prompt_learner_dense_mlp_dim)
        self.mask_score_offsets = None
        if config.prompt_learner_mask_score_offsets:
            self.mask_score_offsets = MaskScoreOffsets(getattr(decoder, "num_multimask_outputs", 3) + 1)

    def forward(
        self,
        sparse_embeddings: torch.Tensor,
        token_is_padding: torch.Tensor,
        image_embeddings: torch.Tensor,
        image_positional_embeddings: torch.Tensor,
    ) -> torch.Tensor:
        # sparse_embeddings (B, P, T, C); token_is_padding (B, P, T) bool; image tensors (B, C, E, E)
        batch_size, point_batch_size, num_tokens, _ = sparse_embeddings.shape
        keys = image_embeddings.flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, HW, C)
        keys_pe = image_positional_embeddings.flatten(2).transpose(1, 2).unsqueeze(1).to(keys.dtype)
        key_is_padding = token_is_padding
        task_tokens = self.task_tokens.weight if self.task_tokens is not None else None
        if task_tokens is not None:
            task_padding = token_is_padding.new_zeros((batch_size, point_batch_size, task_tokens.shape[0]))
            key_is_padding = torch.cat([token_is_padding, task_padding], dim=2)
        hidden_min = torch.finfo(sparse_embeddings.dtype).min
        self_attention_mask = torch.where(key_is_padding, hidden_min, 0.0).to(sparse_embeddings.dtype)
        self_attention_mask = self_attention_mask.reshape(batch_size * point_batch_size, 1, 1, -1)
        prompts = sparse_embeddings
        for layer in self.layers:
            prompts = layer(prompts, sparse_embeddings, keys, keys_pe, self_attention_mask, task_tokens)
        if self.final_layer_norm is not None:
            prompts = self.final_layer_norm(prompts)
        update = self.out_proj(prompts)
        if self.gate is not None:
            update = self.gate(update)
        update = update * (~token_is_padding).unsqueeze(-1).to(prompts.dtype)
        return sparse_embeddings + update


class PointMatchingHead(nn.Module):
    """Predicts K boundary points per mask from the mask's output token and the upscaled mask features pooled under
    the mask's own (soft) support. Its gradients reach the decoder's shared features and the PLM."""

    def __init__(self, config: PromptLearnerConfig):
        super().__init__()
        hidden = config.mask_decoder_config.hidden_size
        feature_channels = hidden // 8  # channels of SAM's upscaled mask features
        self.num_boundary_points = config.num_boundary_points
        self.points_mlp = SamFeedForward(
            hidden + feature_channels,
            config.point_matching_hidden_dim,
            2 * config.num_boundary_points,
            3,
            sigmoid_output=True,
        )

    def forward(
        self, mask_tokens: torch.Tensor, upscaled_features: torch.Tensor, mask_logits: torch.Tensor
    ) -> torch.Tensor:
        # mask_tokens (B, P, M, C); upscaled_features (B, P, C/8, 4E, 4E); mask_logits (B, P, M, 4E, 4E)
        weights = mask_logits.sigmoid()
        pooled = torch.einsum("bpmhw,bpchw->bpmc", weights, upscaled_features)
        pooled = pooled / weights.sum((-1, -2)).unsqueeze(-1).clamp(min=1.0)
        points = self.points_mlp(torch.cat([mask_tokens, pooled], dim=-1))
        return points.unflatten(-1, (self.num_boundary_points, 2))  # (B, P, M, K, 2)


@dataclass
class DecodedMasks:
    """What a family's mask decoder gives the shared prompt-learner code.

    pred_masks `(B, P, M, 4E, 4E)` and iou_scores `(B, P, M)`: the family's own outputs, unchanged;
    mask_tokens `(B, P, M, C)` and mask_features `(B*P, C/8, 4E, 4E)`: the output token of each returned mask and the
    upscaled image features the masks are made of (for the point-matching head; `None` when not asked for);
    family_outputs: the family's further outputs (SAM 2: `object_score_logits`).
    """

    pred_masks: torch.Tensor
    iou_scores: torch.Tensor
    mask_tokens: torch.Tensor | None = None
    mask_features: torch.Tensor | None = None
    family_outputs: dict[str, Any] = dataclasses.field(default_factory=dict)


@contextlib.contextmanager
def recorded_outputs(modules: dict[str, nn.Module], enabled: bool = True):
    """Record the forward outputs of `modules` under their keys while the block runs (the mask decoders return only
    masks and scores, not the tokens and features the point-matching head reads)."""
    recorded: dict[str, Any] = {}
    if not enabled:
        yield recorded
        return
    handles = [
        module.register_forward_hook(lambda _module, _inputs, output, key=key: recorded.__setitem__(key, output))
        for key, module in modules.items()
    ]
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


_FORWARD_ARGUMENTS_DOC = r"""
        Arguments are those of the base model's `forward` (see its documentation), plus:

        labels (`torch.Tensor` of shape `(batch_size, point_batch_size, height, width)`, *optional*):
            Binary ground-truth mask of each prompt, in the model's input frame (the frame of `pixel_values`; masks
            from the processor's `segmentation_maps=` qualify), any square resolution. They are resized to the
            `4E x 4E` logit grid (antialiased bilinear, threshold 0.5). With labels the output holds `loss`.
            With `multimask_output=True` only the lowest-loss of the three masks is trained (SAM's rule), while the
            IoU head learns the IoU of all three.
        prompt_mask (`torch.Tensor` of shape `(batch_size, point_batch_size)`, *optional*):
            True for real prompts, False for padding prompts (ignored by the loss). All prompts are real by default.
        output_boundary_points (`bool`, *optional*):
            Return the point-matching head's boundary points. Defaults to True when `labels` are given.
"""


def _document_forward(forward):
    forward.__doc__ = _FORWARD_ARGUMENTS_DOC
    return forward


class PromptLearnerMixin:
    r"""
    The prompt learner, the point-matching head, the loss and the trainable parts, shared by every family: mixed into
    the family's transformers model (`class SamPromptLearnerModel(PromptLearnerMixin, SamModel)`), it adds the two
    modules and runs `forward` as prompt encoder -> PLM -> mask decoder (-> head, loss). A family implements the steps
    that differ: `_split_family_arguments` (its own `forward` arguments), `_encode_images` (pixels -> what the decoder
    reads), `_image_embeddings_of` (the `(B, C, E, E)` embedding the PLM attends to), `_prepare_prompts`, `_decode`
    and, where image encoding uses parameters outside the vision encoder, `_image_encoding_parameters`.
    """

    # How model cards and messages name the family (set by each family's class).
    family_name: str

    # The new modules are legitimately missing from base checkpoints: they are initialised, not reported as missing.
    _keys_to_ignore_on_load_missing = [r"^prompt_learner\.", r"^point_matching_head\."]

    def __init__(self, config):
        super().__init__(config)
        self.prompt_learner = PromptLearningModule(config) if config.prompt_learner_depth > 0 else None
        self.point_matching_head = PointMatchingHead(config) if config.use_point_matching_head else None
        # The base __init__ initialised its own modules; this second pass initialises only the new ones.
        self.post_init()
        self.set_default_trainable()

    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        if isinstance(module, ZeroInitLinear):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, (ZeroInitGate, MaskScoreOffsets)):
            init.zeros_(module.weight)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        # Loading recreates every parameter with requires_grad=True; restore the documented default.
        (model[0] if isinstance(model, tuple) else model).set_default_trainable()
        return model

    def set_default_trainable(self):
        """Train the prompt learner and the point-matching head (those this config has); freeze the base model."""
        self.set_trainable([name for name in DEFAULT_TRAINABLE_PARTS if getattr(self, name) is not None])

    def set_trainable(self, parts: Iterable[str]) -> int:
        """Make exactly `parts` trainable and freeze everything else.

        Args:
            parts: names among `TRAINABLE_PARTS` (`"prompt_learner"`, `"point_matching_head"`, `"mask_decoder"`,
                `"prompt_encoder"`, `"vision_encoder"`). The image positional matrix (`shared_image_embedding`)
                trains with either encoder. Parameters that run once per image before the decoder
                (`_image_encoding_parameters`, e.g. SAM 2's high-resolution projections) train with the vision
                encoder only, so that a step from cached image features equals a step from pixels.

        Returns:
            The number of trainable parameters.
        """
        parts = list(parts) if not isinstance(parts, str) else [parts]
        unknown = sorted(set(parts) - set(TRAINABLE_PARTS))
        if unknown:
            raise ValueError(f"Unknown trainable part(s) {unknown}; choose among {list(TRAINABLE_PARTS)}.")
        for name in parts:
            if getattr(self, name) is None:
                raise ValueError(f"Cannot train `{name}`: this model's config disables it.")
        self.requires_grad_(False)
        for name in parts:
            getattr(self, name).requires_grad_(True)
        if "vision_encoder" in parts or "prompt_encoder" in parts:
            self.shared_image_embedding.requires_grad_(True)
        for parameter in self._image_encoding_parameters():
            parameter.requires_grad_("vision_encoder" in parts)
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def _image_encoding_parameters(self) -> list[nn.Parameter]:
        """Parameters outside `vision_encoder` that compute the decoder's image inputs (none for SAM)."""
        return []

    @merge_with_config_defaults
    @capture_outputs
    @_document_forward
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_points: torch.Tensor | None = None,
        input_labels: torch.LongTensor | None = None,
        input_boxes: torch.Tensor | None = None,
        input_masks: torch.LongTensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        multimask_output: bool = True,
        attention_similarity: torch.Tensor | None = None,
        target_embedding: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        output_boundary_points: bool | None = None,
        **kwargs,
    ) -> SamPromptLearnerOutput:
        image_features, family_decoder_kwargs = self._split_family_arguments(image_embeddings, kwargs)
        return self._prompt_learner_forward(
            pixel_values,
            image_features,
            input_points,
            input_labels,
            input_boxes,
            input_masks,
            multimask_output,
            labels,
            prompt_mask,
            output_boundary_points,
            dict(attention_similarity=attention_similarity, target_embedding=target_embedding, **family_decoder_kwargs),
            **kwargs,
        )

    # ----------------------------------------------------------------------------------------------------------------
    # the steps a family implements

    def _split_family_arguments(self, image_embeddings: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """`(image_features, decoder_kwargs)`: the given image features in the family's form and the family's own
        decoder arguments, popped from `forward`'s `kwargs` (none for SAM and SAM 2, which share SAM's arguments)."""
        return image_embeddings, {}

    def _encode_images(self, pixel_values: torch.Tensor, **kwargs) -> tuple[Any, ModelOutput]:
        """`(image_features, vision_outputs)`: what the decoder reads, in the form `forward(image_embeddings=...)`
        takes, with gradients (not the base's `no_grad` `get_image_embeddings`), and the vision encoder's outputs."""
        raise NotImplementedError

    def _image_embeddings_of(self, image_features: Any) -> torch.Tensor:
        """The `(B, C, E, E)` image embedding the mask decoder's transformer and the PLM attend to."""
        return image_features

    def _prepare_prompts(self, input_points, input_labels, input_boxes, input_masks, image_embeddings):
        """The base's own prompt defaults before its prompt encoder (missing point labels are ones in every family)."""
        if input_points is not None and input_labels is None:
            input_labels = torch.ones_like(input_points[:, :, :, 0], dtype=torch.int)
        return input_points, input_labels, input_boxes, input_masks

    def _decode(self, image_features: Any, decoder_arguments: dict[str, Any], with_mask_features: bool) -> DecodedMasks:
        """Run the family's mask decoder on `image_features` with `decoder_arguments` (the positional embeddings, the
        sparse (PLM-refined) and dense prompt embeddings, `multimask_output` and the family's own arguments)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------------------------
    # the shared forward

    def _prompt_learner_forward(
        self,
        pixel_values: torch.Tensor | None,
        image_features: Any,
        input_points: torch.Tensor | None,
        input_labels: torch.Tensor | None,
        input_boxes: torch.Tensor | None,
        input_masks: torch.Tensor | None,
        multimask_output: bool,
        labels: torch.Tensor | None,
        prompt_mask: torch.Tensor | None,
        output_boundary_points: bool | None,
        decoder_kwargs: dict[str, Any],
        **kwargs,
    ) -> SamPromptLearnerOutput:
        if (pixel_values is None) == (image_features is None):
            raise ValueError("Pass exactly one of `pixel_values` and `image_embeddings`.")
        batch_size = (
            pixel_values.shape[0] if pixel_values is not None else self._image_embeddings_of(image_features).shape[0]
        )
        self._check_inputs(batch_size, input_points, input_labels, input_boxes, labels, prompt_mask)
        vision_outputs = None
        if pixel_values is not None:
            image_features, vision_outputs = self._encode_images(pixel_values, **kwargs)
        image_embeddings = self._image_embeddings_of(image_features)
        input_points, input_labels, input_boxes, input_masks = self._prepare_prompts(
            input_points, input_labels, input_boxes, input_masks, image_embeddings
        )

        image_positional_embeddings = self.get_image_wide_positional_embeddings().repeat(batch_size, 1, 1, 1)
        sparse_embeddings, dense_embeddings = self.prompt_encoder(
            input_points=input_points, input_labels=input_labels, input_boxes=input_boxes, input_masks=input_masks
        )
        if self.prompt_learner is not None and sparse_embeddings is not None:
            sparse_embeddings = self.prompt_learner(
                sparse_embeddings,
                self._padding_tokens(input_labels, sparse_embeddings),
                image_embeddings,
                image_positional_embeddings,
            )
        if self.prompt_learner is not None and self.prompt_learner.dense_update is not None:
            dense_embeddings = self.prompt_learner.dense_update(dense_embeddings, image_embeddings)

        want_points = self.point_matching_head is not None and (
            output_boundary_points if output_boundary_points is not None else labels is not None
        )
        decoder_arguments = dict(
            image_positional_embeddings=image_positional_embeddings,
            sparse_prompt_embeddings=sparse_embeddings,
            dense_prompt_embeddings=dense_embeddings,
            multimask_output=multimask_output,
            **decoder_kwargs,
        )
        decoded = self._decode(image_features, decoder_arguments, with_mask_features=want_points)
        if self.prompt_learner is not None and self.prompt_learner.mask_score_offsets is not None:
            decoded.iou_scores = self.prompt_learner.mask_score_offsets(decoded.iou_scores)
        pred_boundary_points = None
        if want_points:
            point_batch_size = decoded.pred_masks.shape[1]
            features = decoded.mask_features.reshape(batch_size, point_batch_size, *decoded.mask_features.shape[1:])
            pred_boundary_points = self.point_matching_head(decoded.mask_tokens, features, decoded.pred_masks)

        output = SamPromptLearnerOutput(
            iou_scores=decoded.iou_scores,
            pred_masks=decoded.pred_masks,
            pred_boundary_points=pred_boundary_points,
            vision_hidden_states=vision_outputs.hidden_states if vision_outputs is not None else None,
            vision_attentions=vision_outputs.attentions if vision_outputs is not None else None,
            **decoded.family_outputs,
        )
        if labels is not None:
            self._add_losses(output, labels, prompt_mask)
        return output

    # ----------------------------------------------------------------------------------------------------------------
    # forward helpers

    @staticmethod
    def _check_inputs(batch_size, input_points, input_labels, input_boxes, labels, prompt_mask) -> None:
        """Validate the prompts and labels up front, with messages that name the problem."""
        if input_points is not None:
            if input_points.dim() != 4 or input_points.shape[-1] != 2:
                raise ValueError(
                    "`input_points` must have shape (batch_size, point_batch_size, points_per_prompt, 2), "
                    f"got {tuple(input_points.shape)}."
                )
            if torch.isnan(input_points).any():
                raise ValueError("`input_points` contains NaN coordinates.")
            if input_labels is not None and input_labels.shape != input_points.shape[:3]:
                raise ValueError(
                    f"`input_labels` must have shape {tuple(input_points.shape[:3])} to match `input_points`, "
                    f"got {tuple(input_labels.shape)}."
                )
        if input_boxes is not None:
            if input_boxes.dim() != 3 or input_boxes.shape[-1] != 4:
                raise ValueError(
                    f"`input_boxes` must have shape (batch_size, point_batch_size, 4), got {tuple(input_boxes.shape)}."
                )
            if torch.isnan(input_boxes).any():
                raise ValueError("`input_boxes` contains NaN coordinates.")
        prompts = [t for t in (input_points, input_boxes) if t is not None]
        if len(prompts) == 2 and input_points.shape[1] != input_boxes.shape[1]:
            raise ValueError(
                f"`input_points` and `input_boxes` must describe the same prompts: got {input_points.shape[1]} point "
                f"prompts and {input_boxes.shape[1]} boxes per image."
            )
        for tensor, name in ((input_points, "input_points"), (input_boxes, "input_boxes")):
            if tensor is not None and tensor.shape[0] != batch_size:
                raise ValueError(f"`{name}` has batch size {tensor.shape[0]}, the images {batch_size}.")
        point_batch_size = prompts[0].shape[1] if prompts else 1
        if labels is not None:
            if not prompts:
                raise ValueError("`labels` need prompts: pass `input_points` and/or `input_boxes`.")
            if labels.dim() != 4:
                raise ValueError(
                    "`labels` must have shape (batch_size, point_batch_size, height, width) (one mask per prompt), "
                    f"got {tuple(labels.shape)}."
                )
            if tuple(labels.shape[:2]) != (batch_size, point_batch_size):
                raise ValueError(
                    f"`labels` hold {tuple(labels.shape[:2])} (batch, prompts) masks but the prompts are "
                    f"{(batch_size, point_batch_size)}: one mask per prompt is needed."
                )
            if labels.shape[-1] != labels.shape[-2]:
                raise ValueError(
                    f"`labels` must be square masks in the padded input frame, got {tuple(labels.shape[-2:])}."
                )
            if labels.dtype != torch.bool and not ((labels == 0) | (labels == 1)).all():
                raise ValueError("`labels` must be binary masks (values 0 and 1 only).")
        if prompt_mask is not None and tuple(prompt_mask.shape) != (batch_size, point_batch_size):
            raise ValueError(
                f"`prompt_mask` must have shape {(batch_size, point_batch_size)}, got {tuple(prompt_mask.shape)}."
            )

    @staticmethod
    def _padding_tokens(input_labels: torch.Tensor | None, sparse_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, P, T) bool: True for the zero tokens of padded points. Tokens after the user's points (SAM's
        "not a point" token, box corners) are real."""
        is_padding = torch.zeros(sparse_embeddings.shape[:3], dtype=torch.bool, device=sparse_embeddings.device)
        if input_labels is not None:
            num_points = input_labels.shape[2]
            is_padding[:, :, :num_points] = input_labels == POINT_PAD_LABEL
        return is_padding

    def _add_losses(self, output: SamPromptLearnerOutput, labels: torch.Tensor, prompt_mask: torch.Tensor | None):
        config = self.config
        pred_masks, iou_scores = output.pred_masks, output.iou_scores  # (B, P, M, h, w), (B, P, M)
        batch_size, point_batch_size, num_masks, height, width = pred_masks.shape
        targets = resize_masks(labels, (height, width))  # (B, P, h, w) bool
        valid = (
            prompt_mask.bool().reshape(-1)
            if prompt_mask is not None
            else torch.ones(batch_size * point_batch_size, dtype=torch.bool, device=pred_masks.device)
        )
        logits = pred_masks.reshape(-1, num_masks, height, width)[valid]  # (V, M, h, w)
        targets = targets.reshape(-1, height, width)[valid]  # (V, h, w)
        num_valid = logits.shape[0]
        per_mask_targets = targets.unsqueeze(1).expand(-1, num_masks, -1, -1).reshape(-1, height, width)
        flat_logits = logits.reshape(-1, height, width)
        focal = sigmoid_focal_loss(flat_logits, per_mask_targets).reshape(num_valid, num_masks)
        dice = dice_loss(flat_logits, per_mask_targets).reshape(num_valid, num_masks)
        # SAM's rule: of several masks, only the one with the lowest mask loss is trained.
        best = (config.focal_loss_weight * focal + config.dice_loss_weight * dice).argmin(dim=1)  # (V,)
        rows = torch.arange(num_valid, device=best.device)
        actual_iou = mask_iou(flat_logits > 0, per_mask_targets).reshape(num_valid, num_masks)
        predicted_iou = iou_scores.reshape(-1, num_masks)[valid]
        iou = F.mse_loss(predicted_iou, actual_iou.to(predicted_iou.dtype), reduction="none").mean(1)

        zero = pred_masks.new_zeros(num_valid)
        point_matching, band = zero, zero
        if output.pred_boundary_points is not None:
            best_logits = logits[rows, best]  # (V, h, w)
            contour_points, has_contour = sample_contour_points(targets, config.num_boundary_points)
            predicted_points = output.pred_boundary_points.reshape(-1, num_masks, config.num_boundary_points, 2)
            predicted_points = predicted_points[valid][rows, best]  # (V, K, 2)
            point_matching = hungarian_point_loss(predicted_points, contour_points) * has_contour
            band_points, band_targets, band_valid = sample_boundary_band_points(
                targets, config.num_boundary_band_points
            )
            band = boundary_point_loss(best_logits, band_points, band_targets, band_valid)

        terms = {
            "focal_loss": focal[rows, best],
            "dice_loss": dice[rows, best],
            "iou_loss": iou,
            "point_matching_loss": point_matching,
            "boundary_point_loss": band,
        }
        weights = {
            "focal_loss": config.focal_loss_weight,
            "dice_loss": config.dice_loss_weight,
            "iou_loss": config.iou_loss_weight,
            "point_matching_loss": config.point_matching_loss_weight,
            "boundary_point_loss": config.boundary_point_loss_weight,
        }
        if output.object_score_logits is not None:
            object_logits = output.object_score_logits.reshape(-1)[valid]  # (V,)
            object_present = targets.flatten(1).any(dim=1).to(object_logits.dtype)
            terms["object_score_loss"] = F.binary_cross_entropy_with_logits(
                object_logits, object_present, reduction="none"
            )
            weights["object_score_loss"] = config.object_score_loss_weight
        # Averaged over valid prompts; a batch of padding only gives a zero loss that still has a graph.
        denominator = max(num_valid, 1)
        output.loss = pred_masks.sum() * 0.0
        for name, values in terms.items():
            term = values.sum() / denominator
            setattr(output, name, term)
            output.loss = output.loss + weights[name] * term


class SamPromptLearnerModel(PromptLearnerMixin, SamModel):
    r"""
    SAM with a Prompt Learning Module and a point-matching head; see the module docstring. Loading any SAM checkpoint
    (`SamPromptLearnerModel.from_pretrained("facebook/sam-vit-base")` or a local directory) reuses every SAM tensor
    exactly and initialises the new modules (the PLM as the identity). After loading, only
    `DEFAULT_TRAINABLE_PARTS` (the PLM and the head) require gradients; change that with [`set_trainable`].
    """

    config: PromptLearnerConfig
    family_name = "SAM"

    def _encode_images(self, pixel_values, **kwargs):
        # Not get_image_embeddings: it runs under no_grad, which would block LoRA on the encoder.
        vision_outputs = self.vision_encoder(pixel_values, **kwargs)
        return vision_outputs.last_hidden_state, vision_outputs

    def _decode(self, image_features, decoder_arguments, with_mask_features):
        decoder = self.mask_decoder
        recorders = {"tokens": decoder.transformer, "features": decoder.upscale_conv2}
        with recorded_outputs(recorders, enabled=with_mask_features) as recorded:
            pred_masks, iou_scores = decoder(image_embeddings=image_features, **decoder_arguments)
        decoded = DecodedMasks(pred_masks, iou_scores)
        if with_mask_features:
            # Tokens (B, P, T, C): the IoU token, the single-mask token, the multimask tokens, then the prompts.
            mask_tokens = recorded["tokens"][0][:, :, 1 : 2 + decoder.num_multimask_outputs]
            multimask = decoder_arguments["multimask_output"]
            decoded.mask_tokens = mask_tokens[:, :, 1:] if multimask else mask_tokens[:, :, :1]
            decoded.mask_features = decoder.activation(recorded["features"])  # the features the masks are made of
        return decoded


class SamHQPromptLearnerModel(PromptLearnerMixin, SamHQModel):
    r"""
    SAM-HQ with the Prompt Learning Module and the point-matching head of [`SamPromptLearnerModel`] (one shared
    implementation, [`PromptLearnerMixin`]). Any SAM-HQ checkpoint loads with every tensor unchanged; untrained, the
    outputs are `SamHQModel`'s. `forward` takes `SamHQModel.forward`'s two further arguments: `hq_token_only` (`bool`,
    defaults to `False`: SAM's masks plus the HQ mask; `True`: the HQ mask alone) and `intermediate_embeddings` (the
    ViT features of the global-attention blocks, `[(B, E, E, D), ...]`, of which the decoder reads the first; computed
    from `pixel_values`, or given next to `image_embeddings` as `get_image_embeddings` returns them). The head reads
    the SAM mask token of each returned mask (the HQ token with `hq_token_only`) and SAM's upscaled features.
    """

    config: SamHQPromptLearnerConfig
    family_name = "SAM-HQ"

    def _split_family_arguments(self, image_embeddings, kwargs):
        intermediate_embeddings = kwargs.pop("intermediate_embeddings", None)
        image_features = None if image_embeddings is None else (image_embeddings, intermediate_embeddings)
        return image_features, {"hq_token_only": kwargs.pop("hq_token_only", False)}

    def _encode_images(self, pixel_values, **kwargs):
        vision_outputs = self.vision_encoder(pixel_values, **kwargs)
        return (vision_outputs.last_hidden_state, vision_outputs.intermediate_embeddings), vision_outputs

    def _image_embeddings_of(self, image_features):
        return image_features[0]

    def _decode(self, image_features, decoder_arguments, with_mask_features):
        decoder = self.mask_decoder
        image_embeddings, intermediate_embeddings = image_features
        recorders = {
            "tokens": decoder.transformer,
            "features": decoder.upscale_conv2,
            "iou": decoder.iou_prediction_head,
        }
        with recorded_outputs(recorders, enabled=with_mask_features) as recorded:
            pred_masks, iou_scores = decoder(
                image_embeddings=image_embeddings, intermediate_embeddings=intermediate_embeddings, **decoder_arguments
            )
        decoded = DecodedMasks(pred_masks, iou_scores)
        if with_mask_features:
            # Tokens (B, P, T, C): the IoU token, the single-mask token, the multimask tokens, the HQ token, prompts.
            num_sam_masks = 1 + decoder.num_multimask_outputs
            tokens = recorded["tokens"][0]
            if decoder_arguments["hq_token_only"]:
                decoded.mask_tokens = tokens[:, :, 1 + num_sam_masks : 2 + num_sam_masks]
            elif decoder_arguments["multimask_output"]:
                # SAM-HQ returns its multimask outputs sorted by predicted IoU; the tokens follow the same order.
                order = torch.sort(recorded["iou"][:, :, 1:num_sam_masks], dim=2, descending=True).indices
                multimask_tokens = tokens[:, :, 2 : 1 + num_sam_masks]
                decoded.mask_tokens = torch.gather(
                    multimask_tokens, 2, order.unsqueeze(-1).expand(-1, -1, -1, tokens.shape[-1])
                )
            else:
                decoded.mask_tokens = tokens[:, :, 1:2]
            decoded.mask_features = decoder.activation(recorded["features"])
        return decoded


class Sam2PromptLearnerModel(PromptLearnerMixin, Sam2Model):
    r"""
    SAM 2 (and SAM 2.1) with the Prompt Learning Module and the point-matching head of [`SamPromptLearnerModel`] (one
    shared implementation, [`PromptLearnerMixin`]), for single images. Any SAM 2 checkpoint loads with every tensor
    unchanged; untrained, the outputs are `Sam2Model`'s, `object_score_logits` and the multi-scale `image_embeddings`
    included. `image_embeddings` is, as for `Sam2Model`, the list `[high-resolution s0 (B, C/8, 4E, 4E), s1
    (B, C/4, 2E, 2E), image embedding (B, C, E, E)]` (`get_image_embeddings`); the PLM attends to the last. The two
    high-resolution projections of the decoder (`mask_decoder.conv_s0`, `conv_s1`) run once per image inside image
    encoding (transformers' `get_image_features`), so they train with `vision_encoder`, not with `mask_decoder`: that is
    what keeps a step from cached features equal to a step from pixels.
    """

    config: Sam2PromptLearnerConfig
    family_name = "SAM 2"

    def _split_family_arguments(self, image_embeddings, kwargs):
        if image_embeddings is not None and (
            not isinstance(image_embeddings, (list, tuple)) or len(image_embeddings) != len(self.backbone_feature_sizes)
        ):
            raise ValueError(
                "SAM 2's `image_embeddings` is the list [high-resolution s0, s1, image embeddings] that "
                f"`get_image_embeddings` returns, got {type(image_embeddings).__name__}"
                f"{f' of length {len(image_embeddings)}' if isinstance(image_embeddings, (list, tuple)) else ''}."
            )
        return image_embeddings, {}

    def _image_encoding_parameters(self):
        decoder = self.mask_decoder
        return [self.no_memory_embedding, *decoder.conv_s0.parameters(), *decoder.conv_s1.parameters()]

    def _encode_images(self, pixel_values, **kwargs):
        # Sam2Model.forward's image path (get_image_embeddings is the same under no_grad).
        vision_outputs = self.get_image_features(pixel_values, return_dict=True, **kwargs)
        feature_maps = vision_outputs.fpn_hidden_states  # (HW, B, C) per level, high to low resolution
        feature_maps[-1] = feature_maps[-1] + self.no_memory_embedding
        batch_size = pixel_values.shape[0]
        image_features = [
            feature_map.permute(1, 2, 0).view(batch_size, -1, *size)
            for feature_map, size in zip(feature_maps, self.backbone_feature_sizes, strict=True)
        ]
        return image_features, vision_outputs

    def _image_embeddings_of(self, image_features):
        return image_features[-1]

    def _prepare_prompts(self, input_points, input_labels, input_boxes, input_masks, image_embeddings):
        input_points, input_labels, input_boxes, input_masks = super()._prepare_prompts(
            input_points, input_labels, input_boxes, input_masks, image_embeddings
        )
        # Sam2Model.forward: without points or boxes, one "not a point" token; mask prompts at the decoder's size.
        if input_points is None and input_boxes is None:
            batch_size = image_embeddings.shape[0]
            input_points = image_embeddings.new_zeros(batch_size, 1, 1, 2)
            input_labels = -torch.ones(batch_size, 1, 1, dtype=torch.int32, device=image_embeddings.device)
        if input_masks is not None and input_masks.shape[-2:] != self.prompt_encoder.mask_input_size:
            input_masks = F.interpolate(
                input_masks.float(),
                size=self.prompt_encoder.mask_input_size,
                align_corners=False,
                mode="bilinear",
                antialias=True,
            ).to(input_masks.dtype)
        return input_points, input_labels, input_boxes, input_masks

    def _decode(self, image_features, decoder_arguments, with_mask_features):
        decoder = self.mask_decoder
        with recorded_outputs({"features": decoder.upscale_conv2}, enabled=with_mask_features) as recorded:
            pred_masks, iou_scores, mask_tokens, object_score_logits = decoder(
                image_embeddings=image_features[-1], high_resolution_features=image_features[:-1], **decoder_arguments
            )
        decoded = DecodedMasks(
            pred_masks,
            iou_scores,
            family_outputs=dict(object_score_logits=object_score_logits, image_embeddings=image_features),
        )
        if with_mask_features:
            decoded.mask_tokens = mask_tokens  # (B, P, M, C), returned by the decoder
            # Sam2MaskDecoder adds the s0 features before the last activation.
            point_batch_size = pred_masks.shape[1]
            high_resolution = image_features[0].repeat_interleave(point_batch_size, dim=0)
            decoded.mask_features = decoder.activation(recorded["features"] + high_resolution)
        return decoded


# The family's base config class -> its prompt-learner model (adapted configs subclass their family's config).
PROMPT_LEARNER_MODEL_CLASSES = {
    SamConfig: SamPromptLearnerModel,
    SamHQConfig: SamHQPromptLearnerModel,
    Sam2Config: Sam2PromptLearnerModel,
}


def prompt_learner_class_for(config: PreTrainedConfig) -> type[PromptLearnerMixin]:
    """The prompt-learner model class of a config's family: `SamPromptLearnerModel` for a `SamConfig` (plain SAM or
    adapted), `SamHQPromptLearnerModel` for a `SamHQConfig`, `Sam2PromptLearnerModel` for a `Sam2Config`."""
    for base_config_class, model_class in PROMPT_LEARNER_MODEL_CLASSES.items():
        if isinstance(config, base_config_class):
            return model_class
    raise ValueError(
        f"No prompt-learner model for a {type(config).__name__} (model_type {config.model_type!r}): the supported "
        "families are SAM (`sam`), SAM-HQ (`sam_hq`) and SAM 2 (`sam2`)."
    )


def prompt_learner_class_for_model_type(model_type: str) -> type[PromptLearnerMixin]:
    """The prompt-learner model class whose config has this `model_type` (e.g. `"sam2_prompt_learner"`)."""
    for model_class in PROMPT_LEARNER_MODEL_CLASSES.values():
        if model_class.config_class.model_type == model_type:
            return model_class
    known = [model_class.config_class.model_type for model_class in PROMPT_LEARNER_MODEL_CLASSES.values()]
    raise ValueError(f"{model_type!r} is not a prompt-learner model type; known: {known}.")


def load_prompt_learner_model(model_name_or_path: str | os.PathLike, **kwargs) -> PromptLearnerMixin:
    """Load a checkpoint of any supported family (plain or adapted) into its prompt-learner class; `kwargs` go to
    `from_pretrained` (config fields among them override the checkpoint's)."""
    hub_keys = ("revision", "token", "cache_dir", "local_files_only", "subfolder")
    config_kwargs = {key: kwargs[key] for key in hub_keys if key in kwargs}
    config = AutoConfig.from_pretrained(model_name_or_path, **config_kwargs)
    return prompt_learner_class_for(config).from_pretrained(model_name_or_path, **kwargs)


def resize_masks(masks: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize binary masks `(..., H, W)` to `size` (antialiased bilinear, threshold 0.5). Returns bool."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks.bool()
    flat = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    antialias = flat.shape[-1] > size[-1]
    resized = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias)
    return (resized > 0.5).reshape(*masks.shape[:-2], *size)

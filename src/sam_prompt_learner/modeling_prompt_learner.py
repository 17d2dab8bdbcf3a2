"""SAM with a Prompt Learning Module (PLM) and a point-matching boundary head (PMM).

`SamPromptLearnerModel` is a `transformers.SamModel`: any SAM checkpoint loads into it with `from_pretrained`, its
forward keeps `SamModel`'s signature and outputs, and with the PLM untrained it reproduces SAM exactly. It adds:

- `prompt_learner`: refines the sparse prompt tokens against the image embeddings before the mask decoder
  (prompt self-attention -> prompt-to-image cross-attention -> MLP, residual, zero-initialised output);
- `point_matching_head`: predicts K boundary points per mask from the decoder's mask token and upscaled mask features,
  trained by Hungarian matching to points on the ground-truth contour;
- `labels=`: with ground-truth masks, `forward` returns `.loss` (SAM's focal + dice + IoU losses plus the two
  boundary losses) and each term.
"""

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SamModel
from transformers import initialization as init
from transformers.models.sam.configuration_sam import SamMaskDecoderConfig
from transformers.models.sam.modeling_sam import SamAttention, SamFeedForward, SamMLPBlock
from transformers.utils import ModelOutput
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_prompt_learner import PromptLearnerConfig
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
    Output of [`SamPromptLearnerModel`]: `SamModel`'s outputs, plus the loss terms when `labels` are given and the
    boundary points of the point-matching head when asked for (or when training).

    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
        Weighted sum of the terms below (weights from the config).
    iou_scores (`torch.FloatTensor` of shape `(batch_size, point_batch_size, num_masks)`):
        Predicted IoU of each mask (num_masks is 3 with `multimask_output=True`, else 1).
    pred_masks (`torch.FloatTensor` of shape `(batch_size, point_batch_size, num_masks, 4E, 4E)`):
        Low-resolution mask logits in the padded input frame (E = image_size / patch_size); post-process with the
        processor's `post_process_masks`.
    pred_boundary_points (`torch.FloatTensor` of shape `(batch_size, point_batch_size, num_masks, K, 2)`, *optional*):
        The point-matching head's boundary points per mask, `(x, y)` normalised to `[0, 1]` over the padded input
        frame (multiply by `image_size` for input pixels).
    focal_loss, dice_loss, iou_loss, point_matching_loss, boundary_point_loss (`torch.FloatTensor` of shape `()`):
        Unweighted loss terms, averaged over the valid prompts (the trained mask of each prompt; the IoU loss over
        every returned mask).
    vision_hidden_states, vision_attentions, mask_decoder_attentions:
        As in `SamImageSegmentationOutput`.
    """

    loss: torch.FloatTensor | None = None
    iou_scores: torch.FloatTensor | None = None
    pred_masks: torch.FloatTensor | None = None
    pred_boundary_points: torch.FloatTensor | None = None
    focal_loss: torch.FloatTensor | None = None
    dice_loss: torch.FloatTensor | None = None
    iou_loss: torch.FloatTensor | None = None
    point_matching_loss: torch.FloatTensor | None = None
    boundary_point_loss: torch.FloatTensor | None = None
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


class PromptLearningLayer(nn.Module):
    """One PLM block: prompt self-attention, prompt-to-image cross-attention, MLP; each residual + LayerNorm (post-norm,
    as in SAM's two-way transformer). The prompt tokens are their own positional encoding; the image keys carry SAM's
    dense positional encoding."""

    def __init__(self, config: SamMaskDecoderConfig):
        super().__init__()
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
    ) -> torch.Tensor:
        # prompts, prompt_positional_embeddings: (B, P, T, C); image tensors: (B, 1, HW, C);
        # self_attention_mask: (B*P, 1, T, T) additive, hides padded prompt tokens as keys.
        batch_size, point_batch_size, num_tokens, hidden = prompts.shape
        query = prompts + prompt_positional_embeddings
        attn_out, _ = self.self_attn(query=query, key=query, value=prompts, attention_similarity=self_attention_mask)
        prompts = self.layer_norm1(prompts + attn_out)

        # Cross-attention treats every query independently, so all P*T tokens of an image share one pass over its
        # image keys instead of repeating the (HW, C) keys P times as the mask decoder does.
        query = (prompts + prompt_positional_embeddings).reshape(batch_size, 1, point_batch_size * num_tokens, hidden)
        attention = self.cross_attn_prompt_to_image
        if absorbed_attention_is_cheaper(attention, num_queries=query.shape[2], num_keys=image_embeddings.shape[2]):
            attn_out = absorbed_cross_attention(attention, query, image_embeddings, image_positional_embeddings)
        else:
            key = image_embeddings + image_positional_embeddings
            attn_out, _ = attention(query=query, key=key, value=image_embeddings)
        prompts = self.layer_norm2(prompts + attn_out.reshape(prompts.shape))
        return self.layer_norm3(prompts + self.mlp(prompts))


class PromptLearningModule(nn.Module):
    """The PLM: `f_P' = f_P + W_out(blocks(f_P, f_I))` on the sparse prompt tokens, with `W_out` zero-initialised so
    an untrained PLM returns its input exactly. Padded tokens (SAM's zero vectors) stay untouched."""

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
            layer_norm_eps=decoder.layer_norm_eps,
        )
        self.config._attn_implementation = decoder._attn_implementation
        self.layers = nn.ModuleList(PromptLearningLayer(self.config) for _ in range(config.prompt_learner_depth))
        self.out_proj = ZeroInitLinear(decoder.hidden_size, decoder.hidden_size)

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
        hidden_min = torch.finfo(sparse_embeddings.dtype).min
        self_attention_mask = torch.where(token_is_padding, hidden_min, 0.0).to(sparse_embeddings.dtype)
        self_attention_mask = self_attention_mask.reshape(batch_size * point_batch_size, 1, 1, num_tokens)
        prompts = sparse_embeddings
        for layer in self.layers:
            prompts = layer(prompts, sparse_embeddings, keys, keys_pe, self_attention_mask)
        update = self.out_proj(prompts) * (~token_is_padding).unsqueeze(-1).to(prompts.dtype)
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


class SamPromptLearnerModel(SamModel):
    r"""
    SAM with a Prompt Learning Module and a point-matching head; see the module docstring. Loading any SAM checkpoint
    (`SamPromptLearnerModel.from_pretrained("facebook/sam-vit-base")` or a local directory) reuses every SAM tensor
    exactly and initialises the new modules (the PLM as the identity). After loading, only
    `DEFAULT_TRAINABLE_PARTS` (the PLM and the head) require gradients; change that with [`set_trainable`].
    """

    config: PromptLearnerConfig
    # The new modules are legitimately missing from SAM checkpoints: they are initialised, not reported as missing.
    _keys_to_ignore_on_load_missing = [r"^prompt_learner\.", r"^point_matching_head\."]

    def __init__(self, config: PromptLearnerConfig):
        super().__init__(config)
        self.prompt_learner = PromptLearningModule(config) if config.prompt_learner_depth > 0 else None
        self.point_matching_head = PointMatchingHead(config) if config.use_point_matching_head else None
        # SamModel.__init__ initialised its own modules; this second pass initialises only the new ones.
        self.post_init()
        self.set_default_trainable()

    def _init_weights(self, module: nn.Module):
        super()._init_weights(module)
        if isinstance(module, ZeroInitLinear):
            init.zeros_(module.weight)
            init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        # Loading recreates every parameter with requires_grad=True; restore the documented default.
        (model[0] if isinstance(model, tuple) else model).set_default_trainable()
        return model

    def set_default_trainable(self):
        """Train the prompt learner and the point-matching head (those this config has); freeze SAM."""
        self.set_trainable([name for name in DEFAULT_TRAINABLE_PARTS if getattr(self, name) is not None])

    def set_trainable(self, parts: Iterable[str]) -> int:
        """Make exactly `parts` trainable and freeze everything else.

        Args:
            parts: names among `TRAINABLE_PARTS` (`"prompt_learner"`, `"point_matching_head"`, `"mask_decoder"`,
                `"prompt_encoder"`, `"vision_encoder"`). The positional matrix shared by the image and the prompt
                encoder trains with either encoder.

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
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @merge_with_config_defaults
    @capture_outputs
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
        r"""
        Arguments are those of `SamModel.forward` (see its documentation), plus:

        labels (`torch.Tensor` of shape `(batch_size, point_batch_size, height, width)`, *optional*):
            Binary ground-truth mask of each prompt, in the padded input frame (the frame of `pixel_values`; masks
            from `SamProcessor(segmentation_maps=...)` qualify), any square resolution. They are resized to the
            `4E x 4E` logit grid (antialiased bilinear, threshold 0.5). With labels the output holds `loss`.
            With `multimask_output=True` only the lowest-loss of the three masks is trained (SAM's rule), while the
            IoU head learns the IoU of all three.
        prompt_mask (`torch.Tensor` of shape `(batch_size, point_batch_size)`, *optional*):
            True for real prompts, False for padding prompts (ignored by the loss). All prompts are real by default.
        output_boundary_points (`bool`, *optional*):
            Return the point-matching head's boundary points. Defaults to True when `labels` are given.
        """
        batch_size, point_batch_size = self._check_inputs(
            pixel_values, input_points, input_labels, input_boxes, image_embeddings, labels, prompt_mask
        )
        vision_hidden_states = vision_attentions = None
        if pixel_values is not None:
            # Not get_image_embeddings: it runs under no_grad, which would block LoRA on the encoder.
            vision_outputs = self.vision_encoder(pixel_values, **kwargs)
            image_embeddings = vision_outputs.last_hidden_state
            vision_hidden_states = vision_outputs.hidden_states
            vision_attentions = vision_outputs.attentions
        if input_points is not None and input_labels is None:
            input_labels = torch.ones_like(input_points[:, :, :, 0], dtype=torch.int)

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

        want_points = self.point_matching_head is not None and (
            output_boundary_points if output_boundary_points is not None else labels is not None
        )
        with self._capture_decoder_features(want_points) as decoder_features:
            pred_masks, iou_scores = self.mask_decoder(
                image_embeddings=image_embeddings,
                image_positional_embeddings=image_positional_embeddings,
                sparse_prompt_embeddings=sparse_embeddings,
                dense_prompt_embeddings=dense_embeddings,
                multimask_output=multimask_output,
                attention_similarity=attention_similarity,
                target_embedding=target_embedding,
            )
        pred_boundary_points = None
        if want_points:
            pred_boundary_points = self._predict_boundary_points(decoder_features, pred_masks, multimask_output)

        output = SamPromptLearnerOutput(
            iou_scores=iou_scores,
            pred_masks=pred_masks,
            pred_boundary_points=pred_boundary_points,
            vision_hidden_states=vision_hidden_states,
            vision_attentions=vision_attentions,
        )
        if labels is not None:
            self._add_losses(output, labels, prompt_mask)
        return output

    # ----------------------------------------------------------------------------------------------------------------
    # forward helpers

    def _check_inputs(
        self, pixel_values, input_points, input_labels, input_boxes, image_embeddings, labels, prompt_mask
    ) -> tuple[int, int]:
        """Validate the inputs up front, with messages that name the problem. Returns (batch_size, point_batch_size)."""
        if (pixel_values is None) == (image_embeddings is None):
            raise ValueError("Pass exactly one of `pixel_values` and `image_embeddings`.")
        batch_size = (pixel_values if pixel_values is not None else image_embeddings).shape[0]
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
        return batch_size, point_batch_size

    @staticmethod
    def _padding_tokens(input_labels: torch.Tensor | None, sparse_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, P, T) bool: True for the zero tokens of padded points. Tokens after the user's points (SAM's
        "not a point" token, box corners) are real."""
        is_padding = torch.zeros(sparse_embeddings.shape[:3], dtype=torch.bool, device=sparse_embeddings.device)
        if input_labels is not None:
            num_points = input_labels.shape[2]
            is_padding[:, :, :num_points] = input_labels == POINT_PAD_LABEL
        return is_padding

    @contextlib.contextmanager
    def _capture_decoder_features(self, enabled: bool):
        """Record the mask decoder's output tokens and upscaled features (it returns only masks and IoU)."""
        captured: dict[str, torch.Tensor] = {}
        if not enabled:
            yield captured
            return
        decoder = self.mask_decoder
        handles = [
            decoder.transformer.register_forward_hook(lambda m, i, out: captured.__setitem__("tokens", out[0])),
            decoder.upscale_conv2.register_forward_hook(lambda m, i, out: captured.__setitem__("features", out)),
        ]
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    def _predict_boundary_points(self, decoder_features, pred_masks: torch.Tensor, multimask_output: bool):
        batch_size, point_batch_size = pred_masks.shape[:2]
        # Mask token m of the decoder predicts mask m; multimask outputs are tokens 1..3, the single mask is token 0.
        token_slice = slice(1, None) if multimask_output else slice(0, 1)
        num_mask_tokens = self.mask_decoder.num_mask_tokens
        mask_tokens = decoder_features["tokens"][:, :, 1 : 1 + num_mask_tokens][:, :, token_slice]
        features = self.mask_decoder.activation(decoder_features["features"])  # the features the masks are made of
        features = features.reshape(batch_size, point_batch_size, *features.shape[1:])
        return self.point_matching_head(mask_tokens, features, pred_masks)

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
        # Averaged over valid prompts; a batch of padding only gives a zero loss that still has a graph.
        denominator = max(num_valid, 1)
        output.loss = pred_masks.sum() * 0.0
        for name, values in terms.items():
            term = values.sum() / denominator
            setattr(output, name, term)
            output.loss = output.loss + weights[name] * term


def resize_masks(masks: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize binary masks `(..., H, W)` to `size` (antialiased bilinear, threshold 0.5). Returns bool."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks.bool()
    flat = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    antialias = flat.shape[-1] > size[-1]
    resized = F.interpolate(flat, size=tuple(size), mode="bilinear", align_corners=False, antialias=antialias)
    return (resized > 0.5).reshape(*masks.shape[:-2], *size)

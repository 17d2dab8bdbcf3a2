"""The pre-training recipe of the embedded tiny SAM: its configuration, initialisation, training step and scoring.

A plain `transformers.SamModel` is trained from scratch, whole, on rendered synthetic scenes (`Scenes`): each step
encodes a batch of images once and decodes several prompts per image on the shared embeddings, for three prompt
kinds, as SAM's own training does: one click with three masks (only the lowest-loss mask is trained: SAM's ambiguity
rule), a jittered box, and 2-4 clicks (the last two on the single-mask output). The loop, its resumable state and
its stages are in `runner.py`; the numbers behind the defaults are in the tiny-sam card and BENCHMARKS.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from transformers import SamConfig, SamModel

from ..data.prompts import PromptConfig, prompt_rng, sample_object_prompts
from ..evaluation import select_masks
from ..losses import dice_loss
from ..metrics import mask_iou
from .sampling import augment, jitter_boxes, masks_to_boxes, sample_mask_pixels, sample_multi_clicks
from .scenes import Scenes

# Fields a resumed run may change: how long and how fast it runs, not what it trains (see `runner.resume_config`).
STAGE_FIELDS = (
    "time_budget_minutes",
    "stop_after_steps",
    "num_threads",
    "eval_every_steps",
    "checkpoint_minutes",
    "log_every",
    "cooldown_start_step",
    "cooldown_steps",
    "device",
    "bf16",
)
# Fields fixed when a run starts: the model's geometry and init. A branch (`pretrain(..., branch_from=...)`) may
# change any other field; these would not fit, or not affect, the weights it starts from.
INIT_FIELDS = (
    "image_size",
    "patch_size",
    "vision_hidden_size",
    "vision_layers",
    "vision_heads",
    "decoder_hidden_size",
    "aligned_attention_scale",
    "seed",
)


@dataclass
class PretrainingConfig:
    """
    Everything that decides a pre-training run; stored in its resumable state, so a resumed run trains exactly as the
    interrupted one would have.

    Data:
        tasks (`list[str]`): synthetic tasks mixed in each batch (`simple`, then `generic`).
        num_train (`list[int]`): train rows rendered per task, in `tasks` order.
        num_validation (`int`): validation rows per task scored in the loop (the task's own split).
        data_seed (`int`): the synthetic suite's seed.
        first_task_fraction_start, first_task_fraction_end (`float`): share of each batch's images drawn from
            `tasks[0]` (the rest from the other tasks, evenly), moving linearly over `curriculum_steps`: a curriculum
            from simple scenes to the generic set.
        curriculum_steps (`int`): length of that ramp.
    Model:
        image_size, patch_size, vision_hidden_size, vision_layers, vision_heads, decoder_hidden_size: the geometry
            (square embeddings of `image_size / patch_size` cells with `decoder_hidden_size` channels; global
            attention in every vision layer).
        aligned_attention_scale (`float`): > 0 starts the decoder's cross-attentions with equal query and key
            projections of this scale (`align_cross_attention`); 0 keeps transformers' init.
    Step:
        batch_size (`int`): images encoded per step.
        prompts_per_image (`int`): objects per image decoded for each of the three prompt kinds.
        iou_loss_weight (`float`): weight of the MSE of the IoU head to each mask's actual IoU.
        iou_ranking_weight (`float`): weight of a hinge that makes the predicted IoU of a click's best mask exceed the
            others' by at least their actual gap, so the model's own choice (argmax) picks it.
        box_jitter (`float`): box corners move by up to this fraction of the box size.
    Optimisation (warmup, then constant, then an optional linear cooldown to 0, so a run can grow in stages):
        learning_rate, weight_decay (on matrices only), warmup_steps, max_grad_norm.
        cooldown_start_step (`int`, *optional*), cooldown_steps (`int`): the final stage; the run ends at
            `cooldown_start_step + cooldown_steps`.
        max_steps (`int`, *optional*): stop here (with no cooldown given).
    Run:
        seed (`int`): model init and training sampling.
        eval_every_steps (`int`), checkpoint_minutes (`float`), log_every (`int`), num_threads (`int`),
        time_budget_minutes (`float`, *optional*), stop_after_steps (`int`, *optional*): this stage's limits.
        device (`str`): where the model runs (`"cpu"`, `"cuda"`); sampling stays on the CPU, so a run's batches are
            the same on any device. bf16 (`bool`): forward passes under bfloat16 autocast (for a GPU stage).
    """

    tasks: list[str] = field(default_factory=lambda: ["simple", "generic"])
    num_train: list[int] = field(default_factory=lambda: [4000, 6000])
    num_validation: int = 200
    data_seed: int = 0
    first_task_fraction_start: float = 1.0
    first_task_fraction_end: float = 0.25
    curriculum_steps: int = 6000
    image_size: int = 128
    patch_size: int = 8
    vision_hidden_size: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    decoder_hidden_size: int = 64
    aligned_attention_scale: float = 0.0
    batch_size: int = 16
    prompts_per_image: int = 1
    iou_loss_weight: float = 1.0
    iou_ranking_weight: float = 0.0
    box_jitter: float = 0.05
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 300
    max_grad_norm: float = 1.0
    cooldown_start_step: int | None = None
    cooldown_steps: int = 0
    max_steps: int | None = None
    seed: int = 0
    eval_every_steps: int = 1000
    checkpoint_minutes: float = 5.0
    log_every: int = 50
    num_threads: int = 2
    time_budget_minutes: float | None = None
    stop_after_steps: int | None = None
    device: str = "cpu"
    bf16: bool = False

    @property
    def final_step(self) -> int | None:
        """The step the run ends at, if the schedule fixes one."""
        if self.cooldown_start_step is not None:
            return self.cooldown_start_step + self.cooldown_steps
        return self.max_steps


def build_sam_config(config: PretrainingConfig) -> SamConfig:
    """A small SAM: `image_size` px input, `image_size / patch_size` square embeddings, global attention only."""
    channels = config.decoder_hidden_size
    return SamConfig(
        vision_config=dict(
            hidden_size=config.vision_hidden_size,
            num_hidden_layers=config.vision_layers,
            num_attention_heads=config.vision_heads,
            image_size=config.image_size,
            patch_size=config.patch_size,
            output_channels=channels,
            # 16 x 16 tokens are cheap to attend globally, so no windowed layer.
            global_attn_indexes=list(range(config.vision_layers)),
            num_pos_feats=channels // 2,
            initializer_range=0.02,
        ),
        prompt_encoder_config=dict(
            hidden_size=channels, image_size=config.image_size, patch_size=config.patch_size, mask_input_channels=8
        ),
        mask_decoder_config=dict(
            hidden_size=channels, mlp_dim=4 * channels, num_attention_heads=4, iou_head_hidden_dim=channels
        ),
    )


def fix_positional_matrix(model: SamModel, generator: torch.Generator) -> None:
    """Draw the random-Fourier matrix from N(0, 1) and freeze it, as Meta's SAM does (a buffer there).

    transformers' default is a trainable matrix of std `hidden_size // 2`: coordinates in [-1, 1] then map to
    frequencies so high that neighbouring pixels get unrelated encodings. The prompt encoder's matrix is tied to this
    one (`SamModel._tied_weights_keys`), so points and the image grid keep sharing one encoding.
    """
    matrix = model.shared_image_embedding.positional_embedding  # (2, num_pos_feats)
    with torch.no_grad():
        matrix.copy_(torch.randn(matrix.shape, generator=generator))
    matrix.requires_grad_(False)


def align_cross_attention(model: SamModel, scale: float, generator: torch.Generator) -> None:
    """Give every decoder cross-attention one shared orthonormal query/key projection, times `scale`, zero biases.

    Why: queries and keys both carry positional encodings (the prompt's and the image grid's random-Fourier features).
    With equal projections a prompt token's attention score peaks at the image positions whose encoding matches its
    own, so from the first step the decoder can route a click to its location.
    """
    for layer in [*model.mask_decoder.transformer.layers, model.mask_decoder.transformer]:
        attentions = (
            [layer.cross_attn_token_to_image, layer.cross_attn_image_to_token]
            if hasattr(layer, "cross_attn_image_to_token")
            else [layer.final_attn_token_to_image]
        )
        for attention in attentions:
            shape = attention.q_proj.weight.shape  # (internal_dim, hidden_size)
            projection = torch.linalg.qr(torch.randn(shape[1], shape[0], generator=generator)).Q.T * scale
            with torch.no_grad():
                for linear in (attention.q_proj, attention.k_proj):
                    linear.weight.copy_(projection)
                    linear.bias.zero_()


def init_model(config: PretrainingConfig) -> SamModel:
    """The untrained model of `config`, initialised as the recipe wants (a function of `config.seed` only)."""
    torch.manual_seed(config.seed)
    model = SamModel(build_sam_config(config))
    generator = torch.Generator().manual_seed(config.seed)
    fix_positional_matrix(model, generator)
    if config.aligned_attention_scale > 0:
        align_cross_attention(model, config.aligned_attention_scale, generator)
    return model


def cooldown_done(step: int, config: PretrainingConfig) -> float | None:
    """The share of the cooldown behind `step` (0 before it starts, 1 at its end), or None for a run without one."""
    if config.cooldown_start_step is None:
        return None
    return min(1.0, max(0.0, (step - config.cooldown_start_step) / max(1, config.cooldown_steps)))


def learning_rate_factor(step: int, config: PretrainingConfig) -> float:
    """Linear warmup to 1 over `warmup_steps`, constant, then (from `cooldown_start_step`) linear decay to 0."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    return 1.0 - (cooldown_done(step, config) or 0.0)


def first_task_fraction(step: int, config: PretrainingConfig) -> float:
    """The curriculum: the share of a batch's images drawn from `tasks[0]` at `step`."""
    progress = min(1.0, step / max(1, config.curriculum_steps))
    start, end = config.first_task_fraction_start, config.first_task_fraction_end
    return start + (end - start) * progress


def normalize_images(images: torch.Tensor, processor) -> torch.Tensor:
    """uint8 `(B, 3, S, S)` -> the processor's `pixel_values`: rescaled and mean/std-normalised.

    The images are already the model's square size, so the processor's resize and pad are the identity.
    """
    image_processor = processor.image_processor
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
    return (images.float() * image_processor.rescale_factor - mean) / std


def mask_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-mask BCE + dice `(N,)` of logits `(N, h, w)` against soft targets `(N, h, w)` in [0, 1].

    BCE + dice learned much faster than SAM's 20:1 focal + dice at this scale (shared notes, section 8).
    """
    pixel_loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").flatten(1).mean(1)
    return pixel_loss + dice_loss(logits, targets)


def iou_ranking_loss(predicted_iou: torch.Tensor, actual_iou: torch.Tensor) -> torch.Tensor:
    """Hinge `(N,)`: the best mask's predicted IoU must exceed each other's by at least the actual gap.

    Args:
        predicted_iou, actual_iou: `(N, K)`.

    Zero where the predictions equal the actual IoUs, so it agrees with the MSE target; it only adds weight to the
    ordering, which is what the model's own choice (argmax) uses.
    """
    best = actual_iou.argmax(dim=1, keepdim=True)  # (N, 1)
    actual_gap = actual_iou.gather(1, best) - actual_iou  # (N, K), >= 0
    predicted_gap = predicted_iou.gather(1, best) - predicted_iou
    return F.relu(actual_gap - predicted_gap).sum(1) / max(1, actual_iou.shape[1] - 1)


def decode(
    model: SamModel,
    image_embeddings: torch.Tensor,
    targets: torch.Tensor,
    multimask_output: bool,
    input_points: torch.Tensor | None = None,
    input_labels: torch.Tensor | None = None,
    input_boxes: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Decode one prompt per target and score it.

    Args:
        image_embeddings: `(B, C, E, E)`.
        targets: `(B, P, 4E, 4E)` soft ground truth on the mask-logit grid.
        multimask_output: three masks (only the lowest-loss one is trained) or the single-mask token.
        input_points `(B, P, N, 2)`, input_labels `(B, P, N)`, input_boxes `(B, P, 4)`: SAM's prompt inputs.

    Returns:
        `mask` `(B*P,)`: loss of the trained mask; `iou` `(B*P,)`: MSE of the IoU head over the outputs;
        `ranking` `(B*P,)`: `iou_ranking_loss` (zero with one output).
    """
    outputs = model(
        image_embeddings=image_embeddings,
        input_points=input_points,
        input_labels=input_labels,
        input_boxes=input_boxes,
        multimask_output=multimask_output,
    )
    logits = outputs.pred_masks.flatten(0, 1).float()  # (B*P, K, 4E, 4E); the loss in float32 under autocast
    predicted_iou = outputs.iou_scores.flatten(0, 1).float()  # (B*P, K)
    num_prompts, num_outputs = logits.shape[:2]
    flat_logits = logits.flatten(0, 1)  # (B*P*K, 4E, 4E)
    flat_targets = targets.flatten(0, 1).repeat_interleave(num_outputs, dim=0)
    per_output = mask_losses(flat_logits, flat_targets).view(num_prompts, num_outputs)
    with torch.no_grad():
        actual_iou = mask_iou(flat_logits > 0, flat_targets > 0.5).float().view(num_prompts, num_outputs)
    return {
        "mask": per_output.min(dim=1).values,
        "iou": (predicted_iou - actual_iou).square().mean(1),
        "ranking": iou_ranking_loss(predicted_iou, actual_iou),
    }


def sample_batch(
    banks: list[Scenes], step: int, config: PretrainingConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and their prompted objects for one step, mixed across `banks` as the curriculum says.

    Returns:
        images `(B, 3, S, S)` uint8 (augmented); masks `(B, 3P, S, S)` bool: P objects for each prompt kind, drawn
        with replacement from the image's objects.
    """
    num_first = round(first_task_fraction(step, config) * config.batch_size)
    others = banks[1:] or banks[:1]
    sources = [banks[0]] * num_first + [others[i % len(others)] for i in range(config.batch_size - num_first)]
    images, targets = [], []
    for bank in sources:
        image_index = int(torch.randint(len(bank), (1,), generator=generator))
        first, last = int(bank.first_object[image_index]), int(bank.first_object[image_index + 1])
        chosen = first + torch.randint(last - first, (3 * config.prompts_per_image,), generator=generator)
        image, masks = augment(bank.images[image_index], bank.masks[chosen], generator)
        images.append(image)
        targets.append(masks)
    return torch.stack(images), torch.stack(targets)


def training_step(
    model: SamModel, banks: list[Scenes], processor, step: int, config: PretrainingConfig, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Sample a batch, run the three prompt kinds on shared image embeddings, return the losses (total first).

    Prompts are sampled on the CPU with `generator`; the model's inputs and targets then move to the model's device.
    """
    device = model.device
    images, masks = sample_batch(banks, step, config, generator)
    pixel_values = normalize_images(images, processor).to(device)  # (B, 3, S, S)
    batch_size, num_prompts = masks.shape[:2]
    flat_masks = masks.flatten(0, 1)  # (B*3P, S, S)
    logits_size = 4 * model.config.prompt_encoder_config.image_embedding_size
    # Area-downsampled targets on the mask-logit grid: the fraction of each cell the object covers.
    soft_targets = (
        F.adaptive_avg_pool2d(flat_masks.float().unsqueeze(1), logits_size)
        .view(batch_size, num_prompts, logits_size, logits_size)
        .to(device)
    )
    image_embeddings = model.vision_encoder(pixel_values).last_hidden_state  # (B, C, E, E)
    prompts = config.prompts_per_image
    click_masks, box_masks, multi_masks = flat_masks.view(batch_size, 3, prompts, *flat_masks.shape[1:]).unbind(1)

    clicks = sample_mask_pixels(click_masks.flatten(0, 1), 1, generator).view(batch_size, prompts, 1, 2).to(device)
    click = decode(
        model,
        image_embeddings,
        soft_targets[:, :prompts],
        multimask_output=True,
        input_points=clicks,
        input_labels=torch.ones(batch_size, prompts, 1, dtype=torch.int64, device=device),
    )
    boxes = jitter_boxes(masks_to_boxes(box_masks.flatten(0, 1)), config.box_jitter, config.image_size, generator)
    box = decode(
        model,
        image_embeddings,
        soft_targets[:, prompts : 2 * prompts],
        multimask_output=False,
        input_boxes=boxes.view(batch_size, prompts, 4).to(device),
    )
    points, labels = sample_multi_clicks(multi_masks.flatten(0, 1), generator)
    multi = decode(
        model,
        image_embeddings,
        soft_targets[:, 2 * prompts :],
        multimask_output=False,
        input_points=points.view(batch_size, prompts, -1, 2).to(device),
        input_labels=labels.view(batch_size, prompts, -1).to(device),
    )
    kinds = (click, box, multi)
    mask_loss = sum(kind["mask"].mean() for kind in kinds) / 3
    iou_loss = sum(kind["iou"].mean() for kind in kinds) / 3
    ranking_loss = click["ranking"].mean()
    total = mask_loss + config.iou_loss_weight * iou_loss + config.iou_ranking_weight * ranking_loss
    return {
        "loss": total,
        "click": click["mask"].mean(),
        "box": box["mask"].mean(),
        "multi_click": multi["mask"].mean(),
        "iou_head": iou_loss,
        "iou_ranking": ranking_loss,
    }


def evaluation_prompts(
    masks: torch.Tensor, sample_id: str, point_placement: str = "interior"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts `sam-prompt-learner evaluate` gives the objects `masks` `(M, S, S)` of one image: a click drawn from
    each object's interior (`prompt_rng(sample_id, object index)`), `(M, 1, 2)`, and its tight box, `(M, 4)`.
    Another `point_placement` (`POINT_PLACEMENTS`) draws the click elsewhere on the object, for measurements."""
    config = PromptConfig(point_placement=point_placement)
    prompts = [sample_object_prompts(mask.numpy(), config, prompt_rng(sample_id, i)) for i, mask in enumerate(masks)]
    points = torch.tensor(np.stack([prompt.points for prompt in prompts]), dtype=torch.float32)
    boxes = torch.tensor(np.stack([prompt.box for prompt in prompts]), dtype=torch.float32)
    return points, boxes


def nesting_flags(masks: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(M,)` bool each: `is_part` (the object lies inside another of its image) and `click_on_part` (the object is a
    whole whose click, `points` `(M, 1, 2)`, landed on one of its parts; the click alone cannot tell them apart)."""
    inside = objects_inside(masks)  # (M, M) [i, j]: object i lies inside object j
    clicked = masks[:, points[:, 0, 1].long(), points[:, 0, 0].long()].T  # (M, M) [i, j]: object i's click on j
    return inside.any(dim=1), (clicked & inside.T).any(dim=1)


@torch.no_grad()
def object_ious(model: SamModel, scenes: Scenes, processor, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Per-object IoUs `(num_objects,)` over every object of `scenes`, with the prompts `sam-prompt-learner evaluate`
    uses.

    A click is one point drawn from the object's interior (`PromptConfig(point_placement="interior")` with
    `prompt_rng(sample_id, object index)`); `click_own` keeps the mask with the highest predicted IoU,
    `click_best_of_3` the best mask (an oracle, chosen on the logit grid), `box` decodes the object's tight box with
    the single-mask output. Logits are upsampled bilinearly to the image, as `SamProcessor.post_process_masks`
    does, and thresholded at 0. Also `is_part` (bool: the object lies inside another object of its image, a part
    of a nested whole, where a click is ambiguous), `click_on_part` (bool: the object is a whole whose click landed
    on one of its parts, so the click alone cannot say which of the two is meant) and `area` (the object's share of
    the image).
    """
    was_training, device = model.training, model.device
    model.eval()
    image_size = scenes.images.shape[-1]
    ious: dict[str, list[torch.Tensor]] = {"click_own": [], "click_best_of_3": [], "box": []}
    is_part: list[torch.Tensor] = []
    click_on_part: list[torch.Tensor] = []
    for start in range(0, len(scenes), batch_size):
        indices = range(start, min(start + batch_size, len(scenes)))
        pixel_values = normalize_images(scenes.images[start : indices.stop], processor).to(device)
        embeddings = model.get_image_embeddings(pixel_values)
        for batch_index, image_index in enumerate(indices):
            masks = scenes.object_masks(image_index)  # (M, S, S)
            points, boxes = evaluation_prompts(masks, scenes.sample_ids[image_index])
            embedding = embeddings[batch_index : batch_index + 1]
            click_outputs = model(
                image_embeddings=embedding, input_points=points[None].to(device), multimask_output=True
            )
            box_outputs = model(image_embeddings=embedding, input_boxes=boxes[None].to(device), multimask_output=False)
            # One mask per prompt on the logit grid, chosen as `sam-prompt-learner evaluate` chooses (the oracle on
            # that grid too), then upsampled to the image and scored there: (1, M, 4E, 4E) each.
            click_masks, click_scores = click_outputs.pred_masks.float().cpu(), click_outputs.iou_scores.float().cpu()
            chosen = {
                "click_own": select_masks(click_masks, click_scores, "predicted_iou"),
                "click_best_of_3": select_masks(click_masks, click_scores, "oracle", labels=masks[None]),
                "box": box_outputs.pred_masks.float().cpu()[:, :, 0],
            }
            for name, logits in chosen.items():
                upsampled = F.interpolate(logits[0].unsqueeze(1), size=image_size, mode="bilinear")[:, 0]  # (M, S, S)
                ious[name].append(mask_iou(upsampled > 0, masks))
            part, on_part = nesting_flags(masks, points)
            is_part.append(part)
            click_on_part.append(on_part)
    model.train(was_training)
    scores = {name: torch.cat(values) if values else torch.zeros(0) for name, values in ious.items()}
    for name, flags in (("is_part", is_part), ("click_on_part", click_on_part)):
        scores[name] = torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)
    scores["area"] = scenes.masks.flatten(1).float().mean(1)
    return scores


def evaluate(model: SamModel, scenes: Scenes, processor, batch_size: int = 32) -> dict[str, float]:
    """mIoU over every object of `scenes` (`object_ious`): `click_own`, `click_best_of_3`, `box`, and
    `parts_own` / `parts_best_of_3`, the click scores over the parts of nested objects: a gap between them says the
    IoU head, not the masks, loses the part. The parts' scores are absent when the split has no such objects.
    """
    per_object = object_ious(model, scenes, processor, batch_size)
    parts = per_object["is_part"]
    scores = {name: per_object[name] for name in ("click_own", "click_best_of_3", "box")}
    if parts.any():
        scores["parts_own"], scores["parts_best_of_3"] = scores["click_own"][parts], scores["click_best_of_3"][parts]
    return {name: float(values.mean()) if len(values) else math.nan for name, values in scores.items()}


def objects_inside(masks: torch.Tensor) -> torch.Tensor:
    """`(M, M)` bool for an image's object masks `(M, S, S)`: `[i, j]` when object i lies wholly inside the larger
    object j (i is a part of the nested whole j)."""
    flat = masks.flatten(1).float()  # (M, S*S)
    overlap = flat @ flat.T  # (M, M): shared pixels
    areas = flat.sum(1)
    return (overlap == areas.unsqueeze(1)) & (areas.unsqueeze(1) < areas.unsqueeze(0))

"""LoRA for the prompt-learner models with `peft`: which projections of SAM, SAM-HQ or SAM 2 to adapt, and the new
modules trained in full. The same target names work for every family.

```python
from peft import get_peft_model
from sam_prompt_learner import SamPromptLearnerModel, sam_lora_config

model = get_peft_model(SamPromptLearnerModel.from_pretrained("facebook/sam-vit-base"), sam_lora_config(rank=8))
model.save_pretrained("adapter/")  # LoRA weights + the prompt learner and point-matching head
```
"""

from collections.abc import Iterable

from peft import LoraConfig

# Regexes over module names (peft matches a string `target_modules` with re.fullmatch).
LORA_TARGETS = {
    # q/k/v/output projections of every attention in the two-way transformer (token<->image and self-attention); the
    # output projection is `out_proj` in SAM and SAM-HQ, `o_proj` in SAM 2.
    "mask_decoder": r"mask_decoder\.transformer\..*\.(q_proj|k_proj|v_proj|out_proj|o_proj)",
    # The fused qkv projection of every block of the image encoder (adapts q, k and v together): the ViT layers of
    # SAM and SAM-HQ, the Hiera blocks of SAM 2.
    "vision_encoder": r"vision_encoder\.(layers|backbone\.blocks)\.\d+\.attn\.qkv",
}


def sam_lora_config(
    targets: Iterable[str] = ("mask_decoder",),
    rank: int = 8,
    alpha: int | None = None,
    dropout: float = 0.0,
    modules_to_save: Iterable[str] = ("prompt_learner", "point_matching_head"),
) -> LoraConfig:
    """A `peft.LoraConfig` for SAM.

    Args:
        targets: keys of `LORA_TARGETS`: `"mask_decoder"` (default) and/or `"vision_encoder"`. LoRA on the vision
            encoder needs gradients through it, so image embeddings cannot come from a precomputed cache.
        rank: LoRA rank r.
        alpha: LoRA scaling numerator; defaults to 2 * rank.
        dropout: dropout on the LoRA input.
        modules_to_save: modules trained in full and saved with the adapter (by default the prompt learner and the
            point-matching head; pass only those the model has).
    """
    targets = list(targets)
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if not targets or unknown:
        raise ValueError(f"LoRA targets must be a non-empty subset of {sorted(LORA_TARGETS)}, got {targets}.")
    pattern = "|".join(f"(?:{LORA_TARGETS[name]})" for name in targets)
    return LoraConfig(
        r=rank,
        lora_alpha=2 * rank if alpha is None else alpha,
        lora_dropout=dropout,
        target_modules=f"^(?:{pattern})$",
        modules_to_save=list(modules_to_save) or None,
    )

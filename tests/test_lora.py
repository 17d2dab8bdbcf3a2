import pytest
import torch
from peft import PeftModel, get_peft_model

from sam_prompt_learner import SamPromptLearnerModel, sam_lora_config
from sam_prompt_learner.training import load_model_and_processor, plan_trainable


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return dict(
        image_embeddings=torch.randn(1, 32, 8, 8, generator=generator),
        input_points=torch.rand(1, 2, 1, 2, generator=generator) * 128,
        input_labels=torch.ones(1, 2, 1, dtype=torch.long),
    )


@pytest.mark.parametrize("targets", [("mask_decoder",), ("vision_encoder",), ("mask_decoder", "vision_encoder")])
def test_lora_wrap_train_save_reload_and_merge(sam_checkpoint, tmp_path, targets):
    torch.manual_seed(0)
    model = get_peft_model(SamPromptLearnerModel.from_pretrained(sam_checkpoint), sam_lora_config(targets, rank=4))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "prompt_learner" in n or "point_matching_head" in n for n in trainable)
    assert any("vision_encoder" in n for n in trainable) == ("vision_encoder" in targets)
    assert any("mask_decoder" in n for n in trainable) == ("mask_decoder" in targets)

    # One optimizer step makes the LoRA B matrices and the PLM output projection non-zero.
    inputs = dict(
        pixel_values=torch.randn(1, 3, 128, 128), **{k: v for k, v in batch().items() if k != "image_embeddings"}
    )
    labels = torch.zeros(1, 2, 128, 128)
    labels[..., 40:80, 30:90] = 1
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**inputs, labels=labels).loss.backward()
    assert all(model.get_parameter(n).grad is not None for n in trainable)
    optimizer.step()
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).pred_masks
    assert not torch.allclose(expected, SamPromptLearnerModel.from_pretrained(sam_checkpoint)(**inputs).pred_masks)

    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(SamPromptLearnerModel.from_pretrained(sam_checkpoint), tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**inputs).pred_masks, expected, atol=1e-5)
        merged = reloaded.merge_and_unload()
        assert type(merged) is SamPromptLearnerModel
        assert torch.allclose(merged(**inputs).pred_masks, expected, atol=1e-4)


def test_lora_config_rejects_unknown_targets():
    with pytest.raises(ValueError, match="LoRA targets"):
        sam_lora_config(["decoder"])


def test_plain_lora_when_the_config_has_no_prompt_learner_or_head(sam_checkpoint):
    """`--trainable lora` on a model without the prompt learner and head (the benchmarks' LoRA baseline) trains only
    the adapters; a full-training plan naming a disabled part is still refused."""
    model, _ = load_model_and_processor(
        sam_checkpoint, plan_trainable(["lora"]), lora_rank=4, prompt_learner_depth=0, use_point_matching_head=False
    )
    trainable = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    with pytest.raises(ValueError, match="disables them"):
        load_model_and_processor(sam_checkpoint, plan_trainable(["prompt_learner"]), prompt_learner_depth=0)

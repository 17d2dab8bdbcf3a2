"""The prompt learner on SAM-HQ and SAM 2 (tiny random configs): drop-in identity with the base class, checkpoints,
Auto classes, the loss and its gradients, a short training run."""

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file
from tiny import (
    IMAGE_SIZE,
    assert_save_load_round_trip,
    disk_labels,
    prompt_inputs,
    prompts,
    tiny_sam2_config,
    tiny_sam_hq_config,
)
from transformers import AutoConfig, AutoModel, AutoModelForMaskGeneration, Sam2Model, SamHQModel

from sam_prompt_learner import (
    Sam2PromptLearnerConfig,
    Sam2PromptLearnerModel,
    SamHQPromptLearnerConfig,
    SamHQPromptLearnerModel,
    load_prompt_learner_model,
    load_trained_parts,
    sam_lora_config,
    save_trained_parts,
)
from sam_prompt_learner.hub import model_card

FAMILIES = {
    "sam_hq": (SamHQModel, SamHQPromptLearnerModel, SamHQPromptLearnerConfig, tiny_sam_hq_config),
    "sam2": (Sam2Model, Sam2PromptLearnerModel, Sam2PromptLearnerConfig, tiny_sam2_config),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    """(name, base model, prompt-learner class, base checkpoint directory) of one family."""
    base_class, model_class, _, config = FAMILIES[request.param]
    torch.manual_seed(0)
    # initializer_range 0.2: logits of a few units, as a trained model gives (the default gives ~1e-4).
    base = base_class(config(initializer_range=0.2)).eval()
    directory = tmp_path_factory.mktemp(request.param)
    base.save_pretrained(directory)
    return request.param, base, model_class, directory


def pixels(batch_size=2, seed=2):
    return torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def cached_inputs(name, base, pixel_values):
    """The keyword arguments that feed the decoder precomputed image features, as the base documents them."""
    with torch.no_grad():
        features = base.get_image_embeddings(pixel_values)
    if name == "sam_hq":
        return {"image_embeddings": features[0], "intermediate_embeddings": features[1]}
    return {"image_embeddings": features}


def assert_same_outputs(actual, expected, family_name):
    assert actual.pred_masks.shape == expected.pred_masks.shape
    torch.testing.assert_close(actual.pred_masks, expected.pred_masks, rtol=0, atol=1e-5)
    torch.testing.assert_close(actual.iou_scores, expected.iou_scores, rtol=0, atol=1e-5)
    if family_name == "sam2":
        torch.testing.assert_close(actual.object_score_logits, expected.object_score_logits, rtol=0, atol=1e-5)
        assert len(actual.image_embeddings) == len(expected.image_embeddings) == 3
        for mine, theirs in zip(actual.image_embeddings, expected.image_embeddings, strict=True):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kinds", ["points", "boxes", "both"])
@pytest.mark.parametrize("multimask_output", [True, False])
@pytest.mark.parametrize("source", ["pixels", "cached"])
def test_untrained_prompt_learner_reproduces_the_base(family, kinds, multimask_output, source):
    name, base, model_class, directory = family
    model = model_class.from_pretrained(directory).eval()
    inputs = prompt_inputs(kinds)
    inputs.update({"pixel_values": pixels()} if source == "pixels" else cached_inputs(name, base, pixels()))
    with torch.no_grad():
        expected = base(multimask_output=multimask_output, **inputs)
        actual = model(multimask_output=multimask_output, **inputs)
    assert_same_outputs(actual, expected, name)


def test_family_specific_arguments_and_tuple_outputs_match_the_base(family):
    name, base, model_class, directory = family
    model = model_class.from_pretrained(directory).eval()
    points, labels, _ = prompts()
    inputs = dict(pixel_values=pixels(), input_points=points, input_labels=labels)
    if name == "sam_hq":
        inputs["hq_token_only"] = True
    with torch.no_grad():
        expected = base(**inputs, return_dict=False)
        actual = model(**inputs, return_dict=False)
        # No prompt at all: SAM 2 feeds one "not a point" token.
        no_prompt_expected = base(pixel_values=pixels())
        no_prompt_actual = model(pixel_values=pixels())
    assert len(actual) == len(expected)
    torch.testing.assert_close(actual[0], expected[0], rtol=0, atol=1e-5)  # iou_scores
    torch.testing.assert_close(actual[1], expected[1], rtol=0, atol=1e-5)  # pred_masks
    assert_same_outputs(no_prompt_actual, no_prompt_expected, name)


def test_base_checkpoint_loads_exactly_and_round_trips(family, tmp_path):
    name, _, model_class, directory = family
    source = load_file(directory / "model.safetensors")
    model, info = model_class.from_pretrained(directory, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    state = model.state_dict()
    for key, tensor in source.items():
        assert torch.equal(state[key], tensor), key
    assert model.config.model_type == f"{name}_prompt_learner"
    plm = model.prompt_learner
    assert torch.count_nonzero(plm.out_proj.weight) == 0 and torch.count_nonzero(plm.out_proj.bias) == 0
    q_proj = plm.layers[0].self_attn.q_proj.weight
    assert torch.isfinite(q_proj).all() and 0 < q_proj.std() < 1  # initialised, not uninitialised memory

    assert_save_load_round_trip(model, tmp_path)


def test_auto_classes_and_the_family_loader(family, tmp_path):
    name, base, model_class, directory = family
    model = model_class.from_pretrained(directory, num_boundary_points=8)
    model.save_pretrained(tmp_path)
    assert type(AutoModel.from_pretrained(tmp_path)) is model_class
    assert type(AutoModelForMaskGeneration.from_pretrained(tmp_path)) is model_class
    assert type(AutoConfig.from_pretrained(tmp_path)) is model_class.config_class
    assert type(AutoModel.from_pretrained(directory)) is type(base)  # plain checkpoints keep the base class
    # The family is read from the config: plain and adapted checkpoints, config fields passed through.
    assert type(load_prompt_learner_model(directory)) is model_class
    adapted = load_prompt_learner_model(tmp_path)
    assert type(adapted) is model_class and adapted.config.num_boundary_points == 8


def test_config_adopts_the_base_config_and_validates(family):
    name, _, model_class, directory = family
    config = model_class.config_class.from_pretrained(directory, prompt_learner_depth=2)
    assert config.model_type == f"{name}_prompt_learner" and config.prompt_learner_depth == 2
    assert config.prompt_learner_mlp_dim == 4 * config.mask_decoder_config.hidden_size
    with pytest.raises(ValueError, match="divisible"):
        FAMILIES[name][3](model_class.config_class, prompt_learner_num_attention_heads=3)


def test_labels_return_the_loss_and_gradients_reach_exactly_the_trainable_parts(family):
    name, base, model_class, directory = family
    model = model_class.from_pretrained(directory).train()
    points, labels, _ = prompts()
    inputs = dict(input_points=points, input_labels=labels, labels=disk_labels())
    inputs.update(cached_inputs(name, base, pixels()))
    output = model(**inputs)
    for term in ("focal_loss", "dice_loss", "iou_loss", "point_matching_loss", "boundary_point_loss"):
        assert getattr(output, term).ndim == 0 and getattr(output, term) > 0, term
    assert output.pred_boundary_points.shape == (2, 3, 3, model.config.num_boundary_points, 2)
    # SAM 2's object score learns "the object is there", as in SAM 2's own recipe; the other families have none.
    assert (output.object_score_loss is not None) == (name == "sam2")
    if name == "sam2":
        assert output.object_score_loss > 0
    for parts in (["prompt_learner", "point_matching_head"], ["mask_decoder"]):
        model.set_trainable(parts)
        model.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()
        with_gradients = {key for key, p in model.named_parameters() if p.grad is not None}
        expected = {key for key, p in model.named_parameters() if key.split(".")[0] in parts}
        if name == "sam2" and parts == ["mask_decoder"]:
            # The high-resolution projections run in image encoding: with cached features they cannot train.
            expected = {key for key in expected if not key.startswith(("mask_decoder.conv_s0", "mask_decoder.conv_s1"))}
        assert with_gradients == expected


def test_sam2_high_resolution_projections_train_with_the_vision_encoder(tmp_path):
    torch.manual_seed(0)
    Sam2Model(tiny_sam2_config()).save_pretrained(tmp_path)
    model = Sam2PromptLearnerModel.from_pretrained(tmp_path)
    model.set_trainable(["mask_decoder"])
    assert not model.mask_decoder.conv_s0.weight.requires_grad and model.mask_decoder.iou_token.weight.requires_grad
    model.set_trainable(["vision_encoder"])
    assert model.mask_decoder.conv_s1.weight.requires_grad and model.no_memory_embedding.requires_grad
    assert not model.mask_decoder.iou_token.weight.requires_grad


def test_a_short_training_run_lowers_the_loss(family):
    """Targets are the masks the frozen base gives for other clicks: the PLM (and head) must learn what each
    prompt should have meant."""
    name, base, model_class, directory = family
    torch.manual_seed(0)
    model = model_class.from_pretrained(directory).train()
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(2, 4, 1, 2, generator=generator) * IMAGE_SIZE
    intended_points = torch.rand(2, 4, 1, 2, generator=generator) * IMAGE_SIZE
    labels = torch.ones(2, 4, 1, dtype=torch.long)
    image_inputs = cached_inputs(name, base, pixels())
    with torch.no_grad():
        intended = base(input_points=intended_points, input_labels=labels, multimask_output=False, **image_inputs)
    targets = (intended.pred_masks[:, :, 0] > 0).float()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(60):
        output = model(input_points=points, input_labels=labels, labels=targets, multimask_output=False, **image_inputs)
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.item())
    assert losses[-1] < 0.7 * losses[0], (losses[0], losses[-1])


def test_trained_parts_and_lora_adapters_round_trip(family, tmp_path):
    """The small checkpoints (trained parts; a peft adapter with LoRA on both targets) load back over the base into
    the family's class with the adapted outputs."""
    name, base, model_class, directory = family
    torch.manual_seed(0)
    model = model_class.from_pretrained(directory).eval()
    with torch.no_grad():
        model.prompt_learner.out_proj.weight.normal_(std=0.5)  # as after training
    points, labels, _ = prompts()
    inputs = dict(input_points=points, input_labels=labels, **cached_inputs(name, base, pixels()))
    with torch.no_grad():
        expected = model(**inputs).pred_masks
    save_trained_parts(model, tmp_path / "parts", parts=["prompt_learner", "point_matching_head"])
    loaded = load_trained_parts(tmp_path / "parts")
    assert type(loaded) is model_class
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).pred_masks, expected, rtol=0, atol=1e-5)

    config = sam_lora_config(["mask_decoder", "vision_encoder"], rank=2)
    lora_model = get_peft_model(model_class.from_pretrained(directory), config)
    adapted = {key.split(".lora_")[0] for key, _ in lora_model.named_parameters() if ".lora_A" in key}
    # Every attention projection of the two-way transformer and every qkv of the image encoder, nothing else.
    targets = {
        f"base_model.model.{key}"
        for key, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and (
            (key.startswith("mask_decoder.transformer.") and key.rsplit(".", 1)[-1].endswith("_proj"))
            or (key.startswith("vision_encoder.") and key.endswith(".attn.qkv"))
        )
    }
    assert adapted == targets and any("vision_encoder" in key for key in adapted)
    with torch.no_grad():
        for key, parameter in lora_model.named_parameters():
            if ".lora_B" in key:
                parameter.normal_(std=0.1)
    lora_model.eval()
    with torch.no_grad():
        lora_expected = lora_model(**inputs).pred_masks
    lora_model.save_pretrained(tmp_path / "adapter")
    merged = load_trained_parts(tmp_path / "adapter", base_model_name_or_path=str(directory))
    assert type(merged) is model_class
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).pred_masks, lora_expected, rtol=0, atol=1e-4)


def test_model_card_names_the_family(family, tmp_path):
    from test_hub import run_summary

    name, _, model_class, directory = family
    model_class.from_pretrained(directory).save_pretrained(tmp_path)
    run_summary().write(tmp_path / "metrics.json")
    card = model_card(tmp_path, "user/adapted")
    assert f"It is a `{model_class.__name__}`" in card.text
    assert f"from sam_prompt_learner import {model_class.__name__}" in card.text
    assert name.replace("_", "-") in card.data.tags


def test_sam_hq_boundary_points_follow_the_returned_masks(tmp_path):
    """SAM-HQ returns its multimask outputs sorted by predicted IoU (and the HQ mask alone with `hq_token_only`):
    the head must read, for each returned mask, the token of that mask."""
    torch.manual_seed(0)
    SamHQModel(tiny_sam_hq_config(initializer_range=0.2)).save_pretrained(tmp_path)
    model = SamHQPromptLearnerModel.from_pretrained(tmp_path).eval()
    points, labels, _ = prompts()
    inputs = dict(pixel_values=pixels(), input_points=points, input_labels=labels, output_boundary_points=True)
    decoder, recorded = model.mask_decoder, {}
    hooks = [
        decoder.transformer.register_forward_hook(lambda m, a, out: recorded.__setitem__("tokens", out[0])),
        decoder.upscale_conv2.register_forward_hook(lambda m, a, out: recorded.__setitem__("features", out)),
        decoder.iou_prediction_head.register_forward_hook(lambda m, a, out: recorded.__setitem__("iou", out)),
    ]
    with torch.no_grad():
        hq_only = model(**inputs, hq_token_only=True)
        output = model(**inputs)
    for hook in hooks:
        hook.remove()
    assert hq_only.pred_boundary_points.shape == (2, 3, 1, model.config.num_boundary_points, 2)
    iou = recorded["iou"][:, :, 1:4]  # (B, P, 3), the multimask scores before sorting
    tokens = recorded["tokens"]  # (B, P, T, C): IoU token, single-mask token, 3 multimask tokens, ...
    expected_tokens = torch.empty(2, 3, 3, tokens.shape[-1])
    permuted = False
    for b in range(2):
        for p in range(3):
            ranked = sorted(range(3), key=lambda k: -iou[b, p, k].item())
            permuted |= ranked != [0, 1, 2]
            for k, source in enumerate(ranked):
                expected_tokens[b, p, k] = tokens[b, p, 2 + source]
    assert permuted  # the sort really reorders some masks here
    features = decoder.activation(recorded["features"]).reshape(2, 3, *recorded["features"].shape[1:])
    with torch.no_grad():
        expected = model.point_matching_head(expected_tokens, features, output.pred_masks)
    torch.testing.assert_close(output.pred_boundary_points, expected)


def test_cached_features_per_image_at_the_real_geometries():
    """The README's memory per cached image, from the configs (no model is built)."""
    from transformers import Sam2Config, SamConfig, SamHQConfig

    from sam_prompt_learner.image_features import cached_bytes_per_image, image_feature_shapes

    mib = 2**20
    assert cached_bytes_per_image(SamConfig()) == 4 * mib
    hq_vit_b = SamHQConfig(vision_config=dict(hidden_size=768), mask_decoder_config=dict(vit_dim=768))
    assert image_feature_shapes(hq_vit_b)["intermediate_embeddings"] == (64, 64, 768)
    assert cached_bytes_per_image(hq_vit_b) == 16 * mib and cached_bytes_per_image(hq_vit_b, 2) == 8 * mib
    assert image_feature_shapes(Sam2Config()) == {
        "image_embeddings": (256, 64, 64),
        "high_resolution_features_s0": (32, 256, 256),
        "high_resolution_features_s1": (64, 128, 128),
    }
    assert cached_bytes_per_image(Sam2Config()) == 16 * mib


def test_an_unsupported_family_is_named_in_the_error():
    from transformers import Sam3Config

    from sam_prompt_learner import prompt_learner_class_for

    with pytest.raises(ValueError, match="supported families are SAM .* SAM-HQ .* SAM 2"):
        prompt_learner_class_for(Sam3Config())


def test_sam2_rejects_a_single_tensor_as_image_embeddings(tmp_path):
    torch.manual_seed(0)
    model = Sam2PromptLearnerModel(tiny_sam2_config(Sam2PromptLearnerConfig)).eval()
    points, labels, _ = prompts()
    with pytest.raises(ValueError, match="the list .* that `get_image_embeddings` returns, got Tensor"):
        model(image_embeddings=torch.randn(2, 32, 8, 8), input_points=points, input_labels=labels)

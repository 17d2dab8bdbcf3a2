import pytest
import torch
from safetensors.torch import load_file
from tiny import IMAGE_SIZE, assert_save_load_round_trip, disk_labels, prompt_inputs, prompts, tiny_config
from transformers import AutoConfig, AutoModel, AutoModelForMaskGeneration, SamModel

from sam_prompt_learner import PromptLearnerConfig, SamPromptLearnerModel

EMBED_SHAPE = (2, 32, 8, 8)  # tiny SAM image embeddings (B, C, E, E)


@pytest.fixture(scope="module")
def sam(sam_checkpoint):
    return SamModel.from_pretrained(sam_checkpoint).eval()


@pytest.fixture()
def model(sam_checkpoint):
    return SamPromptLearnerModel.from_pretrained(sam_checkpoint).eval()


@pytest.mark.parametrize("kinds", ["points", "boxes", "both"])
@pytest.mark.parametrize("multimask_output", [True, False])
def test_untrained_prompt_learner_reproduces_sam(sam, model, kinds, multimask_output):
    inputs = prompt_inputs(kinds)
    embeddings = torch.randn(EMBED_SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = sam(image_embeddings=embeddings, multimask_output=multimask_output, **inputs)
        actual = model(image_embeddings=embeddings, multimask_output=multimask_output, **inputs)
    assert actual.pred_masks.shape == expected.pred_masks.shape
    assert (actual.pred_masks - expected.pred_masks).abs().max() < 1e-5
    assert (actual.iou_scores - expected.iou_scores).abs().max() < 1e-5


def test_pixel_values_path_matches_sam_and_return_dict_false(sam, model):
    points, labels, _ = prompts(point_batch_size=1)
    pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = sam(pixel_values=pixel_values, input_points=points, input_labels=labels)
        iou_scores, pred_masks = model(
            pixel_values=pixel_values, input_points=points, input_labels=labels, return_dict=False
        )[:2]
    assert torch.allclose(pred_masks, expected.pred_masks, atol=1e-5)
    assert torch.allclose(iou_scores, expected.iou_scores, atol=1e-5)


def test_sam_checkpoint_loads_exactly_and_round_trips_bit_identical(sam_checkpoint, tmp_path):
    source = load_file(sam_checkpoint / "model.safetensors")
    model, info = SamPromptLearnerModel.from_pretrained(sam_checkpoint, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    state = model.state_dict()
    for name, tensor in source.items():
        assert torch.equal(state[name], tensor), name
    # The two positional matrices are one tied tensor, equal to the checkpoint's.
    positional = model.shared_image_embedding.positional_embedding
    assert model.prompt_encoder.shared_embedding.positional_embedding is positional
    assert model.config.model_type == "sam_prompt_learner"

    # New modules hold real initial values, never uninitialised memory.
    plm = model.prompt_learner
    assert torch.count_nonzero(plm.out_proj.weight) == 0 and torch.count_nonzero(plm.out_proj.bias) == 0
    q_proj = plm.layers[0].self_attn.q_proj.weight
    assert torch.isfinite(q_proj).all() and 0.01 < q_proj.std() < 0.03
    for name, parameter in model.point_matching_head.named_parameters():
        assert torch.isfinite(parameter).all() and parameter.abs().max() < 1, name

    reloaded = assert_save_load_round_trip(model, tmp_path)
    assert (
        reloaded.prompt_encoder.shared_embedding.positional_embedding
        is reloaded.shared_image_embedding.positional_embedding
    )


def test_config_fields_round_trip_and_sam_config_is_adopted(sam_checkpoint, tmp_path):
    config = PromptLearnerConfig.from_pretrained(sam_checkpoint, prompt_learner_depth=2, num_boundary_points=8)
    assert config.model_type == "sam_prompt_learner"
    assert config.prompt_learner_depth == 2 and config.num_boundary_points == 8
    assert config.prompt_learner_num_attention_heads == config.mask_decoder_config.num_attention_heads
    assert config.prompt_learner_mlp_dim == 4 * config.mask_decoder_config.hidden_size
    config.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(reloaded, PromptLearnerConfig)
    assert reloaded.prompt_learner_depth == 2 and reloaded.num_boundary_points == 8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(prompt_learner_depth=-1), "prompt_learner_depth"),
        (dict(num_boundary_points=0), "num_boundary_points"),
        (dict(prompt_learner_num_attention_heads=3), "divisible"),
        (dict(focal_loss_weight=-1.0), "focal_loss_weight"),
        (dict(tie_word_embeddings=False), "tie_word_embeddings"),
    ],
)
def test_config_rejects_invalid_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(PromptLearnerConfig, **kwargs)


def test_auto_classes_resolve_adapted_and_plain_checkpoints(sam_checkpoint, tmp_path):
    model = SamPromptLearnerModel.from_pretrained(sam_checkpoint)
    model.save_pretrained(tmp_path)
    assert type(AutoModel.from_pretrained(tmp_path)) is SamPromptLearnerModel
    assert type(AutoModelForMaskGeneration.from_pretrained(tmp_path)) is SamPromptLearnerModel
    assert type(AutoModel.from_pretrained(sam_checkpoint)) is SamModel
    assert type(AutoConfig.from_pretrained(sam_checkpoint)).__name__ == "SamConfig"


def test_prompt_learner_off_is_plain_sam(sam_checkpoint):
    model = SamPromptLearnerModel.from_pretrained(sam_checkpoint, prompt_learner_depth=0, use_point_matching_head=False)
    assert model.prompt_learner is None and model.point_matching_head is None
    assert model.num_parameters() == SamModel.from_pretrained(sam_checkpoint).num_parameters()
    with pytest.raises(ValueError, match="disables"):
        model.set_trainable(["prompt_learner"])


def test_gradients_reach_exactly_the_trainable_parts(model):
    points, labels, _ = prompts()
    embeddings = torch.randn(EMBED_SHAPE)
    targets = disk_labels()
    for parts in (["prompt_learner", "point_matching_head"], ["mask_decoder"], ["prompt_learner", "mask_decoder"]):
        count = model.set_trainable(parts)
        assert count == sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in parts)
        model.zero_grad(set_to_none=True)
        model(image_embeddings=embeddings, input_points=points, input_labels=labels, labels=targets).loss.backward()
        for name, parameter in model.named_parameters():
            assert (parameter.grad is not None) == (name.split(".")[0] in parts), name


def test_default_trainable_parts_after_loading(model):
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompt_learner", "point_matching_head"}
    with pytest.raises(ValueError, match="Unknown trainable"):
        model.set_trainable(["decoder"])


def test_overfitting_one_batch_with_prompt_learner_and_head_only(tmp_path):
    """The frozen SAM here is random but at a trained SAM's logit scale (initializer_range 0.2 gives logits of a few
    units; the default 0.02 gives ~1e-4, which no prompt can move). Each target is the mask this SAM gives for a
    different click, so the PLM must learn what each prompt should have meant."""
    torch.manual_seed(0)
    SamModel(tiny_config(initializer_range=0.2)).save_pretrained(tmp_path)
    torch.manual_seed(0)
    model = SamPromptLearnerModel.from_pretrained(tmp_path).train()
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(2, 32, 8, 8, generator=generator)
    points = torch.rand(2, 4, 1, 2, generator=generator) * IMAGE_SIZE
    intended_points = torch.rand(2, 4, 1, 2, generator=generator) * IMAGE_SIZE
    labels = torch.ones(2, 4, 1, dtype=torch.long)
    with torch.no_grad():
        intended = model(
            image_embeddings=embeddings, input_points=intended_points, input_labels=labels, multimask_output=False
        )
    targets = (intended.pred_masks[:, :, 0] > 0).float()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(300):
        output = model(
            image_embeddings=embeddings,
            input_points=points,
            input_labels=labels,
            labels=targets,
            multimask_output=False,
        )
        optimizer.zero_grad()
        output.loss.backward()
        optimizer.step()
        losses.append(output.loss.item())
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
    assert model.mask_decoder.iou_token.weight.grad is None  # SAM itself stayed frozen


def test_loss_ignores_padding_prompts(model):
    points, labels, _ = prompts(point_batch_size=3)
    embeddings = torch.randn(EMBED_SHAPE)
    targets = disk_labels()
    torch.manual_seed(0)
    full = model(
        image_embeddings=embeddings,
        input_points=points,
        input_labels=labels,
        labels=targets,
        prompt_mask=torch.tensor([[True, True, False], [True, True, False]]),
    )
    torch.manual_seed(0)
    subset = model(
        image_embeddings=embeddings, input_points=points[:, :2], input_labels=labels[:, :2], labels=targets[:, :2]
    )
    for name in ("focal_loss", "dice_loss", "iou_loss", "point_matching_loss"):
        assert torch.allclose(getattr(full, name), getattr(subset, name), atol=1e-6), name


def test_trained_prompt_learner_leaves_padding_tokens_alone(model):
    """Padded points (label -10) neither change nor are changed by the PLM."""
    with torch.no_grad():
        model.prompt_learner.out_proj.weight.normal_()
    plm = model.prompt_learner
    sparse = torch.randn(1, 1, 3, 32)
    sparse_padded = torch.cat([sparse[:, :, :2], torch.zeros(1, 1, 2, 32), sparse[:, :, 2:]], dim=2)
    padding = torch.tensor([[[False, False, False]]])
    padding_padded = torch.tensor([[[False, False, True, True, False]]])
    image = torch.randn(1, 32, 8, 8)
    image_pe = model.get_image_wide_positional_embeddings()
    with torch.no_grad():
        out = plm(sparse, padding, image, image_pe)
        out_padded = plm(sparse_padded, padding_padded, image, image_pe)
    assert not torch.allclose(out, sparse)
    assert torch.allclose(out_padded[:, :, [0, 1, 4]], out, atol=1e-5)
    assert torch.count_nonzero(out_padded[:, :, 2:4]) == 0


def test_boundary_points_are_returned_on_request(model):
    points, labels, _ = prompts()
    output = model(image_embeddings=torch.randn(EMBED_SHAPE), input_points=points, input_labels=labels)
    assert output.pred_boundary_points is None and output.loss is None
    output = model(
        image_embeddings=torch.randn(EMBED_SHAPE),
        input_points=points,
        input_labels=labels,
        output_boundary_points=True,
        multimask_output=False,
    )
    points_out = output.pred_boundary_points
    assert points_out.shape == (2, 3, 1, model.config.num_boundary_points, 2)
    assert ((points_out >= 0) & (points_out <= 1)).all()


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(labels=disk_labels(point_batch_size=2)), "one mask per prompt"),
        (dict(labels=disk_labels() * 2), "binary"),
        (dict(labels=disk_labels()[:, :, 0]), "shape"),
        (dict(input_points=torch.full((2, 3, 2, 2), float("nan"))), "NaN"),
        (dict(input_points=torch.zeros(2, 3, 2)), "input_points"),
        (dict(input_boxes=torch.tensor([[[0.0, 0.0, float("nan"), 1.0]] * 3] * 2)), "NaN"),
        (dict(prompt_mask=torch.ones(2, 2, dtype=torch.bool)), "prompt_mask"),
        (dict(labels=torch.ones(2, 3, 32, 16)), "square"),
    ],
)
def test_bad_inputs_raise_clear_errors(model, change, message):
    points, labels, _ = prompts()
    inputs = dict(
        image_embeddings=torch.randn(EMBED_SHAPE), input_points=points, input_labels=labels, labels=disk_labels()
    )
    inputs.update(change)
    with pytest.raises(ValueError, match=message):
        model(**inputs)


def test_absorbed_cross_attention_equals_projected_attention_with_gradients():
    """The PLM's cheap path for few prompt tokens is the same function as SamAttention, values and gradients."""
    from transformers.models.sam.configuration_sam import SamMaskDecoderConfig
    from transformers.models.sam.modeling_sam import SamAttention

    from sam_prompt_learner.modeling_prompt_learner import absorbed_cross_attention

    torch.manual_seed(0)
    config = SamMaskDecoderConfig(hidden_size=32, num_attention_heads=4, attention_downsample_rate=2)
    config._attn_implementation = "eager"
    attention = SamAttention(config)
    for parameter in attention.parameters():
        torch.nn.init.normal_(parameter, std=0.3)  # biases too: the key bias must drop out, the value bias stay
    query = torch.randn(2, 1, 3, 32)
    image, positional = torch.randn(2, 2, 1, 64, 32).unbind(0)

    def values_and_gradients(function):
        attention.zero_grad()
        output = function()
        (output * torch.linspace(-1, 1, output.numel(), dtype=output.dtype).view_as(output)).sum().backward()
        return output.detach(), {name: p.grad.clone() for name, p in attention.named_parameters()}

    projected, projected_grads = values_and_gradients(
        lambda: attention(query=query, key=image + positional, value=image)[0]
    )
    absorbed, absorbed_grads = values_and_gradients(
        lambda: absorbed_cross_attention(attention, query, image, positional)
    )
    # Outputs and gradients are of order 1-10; float32 summation order differs between the two paths.
    torch.testing.assert_close(absorbed, projected, rtol=1e-5, atol=1e-5)
    for name, gradient in projected_grads.items():  # the key bias: ~1e-6 on both paths (exactly 0 in exact arithmetic)
        torch.testing.assert_close(absorbed_grads[name], gradient, rtol=1e-5, atol=1e-5, msg=name)


def test_absorbed_cross_attention_is_chosen_for_few_prompt_tokens_at_sam_size():
    from transformers.models.sam.configuration_sam import SamMaskDecoderConfig
    from transformers.models.sam.modeling_sam import SamAttention

    from sam_prompt_learner.modeling_prompt_learner import absorbed_attention_is_cheaper

    attention = SamAttention(SamMaskDecoderConfig(hidden_size=256, num_attention_heads=8, attention_downsample_rate=2))
    assert absorbed_attention_is_cheaper(attention, num_queries=2, num_keys=64 * 64)  # one box at inference
    assert not absorbed_attention_is_cheaper(attention, num_queries=8 * 4, num_keys=64 * 64)  # a training batch


PLM_OPTIONS = {
    "pre_norm": dict(prompt_learner_norm_first=True),
    "gate": dict(prompt_learner_gate=True),
    "task_tokens": dict(prompt_learner_num_task_tokens=4),
    "dense": dict(prompt_learner_update_dense=True),
    "depth_2": dict(prompt_learner_depth=2),
    "mask_score_offsets": dict(prompt_learner_mask_score_offsets=True),
}


@pytest.mark.parametrize("option", list(PLM_OPTIONS))
def test_every_prompt_learner_option_is_sam_at_initialisation_and_trains(sam, sam_checkpoint, option):
    model = SamPromptLearnerModel.from_pretrained(sam_checkpoint, **PLM_OPTIONS[option])
    inputs = prompt_inputs("both")
    embeddings = torch.randn(EMBED_SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = sam(image_embeddings=embeddings, **inputs)
        untrained = model.eval()(image_embeddings=embeddings, **inputs)
    # The update is exactly zero, so the decoder reads SAM's own prompt (and dense) embeddings: bit-identical outputs.
    assert torch.equal(untrained.pred_masks, expected.pred_masks)
    assert torch.equal(untrained.iou_scores, expected.iou_scores)

    model.train().set_trainable(["prompt_learner"])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = disk_labels()
    losses = []
    for _ in range(8):
        loss = model(image_embeddings=embeddings, **inputs, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    # Every parameter of the option took part (a dead branch would keep its initial value).
    initial = SamPromptLearnerModel.from_pretrained(sam_checkpoint, **PLM_OPTIONS[option]).prompt_learner
    for name, parameter in model.prompt_learner.named_parameters():
        assert not torch.equal(parameter, initial.get_parameter(name)), name
    with torch.no_grad():
        trained = model.eval()(image_embeddings=embeddings, **inputs)
    assert not torch.allclose(trained.pred_masks, expected.pred_masks)

"""The prompt sampling and schedule of `examples/pretrain_tiny_sam.py` (pure functions; nothing is trained here)."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sam_prompt_learner.data.masks import mask_to_box

_SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "pretrain_tiny_sam.py"
_spec = importlib.util.spec_from_file_location("pretrain_tiny_sam", _SCRIPT)
pretrain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pretrain)


@pytest.fixture
def masks() -> torch.Tensor:
    """Four non-empty masks `(4, 24, 20)`: a rectangle, a single pixel, an L shape, and the full grid."""
    masks = torch.zeros(4, 24, 20, dtype=torch.bool)
    masks[0, 3:9, 5:16] = True
    masks[1, 20, 2] = True
    masks[2, 10:20, 4:6] = True
    masks[2, 18:20, 4:14] = True
    masks[3] = True
    return masks


def test_masks_to_boxes_matches_mask_to_box(masks):
    expected = np.stack([mask_to_box(mask.numpy()) for mask in masks])
    np.testing.assert_array_equal(pretrain.masks_to_boxes(masks).numpy(), expected)


def test_sampled_pixels_lie_on_their_mask(masks):
    points = pretrain.sample_mask_pixels(masks, 50, torch.Generator().manual_seed(0))  # (4, 50, 2) x, y
    assert points.shape == (4, 50, 2)
    x, y = points[..., 0].long(), points[..., 1].long()
    assert masks[torch.arange(4).unsqueeze(1), y, x].all()
    assert points[1].eq(torch.tensor([2.0, 20.0])).all()  # a one-pixel mask has one choice


def test_jittered_boxes_stay_ordered_inside_the_image_and_near_the_tight_box(masks):
    boxes = pretrain.masks_to_boxes(masks).repeat(50, 1)  # (200, 4)
    jittered = pretrain.jitter_boxes(boxes, 0.3, 24, torch.Generator().manual_seed(0))
    assert (jittered[:, :2] <= jittered[:, 2:]).all()
    assert (jittered >= 0).all() and (jittered <= 23).all()
    extent = (boxes[:, 2:] - boxes[:, :2] + 1).repeat(1, 2)
    assert ((jittered - boxes).abs() <= 0.3 * extent + 1e-5).all()
    assert not torch.equal(jittered, boxes)
    assert torch.equal(pretrain.jitter_boxes(boxes, 0.0, 24, torch.Generator()), boxes)


def test_multi_clicks_are_positive_on_the_mask_negative_near_it_and_at_least_two(masks):
    generator = torch.Generator().manual_seed(0)
    repeated = masks.repeat(40, 1, 1)  # (160, 24, 20)
    points, labels = pretrain.sample_multi_clicks(repeated, generator)
    assert points.shape == (160, 4, 2) and labels.shape == (160, 4)
    real = labels != pretrain.POINT_PAD_LABEL
    assert (real.sum(1) >= 2).all()
    assert (labels[:, :3] != 0).all() and (labels[:, 3] != 1).all()  # positives first, the negative last
    x, y = points[..., 0].long(), points[..., 1].long()
    on_mask = repeated[torch.arange(160).unsqueeze(1), y, x]  # (160, 4)
    assert on_mask[labels == 1].all() and not on_mask[labels == 0].any()
    assert (points[~real] == 0).all()
    # The full-grid mask has no background nearby, so it never gets a negative click; the others sometimes do.
    assert not (labels[3::4] == 0).any() and (labels == 0).any()
    boxes = pretrain.masks_to_boxes(repeated)
    margin = 0.2 * (boxes[:, 2:] - boxes[:, :2] + 1)
    negative = labels[:, 3] == 0
    assert (points[negative, 3] >= (boxes[negative, :2] - margin[negative])).all()
    assert (points[negative, 3] <= (boxes[negative, 2:] + margin[negative])).all()


def test_augment_moves_image_and_masks_together():
    generator = torch.Generator().manual_seed(0)
    image = torch.arange(3 * 8 * 8).view(3, 8, 8)
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 1, 2] = True
    masks[1, 5:, :3] = True
    for _ in range(16):
        moved_image, moved_masks = pretrain.augment(image, masks, generator)
        for original, moved in zip(masks, moved_masks, strict=True):
            # The marked pixels of each mask still carry the same image values.
            assert torch.equal(image[:, original].sort(dim=1).values, moved_image[:, moved].sort(dim=1).values)


def test_learning_rate_warms_up_linearly_then_decays_to_zero():
    factors = [pretrain.learning_rate_factor(step, 10, 110) for step in range(111)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0) and factors[10] == pytest.approx(1.0)
    assert factors[60] == pytest.approx(0.5) and factors[110] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert not math.isnan(pretrain.learning_rate_factor(5, 0, 0))


def test_positional_matrix_is_standard_normal_frozen_and_shared_with_the_prompt_encoder():
    args = pretrain.parse_args(["--vision_hidden_size", "32", "--vision_layers", "1", "--decoder_hidden_size", "32"])
    model = pretrain.SamModel(pretrain.build_config(args))
    pretrain.fix_positional_matrix(model, torch.Generator().manual_seed(0))
    matrix = model.shared_image_embedding.positional_embedding
    assert not matrix.requires_grad and matrix.abs().max() < 6  # the default has std hidden_size // 2 = 16
    assert model.prompt_encoder.shared_embedding.positional_embedding is matrix


def small_model_args(*extra: str):
    return pretrain.parse_args(
        ["--vision_hidden_size", "32", "--vision_layers", "1", "--decoder_hidden_size", "32", *extra]
    )


def test_aligned_cross_attention_routes_a_point_to_its_location():
    """With equal orthonormal query/key projections, the positional encoding of a point scores highest against the
    image positions around it; with transformers' init it does not (what the from-scratch plateau has to learn)."""
    model = pretrain.SamModel(pretrain.build_config(small_model_args()))
    generator = torch.Generator().manual_seed(0)
    pretrain.fix_positional_matrix(model, generator)
    image_pe = model.get_image_wide_positional_embeddings()[0]  # (C, E, E)
    size = image_pe.shape[-1]
    cells = torch.tensor([[2.5, 3.5], [11.5, 6.5], [8.5, 13.5]])  # (x, y) at cell centres of the E x E grid
    point_pe = model.prompt_encoder.shared_embedding(cells.view(1, 3, 2) / size)[0]  # (3, C)

    def peak_cells(attention) -> torch.Tensor:
        scores = attention.q_proj(point_pe) @ attention.k_proj(image_pe.flatten(1).T).T  # (3, E*E)
        index = scores.argmax(dim=1)
        return torch.stack([index % size, index // size], dim=1).float()

    attention = model.mask_decoder.transformer.layers[0].cross_attn_token_to_image
    assert (peak_cells(attention) - cells.floor()).abs().max() > 2  # transformers' init: unrelated peaks
    pretrain.align_cross_attention(model, 2.0, generator)
    for layer in model.mask_decoder.transformer.layers:
        for attention in (layer.cross_attn_token_to_image, layer.cross_attn_image_to_token):
            assert torch.equal(attention.q_proj.weight, attention.k_proj.weight)
            assert not attention.q_proj.bias.any() and not attention.k_proj.bias.any()
            gram = attention.q_proj.weight @ attention.q_proj.weight.T
            assert torch.allclose(gram, 4.0 * torch.eye(len(gram)), atol=1e-5)  # orthonormal rows, times 2
    final = model.mask_decoder.transformer.final_attn_token_to_image
    assert torch.equal(final.q_proj.weight, final.k_proj.weight)
    assert (peak_cells(attention) - cells.floor()).abs().max() <= 1


def test_a_rerun_reproduces_the_same_weights(tmp_path):
    """Same command, same seeds -> bit-identical checkpoints: the shipped model can be re-made (by steps, not time)."""
    command = [
        "--image_size", "32", "--vision_hidden_size", "32", "--vision_layers", "1", "--vision_heads", "2",
        "--decoder_hidden_size", "32", "--batch_size", "2", "--prompts_per_image", "2", "--num_train", "4",
        "--num_validation", "2", "--num_test", "0", "--max_steps", "3", "--warmup_steps", "1",
    ]  # fmt: skip
    weights = []
    for run, seed in (("first", "0"), ("second", "0"), ("other_seed", "1")):
        pretrain.main([*command, "--seed", seed, "--output_dir", str(tmp_path / run)])
        weights.append((tmp_path / run / "best" / "model.safetensors").read_bytes())
    assert weights[0] == weights[1]
    assert weights[0] != weights[2]  # the comparison can tell runs apart

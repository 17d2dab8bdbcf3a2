import json

import pytest
import torch
from peft import get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny import save_tiny_sam, tiny_config
from transformers import SamModel

from sam_prompt_learner import PromptLearnerConfig, SamPromptLearnerModel, sam_lora_config
from sam_prompt_learner.trained_parts import (
    TRAINED_PARTS_CONFIG_NAME,
    TRAINED_PARTS_WEIGHTS_NAME,
    load_trained_parts,
    save_trained_parts,
    trained_parts_base,
)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return save_tiny_sam(tmp_path_factory.mktemp("base-sam"))


@pytest.fixture(autouse=True)
def never_unpickle(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called: checkpoints must load from safetensors only")

    monkeypatch.setattr(torch, "load", refuse)


def model_inputs():
    generator = torch.Generator().manual_seed(1)
    return dict(
        pixel_values=torch.randn(1, 3, 128, 128, generator=generator),
        input_points=torch.rand(1, 2, 2, 2, generator=generator) * 128,
        input_labels=torch.tensor([[[1, 0], [1, 1]]]),
    )


def adapted_model(base_dir, parts, seed=0):
    """The base with `parts` changed as training would change them (random perturbations, PLM output included)."""
    model = SamPromptLearnerModel.from_pretrained(base_dir)
    model.set_trainable(parts)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize(
    "parts", [("prompt_learner", "point_matching_head"), ("prompt_learner", "point_matching_head", "mask_decoder")]
)
def test_round_trip_reproduces_the_full_model(base_dir, tmp_path, parts):
    model = adapted_model(base_dir, parts)
    model.save_pretrained(tmp_path / "full")
    save_trained_parts(model, tmp_path / "parts", parts)

    saved = load_file(tmp_path / "parts" / TRAINED_PARTS_WEIGHTS_NAME)
    expected_keys = {name for name in model.state_dict() if name.split(".")[0] in parts}
    assert set(saved) == expected_keys
    assert all(torch.equal(saved[name], model.state_dict()[name]) for name in saved)
    full_size = (tmp_path / "full" / "model.safetensors").stat().st_size
    parts_size = (tmp_path / "parts" / TRAINED_PARTS_WEIGHTS_NAME).stat().st_size
    tensor_bytes = sum(tensor.numel() * tensor.element_size() for tensor in saved.values())
    assert parts_size < tensor_bytes + 256 * len(saved)  # the trained tensors and their header entries only
    # The tiny SAM's decoder is a large share of it; in a real SAM (90+ M parameters) the ratio is far smaller.
    assert parts_size < (0.6 if "mask_decoder" in parts else 0.2) * full_size
    record = json.loads((tmp_path / "parts" / TRAINED_PARTS_CONFIG_NAME).read_text())
    assert record["base_model_name_or_path"] == str(base_dir)
    assert record["parts"] == list(parts)
    assert record["prompt_learner_config"]["prompt_learner_mlp_dim"] == model.config.prompt_learner_mlp_dim

    loaded = load_trained_parts(tmp_path / "parts")
    assert type(loaded) is SamPromptLearnerModel and not loaded.training
    base_state = SamPromptLearnerModel.from_pretrained(base_dir).state_dict()
    for name, tensor in loaded.state_dict().items():
        source = saved if name in saved else base_state  # every other tensor stays exactly the base's
        assert torch.equal(tensor, source[name]), name
    with torch.no_grad():
        expected, actual = model(**model_inputs()), loaded(**model_inputs())
    assert torch.equal(actual.pred_masks, expected.pred_masks)
    assert torch.equal(actual.iou_scores, expected.iou_scores)
    assert not torch.equal(expected.pred_masks, SamModel.from_pretrained(base_dir)(**model_inputs()).pred_masks)


def test_non_default_prompt_learner_config_is_restored(tmp_path):
    base_dir = save_tiny_sam(tmp_path / "base")
    model = SamPromptLearnerModel.from_pretrained(base_dir, prompt_learner_depth=2, num_boundary_points=8)
    save_trained_parts(model, tmp_path / "parts", ["prompt_learner", "point_matching_head"])
    loaded = load_trained_parts(tmp_path / "parts")
    assert (loaded.config.prompt_learner_depth, loaded.config.num_boundary_points) == (2, 8)
    assert len(loaded.prompt_learner.layers) == 2


def test_base_override_and_recorded_base(base_dir, tmp_path):
    model = adapted_model(base_dir, ["prompt_learner"])
    save_trained_parts(model, tmp_path / "parts", ["prompt_learner"], base_model_name_or_path="someone/moved-sam")
    assert trained_parts_base(tmp_path / "parts") == "someone/moved-sam"
    loaded = load_trained_parts(tmp_path / "parts", base_model_name_or_path=str(base_dir))
    with torch.no_grad():
        assert torch.equal(loaded(**model_inputs()).pred_masks, model(**model_inputs()).pred_masks)


def test_mismatched_base_raises(base_dir, tmp_path):
    save_trained_parts(adapted_model(base_dir, ["prompt_learner"]), tmp_path / "parts", ["prompt_learner"])
    wider = tiny_config(initializer_range=0.2)  # the same SAM with 64 channels instead of 32
    wider.vision_config.output_channels = 64
    wider.vision_config.num_pos_feats = 32
    wider.prompt_encoder_config.hidden_size = 64
    wider.mask_decoder_config.hidden_size = 64
    SamModel(wider).save_pretrained(tmp_path / "wider-sam")
    with pytest.raises(ValueError, match=r"prompt_learner\..* has shape .* another SAM"):
        load_trained_parts(tmp_path / "parts", base_model_name_or_path=str(tmp_path / "wider-sam"))


def test_file_with_missing_or_extra_tensors_raises(base_dir, tmp_path):
    save_trained_parts(adapted_model(base_dir, ["prompt_learner"]), tmp_path / "parts", ["prompt_learner"])
    path = tmp_path / "parts" / TRAINED_PARTS_WEIGHTS_NAME
    tensors = load_file(path)
    dropped = sorted(tensors)[0]
    save_file({name: t for name, t in tensors.items() if name != dropped}, path)
    with pytest.raises(ValueError, match=f"missing \\['{dropped}'\\]"):
        load_trained_parts(tmp_path / "parts")
    save_file({**tensors, "vision_encoder.neck.conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="unexpected \\['vision_encoder.neck.conv1.weight'\\]"):
        load_trained_parts(tmp_path / "parts")


def test_unsupported_parts_and_malformed_config_raise(base_dir, tmp_path):
    model = adapted_model(base_dir, ["prompt_learner"])
    with pytest.raises(ValueError, match="save it in full"):
        save_trained_parts(model, tmp_path / "parts", ["prompt_learner", "vision_encoder"])
    with pytest.raises(ValueError, match="base is unknown"):
        save_trained_parts(
            SamPromptLearnerModel(tiny_config(PromptLearnerConfig)), tmp_path / "parts", ["prompt_learner"]
        )
    save_trained_parts(model, tmp_path / "parts", ["prompt_learner"])
    config_path = tmp_path / "parts" / TRAINED_PARTS_CONFIG_NAME
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "parts": ["prompt_encoder"]}))
    with pytest.raises(ValueError, match="`parts` must be distinct names among"):
        load_trained_parts(tmp_path / "parts")
    with pytest.raises(ValueError, match="neither"):
        load_trained_parts(tmp_path)


def test_peft_adapter_directory_loads_with_the_same_call(base_dir, tmp_path):
    torch.manual_seed(0)
    model = get_peft_model(SamPromptLearnerModel.from_pretrained(base_dir), sam_lora_config(rank=2))
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:  # LoRA B starts at zero and the PLM as the identity: move both
                parameter.add_(0.1 * torch.randn_like(parameter))
    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    assert not list((tmp_path / "adapter").glob("*.bin"))
    with safe_open(tmp_path / "adapter" / "adapter_model.safetensors", "pt") as handle:
        assert all("lora_" in key or "prompt_learner" in key or "point_matching_head" in key for key in handle.keys())

    loaded = load_trained_parts(tmp_path / "adapter")
    assert type(loaded) is SamPromptLearnerModel
    with torch.no_grad():
        expected, actual = model(**model_inputs()).pred_masks, loaded(**model_inputs()).pred_masks
    assert torch.allclose(actual, expected, atol=1e-4)  # merging LoRA into the weights rounds differently
    assert not torch.allclose(expected, SamModel.from_pretrained(base_dir)(**model_inputs()).pred_masks, atol=1e-2)
    with pytest.raises(ValueError, match="save_pretrained"):
        save_trained_parts(model, tmp_path / "parts", ["prompt_learner"])

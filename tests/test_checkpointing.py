import pytest
import torch
from accelerate import Accelerator

from sam_prompt_learner.checkpointing import (
    CheckpointError,
    TrainingState,
    checkpoint_dirs,
    load_checkpoint,
    resolve_checkpoint,
    resume,
    save_checkpoint,
)


@pytest.fixture()
def accelerator_and_model():
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model, optimizer


def step(model, optimizer):
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_checkpoints_round_trip_and_only_the_newest_are_kept(accelerator_and_model, tmp_path):
    accelerator, model, optimizer = accelerator_and_model
    for completed in (10, 20, 30):
        step(model, optimizer)
        save_checkpoint(
            accelerator, tmp_path, TrainingState(completed_steps=completed, epoch=1, batches_done_in_epoch=3)
        )
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["step_000000020", "step_000000030"]
    saved = model.weight.detach().clone()
    step(model, optimizer)
    assert not torch.equal(model.weight, saved)
    checkpoint, state = resume(accelerator, tmp_path, "latest")
    assert checkpoint.name == "step_000000030"
    assert torch.equal(model.weight, saved)
    assert (state.completed_steps, state.epoch, state.batches_done_in_epoch) == (30, 1, 3)


def test_a_write_killed_midway_never_looks_like_a_checkpoint(accelerator_and_model, tmp_path, monkeypatch):
    accelerator, model, optimizer = accelerator_and_model
    first = save_checkpoint(accelerator, tmp_path, TrainingState(completed_steps=10))
    original_save_state = accelerator.save_state

    def interrupted_save_state(output_dir, **kwargs):
        original_save_state(output_dir, **kwargs)  # the files are written...
        raise KeyboardInterrupt  # ...but the process dies before the checkpoint is complete

    monkeypatch.setattr(accelerator, "save_state", interrupted_save_state)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(accelerator, tmp_path, TrainingState(completed_steps=20))
    assert resume(accelerator, tmp_path, "latest")[0] == first
    assert any(p.name.startswith(".tmp-") for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_checkpoint(tmp_path, str(tmp_path / "checkpoints" / ".tmp-step_000000020"))

    monkeypatch.setattr(accelerator, "save_state", original_save_state)
    save_checkpoint(accelerator, tmp_path, TrainingState(completed_steps=20))  # cleans up the leftover
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000000010", "step_000000020"]


def test_latest_without_checkpoints_starts_fresh(accelerator_and_model, tmp_path):
    accelerator, _, _ = accelerator_and_model
    assert resume(accelerator, tmp_path, "latest") == (None, TrainingState())


def test_latest_skips_a_truncated_checkpoint_with_a_warning_and_loads_the_one_before(
    accelerator_and_model, tmp_path, caplog
):
    accelerator, model, optimizer = accelerator_and_model
    step(model, optimizer)
    save_checkpoint(accelerator, tmp_path, TrainingState(completed_steps=10))
    weights_at_10 = model.weight.detach().clone()
    step(model, optimizer)
    newest = save_checkpoint(accelerator, tmp_path, TrainingState(completed_steps=20))
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a disk that filled up, a bad copy

    checkpoint, state = resume(accelerator, tmp_path, "latest")
    assert checkpoint.name == "step_000000010" and state.completed_steps == 10
    assert torch.equal(model.weight, weights_at_10)
    assert "step_000000020 does not load" in caplog.text
    with pytest.raises(CheckpointError, match="step_000000020 does not load"):
        resume(accelerator, tmp_path, str(newest))  # a checkpoint named explicitly must load


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_an_rng_state_that_does_not_load_is_an_error(accelerator_and_model, tmp_path, damage):
    accelerator, model, optimizer = accelerator_and_model
    checkpoint = save_checkpoint(accelerator, tmp_path, TrainingState(completed_steps=10))
    rng_file = checkpoint / "random_states_0.pkl"
    if damage == "truncate":
        rng_file.write_bytes(rng_file.read_bytes()[:50])
    else:
        rng_file.unlink()
    with pytest.raises(CheckpointError, match="random_states_0.pkl"):
        load_checkpoint(accelerator, checkpoint)
    with pytest.raises(CheckpointError, match="No checkpoint loads"):
        resume(accelerator, tmp_path, "latest")


def test_the_evaluation_history_is_part_of_the_checkpoint(accelerator_and_model, tmp_path):
    accelerator, _, _ = accelerator_and_model
    history = [{"step": 5, "mean_iou": 0.25}, {"step": 10, "mean_iou": 0.5}]
    checkpoint = save_checkpoint(accelerator, tmp_path, TrainingState(completed_steps=10, history=history))
    assert load_checkpoint(accelerator, checkpoint).history == history

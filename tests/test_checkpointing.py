import pytest
import torch
from accelerate import Accelerator

from sam_prompt_learner.checkpointing import (
    TrainingState,
    checkpoint_dirs,
    load_checkpoint,
    resolve_checkpoint,
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
    state = load_checkpoint(accelerator, resolve_checkpoint(tmp_path, "latest"))
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
    assert resolve_checkpoint(tmp_path, "latest") == first
    assert any(p.name.startswith(".tmp-") for p in (tmp_path / "checkpoints").iterdir())
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_checkpoint(tmp_path, str(tmp_path / "checkpoints" / ".tmp-step_000000020"))

    monkeypatch.setattr(accelerator, "save_state", original_save_state)
    save_checkpoint(accelerator, tmp_path, TrainingState(completed_steps=20))  # cleans up the leftover
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000000010", "step_000000020"]


def test_latest_without_checkpoints_starts_fresh(tmp_path):
    assert resolve_checkpoint(tmp_path, "latest") is None

"""Helpers of the benchmark scripts whose figures land in BENCHMARKS.md."""

import importlib.util
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_grid_keeps_what_its_cells_resolve_and_loses_what_is_smaller():
    by_size = load_benchmark("pretraining_by_size")
    masks = torch.zeros(2, 128, 128, dtype=torch.bool)
    masks[0, 16:48, 32:64] = True  # 32 x 32 px on the 8-px cells of a 16 x 16 grid
    masks[1, 60:62, 60:62] = True  # 2 x 2 px: a quarter of a 16 x 16 grid's cell side
    coarse, fine = by_size.grid_round_trip_iou(masks, 16), by_size.grid_round_trip_iou(masks, 64)
    assert coarse[0] > 0.9 and coarse[1] == 0  # the small square vanishes through 8-px cells
    assert fine[1] == 1  # ... and survives 2-px cells whole

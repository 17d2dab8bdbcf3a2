"""What a pre-training step of the tiny SAM costs per geometry: seconds per step and steps per minute.

Before a new pre-training run changes the geometry (a finer embedding grid, wider or deeper parts) or the objects
decoded per image, this says what each step costs on the machine at hand, so a run's steps can be planned against
the session's time. Each geometry is `PretrainingConfig` with the named fields changed; its steps are
`training_step` + backward + AdamW, on scenes rendered once, after a few untimed warm-up steps:

    .venv/bin/python benchmarks/pretraining_step_cost.py --num_threads 2 \
        --output benchmarks/results/pretraining/step_cost-cpu.json
    # on a lent GPU (tools/device): larger batches in bf16
    python benchmarks/pretraining_step_cost.py --device cuda --bf16 --batch_sizes 16 64 256 --num_threads 16

Run it with nothing else on the machine: the figures are wall times.
"""

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from sam_prompt_learner import processor_for_config
from sam_prompt_learner.pretraining import PretrainingConfig, init_model
from sam_prompt_learner.pretraining.recipe import training_step
from sam_prompt_learner.pretraining.scenes import render_scenes

# name: the PretrainingConfig fields it changes (the rest are the defaults: 128 px, patch 8, widths 128 / 64, one
# object per image and prompt kind); `prompts_*` keep the geometry and decode more objects per encoded image.
GEOMETRIES = {
    "default": {},
    "decoder_128": {"decoder_hidden_size": 128},
    "encoder_256": {"vision_hidden_size": 256},
    "wide": {"vision_hidden_size": 256, "decoder_hidden_size": 128},
    "deep_8": {"vision_layers": 8},
    "patch_4": {"patch_size": 4},
    "prompts_4": {"prompts_per_image": 4},
    "prompts_8": {"prompts_per_image": 8},
}


def time_steps(config: PretrainingConfig, banks, device: str, bf16: bool, warmup: int, steps: int) -> tuple[float, int]:
    """Mean wall seconds of one optimisation step after `warmup` untimed ones, and the model's parameter count."""
    model = init_model(config).to(device)
    processor = processor_for_config(model.config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    # Past the curriculum's ramp, so the batch mix is the run's usual one.
    step_index = config.curriculum_steps
    for index in range(warmup + steps):
        if index == warmup:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            loss = training_step(model, banks, processor, step_index, config, generator)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--geometries", nargs="+", default=list(GEOMETRIES), choices=list(GEOMETRIES))
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[16])
    parser.add_argument("--steps", type=int, default=20, help="Timed steps per geometry (patch_4 takes a quarter).")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--num_images", type=int, default=200, help="Scenes rendered per task to sample from.")
    parser.add_argument("--num_threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)

    rows = []
    banks_by_size = {}
    for name in args.geometries:
        for batch_size in args.batch_sizes:
            config = PretrainingConfig(**GEOMETRIES[name], batch_size=batch_size)
            if config.image_size not in banks_by_size:
                requests = [(task, "train", args.num_images) for task in config.tasks]
                banks_by_size[config.image_size] = render_scenes(requests, config.image_size, config.data_seed)
            steps = max(2, args.steps // 4) if config.patch_size < 8 else args.steps
            seconds, parameters = time_steps(
                config, banks_by_size[config.image_size], args.device, args.bf16, args.warmup, steps
            )
            rows.append({"geometry": name, "changes": GEOMETRIES[name], "batch_size": batch_size,
                         "parameters": parameters, "timed_steps": steps, "seconds_per_step": round(seconds, 4),
                         "steps_per_minute": round(60 / seconds, 1)})  # fmt: skip
            print(f"{name:<12} batch {batch_size:>4}  {parameters / 1e6:5.2f} M parameters  "
                  f"{seconds * 1000:8.0f} ms/step  {60 / seconds:7.1f} steps/min", flush=True)  # fmt: skip
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        settings = {key: value for key, value in vars(args).items() if key != "output"}
        defaults = asdict(PretrainingConfig())
        args.output.write_text(json.dumps({"settings": settings, "defaults": defaults, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

"""Speed and memory of prompt learning on cached embeddings against the usual SAM fine-tuning recipe.

Measured in one run, at up to three geometries (random weights: the cost of a step does not depend on the values):

- `vit_b`: facebook/sam-vit-base (1024 px input, patch 16, vision 768 hidden x 12 layers x 12 heads, global attention
  at layers 2, 5, 8, 11, windowed elsewhere; 256-channel 64 x 64 embeddings; decoder 256 hidden);
- `tiny`: the package's tiny SAM, `sam_prompt_learner.pretraining.PretrainingConfig`'s default geometry (128 px,
  patch 8, vision 128 hidden x 4 layers; 64-channel 16 x 16 embeddings; decoder 64 hidden);
- `sam2_hiera_tiny`: facebook/sam2.1-hiera-tiny (`Sam2Config()`'s defaults, which transformers documents as that
  checkpoint's: 1024 px, Hiera 96 wide with stages of 1, 2, 7, 2 blocks and global attention at blocks 5, 7, 9; FPN
  256; the decoder reads 256 x 64 x 64 embeddings plus 32 x 256 x 256 and 64 x 128 x 128 high-resolution features),
  with `Sam2Model` / `Sam2PromptLearnerModel` in place of `SamModel` / `SamPromptLearnerModel`. Its notebook recipe is
  the one transformers' mask-generation guide uses for SAM 2.1: the mask decoder fine-tuned, the image encoder frozen
  but run at every step.

Random weights are drawn at the scale of trained ones (vision `initializer_range=0.02`, see `sam_config`).

Every training step is one image with `P` box prompts (one mask each), followed by an AdamW step:

- notebook: the common fine-tuning notebook (NielsRogge's "Fine-tune SAM on a custom dataset"): `SamModel` with the
  vision and prompt encoders frozen runs the image encoder on `pixel_values` at every step, single-mask output, BCE +
  dice loss (a stand-in for its MONAI `DiceCELoss`), the mask decoder trained;
- cached: this package, `SamPromptLearnerModel(image_embeddings=..., labels=...)` on embeddings read from the cache,
  multimask output and the package's full loss (focal, dice, IoU, point matching, boundary band), the prompt learner
  and the point-matching head trained (the package's default);
- floor: the notebook's step without the encoder, i.e. `SamModel`'s prompt encoder + mask decoder forward and backward
  on the same cached embeddings, decoder trained, BCE + dice: the least a step on cached embeddings can cost.

Plus the prompt-to-mask latency (no gradient, one box, multimask output) with the prompt learner
(`PromptLearnerConfig()` defaults) and without (`prompt_learner_depth=0, use_point_matching_head=False`), from cached
embeddings and end to end from `pixel_values`; and the images/s of `build_embedding_cache` against the bare encoder
forward on the same images and batch size, plus the time to read one row's embeddings back from the cache.

Method: each measurement runs in its own fresh process, so peak memories do not mix, with `torch.set_num_threads` as
given. Each timed step runs `warmup` times, then `iterations` times with `time.perf_counter`; steps compared with each
other (cached vs floor, with vs without the prompt learner, cache build vs bare encoder) alternate within one process
so that load changes on a shared machine hit both alike. Reported: the median (and min / max) per step. Peak memory of
a training recipe is taken over its warm-up steps: on CPU the peak resident set size (`VmHWM` of `/proc/self/status`,
reset through `/proc/self/clear_refs` once the model and inputs are built, so Linux only), on GPU
`torch.cuda.max_memory_allocated`. When CUDA is available everything also runs on the GPU under bfloat16 autocast.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/throughput.py --num_threads 1
    .venv/bin/python benchmarks/throughput.py --quick   # tiny geometry only, few iterations: a check that it runs
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import json
import logging
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from transformers import PreTrainedConfig, Sam2Config, Sam2Model, SamConfig, SamModel

from sam_prompt_learner import processor_for_config, prompt_learner_class_for
from sam_prompt_learner.data import build_embedding_cache
from sam_prompt_learner.image_features import image_feature_inputs, image_feature_shapes
from sam_prompt_learner.losses import dice_loss
from sam_prompt_learner.pretraining import PretrainingConfig, build_sam_config

logger = logging.getLogger("throughput")

REPO_ROOT = Path(__file__).resolve().parent.parent
GEOMETRIES = ("vit_b", "tiny", "sam2_hiera_tiny")
DEFAULT_GEOMETRIES = ("vit_b", "tiny")

# The project's goals (issue "Benchmarks", section "Goals"): cached training >= 50x the notebook's samples/s at ViT-B,
# our step <= 1.3x the floor, the prompt learner adding <= 5% to the prompt-to-mask latency.
GOAL_CACHE_SPEEDUP = 50.0
GOAL_STEP_OVER_FLOOR = 1.3
GOAL_PLM_OVERHEAD = 0.05


@dataclass(frozen=True)
class MeasurementPlan:
    """How many times each step runs, per geometry.

    Args:
        step_warmup / step_iterations: untimed and timed runs of training steps on cached embeddings.
        latency_iterations: timed prompt-to-mask predictions from cached embeddings (after `step_warmup`); cheap, so
            many, since the prompt learner's share is a few percent and single runs vary by more.
        encoder_warmup / encoder_iterations: the same for steps that run the image encoder.
        cache_images / cache_batch_size: images encoded per cache build, and the batch size of both cache paths.
        cache_repeats: timed runs of the cache build and of the bare encoder pass over all `cache_images`.
    """

    step_warmup: int
    step_iterations: int
    latency_iterations: int
    encoder_warmup: int
    encoder_iterations: int
    cache_images: int
    cache_batch_size: int
    cache_repeats: int


# At ViT-B one encoder forward takes 10-20 s on one CPU thread, so encoder-bound steps run only a few times.
ENCODER_BOUND_PLAN = MeasurementPlan(
    step_warmup=2,
    step_iterations=10,
    latency_iterations=60,
    encoder_warmup=1,
    encoder_iterations=3,
    cache_images=2,
    cache_batch_size=2,
    cache_repeats=1,
)
PLANS = {
    "vit_b": ENCODER_BOUND_PLAN,
    # Its encoder-bound steps took 33-42 s on one loaded CPU thread (2026-12-01): the same few runs.
    "sam2_hiera_tiny": ENCODER_BOUND_PLAN,
    "tiny": MeasurementPlan(
        step_warmup=5,
        step_iterations=30,
        latency_iterations=200,
        encoder_warmup=3,
        encoder_iterations=20,
        cache_images=64,
        cache_batch_size=8,
        cache_repeats=3,
    ),
}
QUICK_PLAN = MeasurementPlan(
    step_warmup=1,
    step_iterations=3,
    latency_iterations=3,
    encoder_warmup=1,
    encoder_iterations=3,
    cache_images=8,
    cache_batch_size=4,
    cache_repeats=1,
)


MEASUREMENTS = ("training", "latency", "cache")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--geometries", nargs="+", choices=GEOMETRIES, default=list(DEFAULT_GEOMETRIES))
    parser.add_argument(
        "--num_prompts", type=int, nargs="+", default=[1, 8], help="Prompts per image (P) of the training steps."
    )
    parser.add_argument(
        "--num_threads", type=int, default=None, help="torch.set_num_threads in every process (default: torch's)."
    )
    parser.add_argument("--quick", action="store_true", help="Tiny geometry only, few iterations.")
    parser.add_argument(
        "--measurements", nargs="+", choices=MEASUREMENTS, default=list(MEASUREMENTS), help="Default: all of them."
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="Results JSON (default: benchmarks/results/throughput-cpu.json, or -cuda.json when a GPU is present).",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.geometries = ["tiny"]
    return args


# ----------------------------------------------------------------------------------------------------------------
# models and inputs


def sam_config(geometry: str) -> SamConfig | Sam2Config:
    """The base config of a geometry (see the module docstring)."""
    if geometry == "sam2_hiera_tiny":
        return Sam2Config()
    if geometry == "vit_b":
        # facebook/sam-vit-base's vision config. transformers' `SamVisionConfig()` defaults hold these same values
        # (although its docstring names vit-huge, which is 1280 hidden x 32 layers x 16 heads); they are written out
        # so that the geometry does not depend on those defaults. The prompt encoder and mask decoder defaults are
        # those of every SAM size.
        return SamConfig(
            vision_config=dict(
                hidden_size=768,
                num_hidden_layers=12,
                num_attention_heads=12,
                global_attn_indexes=[2, 5, 8, 11],
                window_size=14,
                image_size=1024,
                patch_size=16,
                output_channels=256,
                mlp_dim=3072,
                # transformers' default (1e-10) is meant to be overwritten by loaded weights. Left as is, it makes the
                # tokens of the zero padding below an image denormal floats, and CPU encoding 9x slower (124 s
                # against 14 s for one padded 1024 px image on one thread, measured here): trained weights have the
                # scale of this init.
                initializer_range=0.02,
            )
        )
    # The tiny model's pre-training recipe is the source of truth for its geometry.
    return build_sam_config(PretrainingConfig())


def base_model(config: PreTrainedConfig) -> SamModel | Sam2Model:
    """transformers' own model of the config's family, random weights."""
    return Sam2Model(config) if isinstance(config, Sam2Config) else SamModel(config)


def prompt_learner_model(config: PreTrainedConfig, **prompt_learner_fields) -> torch.nn.Module:
    """The family's prompt-learner model with the geometry of `config` and the given prompt-learner fields."""
    model_class = prompt_learner_class_for(config)
    return model_class(prompt_learner_config(model_class.config_class, config, **prompt_learner_fields))


def prompt_learner_config(config_class, config: PreTrainedConfig, **prompt_learner_fields) -> PreTrainedConfig:
    """A prompt-learner config of `config_class` with the base geometry of `config`."""
    return config_class(
        vision_config=config.vision_config.to_dict(),
        prompt_encoder_config=config.prompt_encoder_config.to_dict(),
        mask_decoder_config=config.mask_decoder_config.to_dict(),
        **prompt_learner_fields,
    )


def random_image_features(config: PreTrainedConfig, device: torch.device) -> dict[str, Any]:
    """Random cached image features as the model takes them (`image_embeddings=`, a list of three for SAM 2)."""
    shapes = image_feature_shapes(config)
    return image_feature_inputs({column: torch.randn(1, *shape, device=device) for column, shape in shapes.items()})


def input_size(config: PreTrainedConfig) -> int:
    """Side of the square input frame (SAM 2's vision config has no `image_size`; the prompt encoder's is the same)."""
    return config.prompt_encoder_config.image_size


def box_prompts(config: SamConfig, num_prompts: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`num_prompts` random boxes in the padded input frame, each with the ellipse inscribed in it as ground truth.

    Returns:
        input_boxes `(1, P, 4)` float `x0, y0, x1, y1` in input pixels; labels `(1, P, 4E, 4E)` float in {0, 1}, at the
        mask-logit resolution (so no resize enters the loss).
    """
    image_size = input_size(config)
    mask_size = 4 * (image_size // config.prompt_encoder_config.patch_size)
    centres = (0.2 + 0.6 * torch.rand(num_prompts, 2, generator=generator)) * image_size  # (P, 2) x, y
    half_sizes = (0.05 + 0.15 * torch.rand(num_prompts, 2, generator=generator)) * image_size  # (P, 2)
    input_boxes = torch.cat([centres - half_sizes, centres + half_sizes], dim=1).unsqueeze(0)  # (1, P, 4)
    pixel_centres = (torch.arange(mask_size) + 0.5) * image_size / mask_size  # (4E,) in input pixels
    dx = (pixel_centres.view(1, 1, -1) - centres[:, 0, None, None]) / half_sizes[:, 0, None, None]  # (P, 1, 4E)
    dy = (pixel_centres.view(1, -1, 1) - centres[:, 1, None, None]) / half_sizes[:, 1, None, None]  # (P, 4E, 1)
    labels = (dx**2 + dy**2 <= 1.0).float().unsqueeze(0)  # (1, P, 4E, 4E)
    return input_boxes, labels


def notebook_loss(pred_masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE + dice of single-mask logits `(1, P, 1, h, w)` against `(1, P, h, w)` masks (the notebook's DiceCE)."""
    logits = pred_masks[:, :, 0].flatten(0, 1).float()  # (P, h, w)
    targets = labels.flatten(0, 1)
    return F.binary_cross_entropy_with_logits(logits, targets) + dice_loss(logits, targets).mean()


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


# ----------------------------------------------------------------------------------------------------------------
# timing and memory


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    steps: dict[str, Callable[[], Any]], warmup: int, iterations: int, device: torch.device
) -> dict[str, dict[str, Any]]:
    """Run every step `warmup` times, then `iterations` rounds in which each step runs once, timed, in turn.

    Returns, per step name: the median, min and max seconds and the number of timed runs.
    """
    for _ in range(warmup):
        for step in steps.values():
            step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(iterations):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return {
        name: {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values), "runs": len(values)}
        for name, values in seconds.items()
    }


def _proc_status_mib(field: str) -> float:
    """A memory field (`VmRSS`, `VmHWM`) of `/proc/self/status`, in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024  # the kernel reports kB
    raise RuntimeError(f"/proc/self/status has no {field} field.")


def reset_peak_memory(device: torch.device) -> float:
    """Restart peak-memory tracking; returns the memory in use now (resident set on CPU, allocated on GPU), MiB."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    # Writing 5 to clear_refs resets VmHWM (the peak resident set) to the current resident set (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return _proc_status_mib("VmRSS")


def peak_memory(device: torch.device) -> float:
    """Peak memory since the last `reset_peak_memory`, MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _proc_status_mib("VmHWM")


def measured_memory(device: torch.device, step: Callable[[], Any], runs: int) -> dict[str, float]:
    """Run `step` `runs` times; returns the memory in use before and the peak during them, MiB."""
    before = reset_peak_memory(device)
    for _ in range(runs):
        step()
    synchronize(device)
    return {"before_mib": before, "peak_mib": peak_memory(device)}


def precision(device: torch.device) -> contextlib.AbstractContextManager:
    """float32 on CPU; bfloat16 autocast on GPU (what `accelerate --mixed_precision bf16` does)."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------------------------
# measurements, each run in a fresh process by `run_isolated`


def _start_worker(device_name: str, num_threads: int | None) -> torch.device:
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    torch.manual_seed(0)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    return torch.device(device_name)


def notebook_step(model: SamModel | Sam2Model, optimizer, device, labels: torch.Tensor, **inputs) -> Callable[[], None]:
    """One training step of the notebook recipe (single-mask output, BCE + dice) on `inputs`: `pixel_values` for the
    recipe itself, the cached image features for its decoder-only floor."""

    def step():
        with precision(device):
            outputs = model(**inputs, multimask_output=False)
            loss = notebook_loss(outputs.pred_masks, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure_notebook_training(
    geometry: str, num_prompts: int, plan: MeasurementPlan, device_name: str, num_threads: int | None
) -> dict[str, Any]:
    """Training steps of the notebook recipe: the frozen image encoder runs on `pixel_values` at every step."""
    device = _start_worker(device_name, num_threads)
    config = sam_config(geometry)
    model = base_model(config).to(device).train()
    # The notebook freezes both encoders; with no parameter requiring gradients, autograd records nothing in the
    # image encoder, which therefore costs what it costs under `torch.no_grad()`.
    model.requires_grad_(False)
    model.mask_decoder.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-5)
    image_size = input_size(config)
    pixel_values = torch.randn(1, 3, image_size, image_size, device=device)
    input_boxes, labels = (t.to(device) for t in box_prompts(config, num_prompts, torch.Generator().manual_seed(0)))

    step = notebook_step(model, optimizer, device, labels, pixel_values=pixel_values, input_boxes=input_boxes)
    memory = measured_memory(device, step, plan.encoder_warmup)
    timing = time_interleaved({"notebook": step}, 0, plan.encoder_iterations, device)["notebook"]
    return {
        "step": timing,
        "memory": memory,
        "trainable_parameters": sum(p.numel() for p in trainable_parameters(model)),
    }


def measure_cached_training(
    geometry: str, num_prompts: int, plan: MeasurementPlan, device_name: str, num_threads: int | None
) -> dict[str, Any]:
    """Training steps on cached embeddings: this package's (prompt learner + head) and the floor (plain decoder)."""
    device = _start_worker(device_name, num_threads)
    config = sam_config(geometry)
    image_features = random_image_features(config, device)
    input_boxes, labels = (t.to(device) for t in box_prompts(config, num_prompts, torch.Generator().manual_seed(0)))

    model = prompt_learner_model(config).to(device).train()  # PLM + head trainable
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=1e-3)

    def cached_step():
        with precision(device):
            loss = model(**image_features, input_boxes=input_boxes, labels=labels, multimask_output=True).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # Peak memory first, before the floor's model exists: only this package's recipe is in memory.
    memory = measured_memory(device, cached_step, plan.step_warmup)

    floor_model = base_model(config).to(device).train()
    floor_model.requires_grad_(False)
    floor_model.mask_decoder.requires_grad_(True)
    floor_optimizer = torch.optim.AdamW(trainable_parameters(floor_model), lr=1e-5)

    floor_step = notebook_step(floor_model, floor_optimizer, device, labels, **image_features, input_boxes=input_boxes)
    timing = time_interleaved(
        {"cached": cached_step, "floor": floor_step}, plan.step_warmup, plan.step_iterations, device
    )
    return {
        "cached_step": timing["cached"],
        "floor_step": timing["floor"],
        "memory": memory,
        "trainable_parameters": sum(p.numel() for p in trainable_parameters(model)),
        "floor_trainable_parameters": sum(p.numel() for p in trainable_parameters(floor_model)),
    }


def measure_latency(
    geometry: str, with_encoder: bool, plan: MeasurementPlan, device_name: str, num_threads: int | None
) -> dict[str, Any]:
    """Prompt-to-mask latency of one box prompt, with and without the prompt learner, from cached embeddings or from
    `pixel_values` (`with_encoder`)."""
    device = _start_worker(device_name, num_threads)
    config = sam_config(geometry)
    with_plm = prompt_learner_model(config).to(device).eval()
    without_plm = prompt_learner_model(config, prompt_learner_depth=0, use_point_matching_head=False).to(device).eval()
    input_boxes, _ = box_prompts(config, 1, torch.Generator().manual_seed(0))
    image_size = input_size(config)
    if with_encoder:
        image_inputs = {"pixel_values": torch.randn(1, 3, image_size, image_size, device=device)}
    else:
        image_inputs = random_image_features(config, device)
    inputs = {**image_inputs, "input_boxes": input_boxes.to(device), "multimask_output": True}

    def predictor(model: torch.nn.Module) -> Callable[[], Any]:
        def predict():
            with torch.inference_mode(), precision(device):
                return model(**inputs).pred_masks

        return predict

    warmup, iterations = (
        (plan.encoder_warmup, plan.encoder_iterations) if with_encoder else (plan.step_warmup, plan.latency_iterations)
    )
    timing = time_interleaved(
        {"with_plm": predictor(with_plm), "without_plm": predictor(without_plm)}, warmup, iterations, device
    )
    return {
        "with_plm": timing["with_plm"],
        "without_plm": timing["without_plm"],
        "prompt_learner_parameters": sum(p.numel() for p in with_plm.prompt_learner.parameters()),
    }


def measure_cache_build(
    geometry: str, plan: MeasurementPlan, device_name: str, num_threads: int | None
) -> dict[str, Any]:
    """Images/s of `build_embedding_cache` and of the bare encoder forward on the same images and batch size, and the
    time to read one row's embeddings back from the cache."""
    device = _start_worker(device_name, num_threads)
    config = sam_config(geometry)
    model = base_model(config).to(device)
    processor = processor_for_config(config)
    image_size = input_size(config)
    rng = np.random.default_rng(0)
    # Landscape 4:3 noise images: the processor resizes them and pads the bottom rows, as for real photographs.
    images = [
        Image.fromarray(rng.integers(0, 256, (image_size * 3 // 4, image_size, 3), dtype=np.uint8))
        for _ in range(plan.cache_images)
    ]
    dataset = datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))
    pixel_values = processor.image_processor(images, return_tensors="pt")["pixel_values"]  # (N, 3, S, S)
    batches = pixel_values.split(plan.cache_batch_size)
    model.eval()

    def bare_encoder():
        with torch.inference_mode(), precision(device):
            for batch in batches:
                model.get_image_embeddings(batch.to(device))

    built: dict[str, datasets.Dataset] = {}
    with tempfile.TemporaryDirectory() as cache_dir:

        def cache_build():
            with precision(device):
                built["dataset"] = build_embedding_cache(
                    dataset,
                    model,
                    processor.image_processor,
                    batch_size=plan.cache_batch_size,
                    cache_dir=cache_dir,
                    load_from_cache_file=False,
                )

        with torch.inference_mode(), precision(device):
            for _ in range(plan.encoder_warmup):
                model.get_image_embeddings(batches[0].to(device))
        timing = time_interleaved(
            {"bare_encoder": bare_encoder, "build_embedding_cache": cache_build}, 0, plan.cache_repeats, device
        )
        cached = built["dataset"]
        # Reading a row back is what a training step on the cache adds to the model step.
        read_seconds = []
        for _ in range(3):
            for index in range(len(cached)):
                start = time.perf_counter()
                row = cached[index]
                for column in image_feature_shapes(config):
                    row[column].to(device)
                synchronize(device)
                read_seconds.append(time.perf_counter() - start)
    return {
        "images": plan.cache_images,
        "batch_size": plan.cache_batch_size,
        "bare_encoder": timing["bare_encoder"],
        "build_embedding_cache": timing["build_embedding_cache"],
        "read_embeddings_row_s": statistics.median(read_seconds),
    }


def run_isolated(function: Callable[..., dict[str, Any]], **kwargs) -> dict[str, Any]:
    """Run one measurement in a fresh process (spawned, so the peak memory and allocator state are its own)."""
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as executor:
        result = executor.submit(function, **kwargs).result()
    settings = {key: value for key, value in kwargs.items() if key != "plan"}
    logger.info("%s %s: %.1f s", function.__name__, settings, time.perf_counter() - start)
    return result


# ----------------------------------------------------------------------------------------------------------------
# the run


def machine_info(num_threads: int | None) -> dict[str, Any]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model,
        "cpu_cores": os.cpu_count(),
        "torch_num_threads": num_threads if num_threads is not None else torch.get_num_threads(),
        "load_average_1min_at_start": os.getloadavg()[0],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "datasets": datasets.__version__,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def measure_device(
    device_name: str,
    geometries: list[str],
    num_prompts: list[int],
    plans: dict[str, MeasurementPlan],
    threads,
    measurements: list[str],
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for geometry in geometries:
        plan = plans[geometry]
        common = {"geometry": geometry, "plan": plan, "device_name": device_name, "num_threads": threads}
        results[geometry] = {"plan": asdict(plan)}
        if "training" in measurements:
            results[geometry]["training_by_num_prompts"] = {
                str(prompts): {
                    "notebook": run_isolated(measure_notebook_training, num_prompts=prompts, **common),
                    **run_isolated(measure_cached_training, num_prompts=prompts, **common),
                }
                for prompts in num_prompts
            }
        if "latency" in measurements:
            results[geometry]["latency_from_embeddings"] = run_isolated(measure_latency, with_encoder=False, **common)
            results[geometry]["latency_end_to_end"] = run_isolated(measure_latency, with_encoder=True, **common)
        if "cache" in measurements:
            results[geometry]["cache_build"] = run_isolated(measure_cache_build, **common)
        results[geometry]["summary"] = summarize(results[geometry])
    return results


def summarize(measured: dict[str, Any]) -> dict[str, Any]:
    """The ratios the project's goals are stated in (see `GOAL_*`), for the measurements that were made."""
    summary: dict[str, Any] = {}
    if "latency_from_embeddings" in measured:
        from_embeddings = measured["latency_from_embeddings"]
        end_to_end = measured["latency_end_to_end"]
        plm_added_s = from_embeddings["with_plm"]["median_s"] - from_embeddings["without_plm"]["median_s"]
        summary["plm_overhead_prompt_to_mask"] = plm_added_s / from_embeddings["without_plm"]["median_s"]
        summary["plm_overhead_end_to_end"] = (
            end_to_end["with_plm"]["median_s"] / end_to_end["without_plm"]["median_s"] - 1
        )
        summary["plm_added_seconds_over_end_to_end"] = plm_added_s / end_to_end["without_plm"]["median_s"]
    if "cache_build" not in measured:
        return summary
    cache = measured["cache_build"]
    summary["cache_build_images_per_s"] = cache["images"] / cache["build_embedding_cache"]["median_s"]
    summary["bare_encoder_images_per_s"] = cache["images"] / cache["bare_encoder"]["median_s"]
    summary["cache_build_over_bare_encoder_images_per_s"] = (
        cache["bare_encoder"]["median_s"] / cache["build_embedding_cache"]["median_s"]
    )
    read_s = cache["read_embeddings_row_s"]  # cached training includes reading the row back
    summary["training_by_num_prompts"] = {}
    for prompts, steps in measured.get("training_by_num_prompts", {}).items():
        notebook_s = steps["notebook"]["step"]["median_s"]
        cached_s = steps["cached_step"]["median_s"]
        summary["training_by_num_prompts"][prompts] = {
            "notebook_samples_per_s": 1 / notebook_s,
            "cached_samples_per_s": 1 / (cached_s + read_s),
            "cached_over_notebook_samples_per_s": notebook_s / (cached_s + read_s),
            "cached_step_over_floor_step": cached_s / steps["floor_step"]["median_s"],
            "notebook_peak_memory_mib": steps["notebook"]["memory"]["peak_mib"],
            "cached_peak_memory_mib": steps["memory"]["peak_mib"],
        }
    return summary


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    plans = {geometry: QUICK_PLAN for geometry in GEOMETRIES} if args.quick else PLANS
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    output = args.output or REPO_ROOT / "benchmarks" / "results" / f"throughput-{devices[-1]}.json"
    results = {
        "machine": machine_info(args.num_threads),
        "settings": {
            "geometries": args.geometries,
            "num_prompts": args.num_prompts,
            "quick": args.quick,
            "measurements": args.measurements,
            "precision": {"cpu": "float32", "cuda": "bfloat16 autocast"},
            "goals": {
                "cached_over_notebook_samples_per_s_at_vit_b": GOAL_CACHE_SPEEDUP,
                "cached_step_over_floor_step": GOAL_STEP_OVER_FLOOR,
                "plm_overhead_prompt_to_mask": GOAL_PLM_OVERHEAD,
            },
        },
        "devices": {
            device: measure_device(
                device, args.geometries, args.num_prompts, plans, args.num_threads, args.measurements
            )
            for device in devices
        },
    }
    results["machine"]["load_average_1min_at_end"] = os.getloadavg()[0]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    logger.info("wrote %s", output)
    print(json.dumps({device: {g: r["summary"] for g, r in rs.items()} for device, rs in results["devices"].items()}))


if __name__ == "__main__":
    main()

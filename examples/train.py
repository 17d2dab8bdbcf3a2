"""Adapt a SAM, SAM-HQ or SAM 2 checkpoint to a segmentation task by prompt learning, with Accelerate.

    accelerate launch examples/train.py --model_name_or_path facebook/sam-vit-base --dataset_name plates \\
        --output_dir outputs/plates

Runs the same with `python examples/train.py ...`, on CPU, one GPU, or several processes
(`accelerate launch --num_processes 2 ...`); mixed precision comes from Accelerate (`--mixed_precision bf16`).

The recipe:
1. load the dataset (Hub id, local folder, `save_to_disk` directory, or an embedded synthetic task) and normalize each
   split into images + object masks, counting what is skipped and why;
2. load the checkpoint into its family's prompt-learner model (`SamPromptLearnerModel`, `SamHQPromptLearnerModel`,
   `Sam2PromptLearnerModel`, read from its config) and choose what trains (`--trainable`);
3. with the image encoder frozen, compute its embeddings once into a cache (`--cache_embeddings`, the default);
4. score the untrained model (= zero-shot SAM: the prompt learner starts as the identity) on the eval split: this is
   step 0 of the learning curve;
5. train with simulated prompts, evaluating every `--eval_steps`, checkpointing every `--checkpointing_steps`;
6. deliver the best evaluation, step 0 included (`--load_best_model_at_end`), so the model is never worse on the eval
   split than the base it started from; score it on the test split too, when there is one;
7. write the adapted model, its processor, `metrics.json` (zero-shot vs adapted, which step and why) and
   `predictions.png`.
"""

import argparse
import logging
import math
import time
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import SchedulerType, get_scheduler

from sam_prompt_learner.checkpointing import CheckpointError, TrainingState, resume, save_checkpoint
from sam_prompt_learner.data import (
    PromptConfig,
    SamPromptCollator,
    build_embedding_cache,
    load_segmentation_dataset,
)
from sam_prompt_learner.data.formats import AnnotationFormat
from sam_prompt_learner.data.prompts import POINT_PLACEMENTS, PROMPT_MODES
from sam_prompt_learner.data.synthetic import SYNTHETIC_TASKS
from sam_prompt_learner.embedded import embedded_model_path
from sam_prompt_learner.evaluation import evaluate_model, model_inputs
from sam_prompt_learner.hub import PushToHubError, push_to_hub
from sam_prompt_learner.lora import LORA_TARGETS
from sam_prompt_learner.run_lock import LOCK_NAME, DirectoryInUseError, clear_output_dir, lock_directory
from sam_prompt_learner.trained_parts import SAVABLE_PARTS, save_trained_parts
from sam_prompt_learner.training import (
    PART_LEARNING_RATES,
    TRAINABLE_CHOICES,
    BestWeights,
    RunSummary,
    delivery_decision,
    detection_options,
    evaluation_collator,
    grid_examples,
    hold_out_validation,
    load_model_and_processor,
    non_finite_loss,
    parameter_groups,
    parse_config_overrides,
    plan_trainable,
    predict_grid_masks,
    prepare_split,
    save_adapted_model,
)
from sam_prompt_learner.visualization import save_prediction_grid

logger = get_logger(__name__, log_level="INFO")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Adapt SAM to a segmentation task by prompt learning.")
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model_name_or_path",
        default=None,
        help="Any SAM checkpoint: a Hub id or a directory (default: the package's embedded tiny SAM).",
    )
    model.add_argument(
        "--trainable", nargs="+", default=["prompt_learner", "point_matching_head"], choices=TRAINABLE_CHOICES
    )
    model.add_argument("--lora_targets", nargs="+", default=["mask_decoder"], choices=sorted(LORA_TARGETS))
    model.add_argument("--lora_rank", type=int, default=8)
    model.add_argument(
        "--config_overrides",
        default=None,
        help="PromptLearnerConfig fields to override, e.g. 'prompt_learner_depth=2,focal_loss_weight=10'.",
    )

    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name",
        default="plates",
        help=f"A Hub id, a local directory, a save_to_disk directory, or an embedded task: {sorted(SYNTHETIC_TASKS)}.",
    )
    data.add_argument("--dataset_config_name", default=None)
    data.add_argument("--train_split", default="train")
    data.add_argument(
        "--eval_split",
        default="validation",
        help="A dataset without a 'validation' split gets one held out of the train split (see below).",
    )
    data.add_argument(
        "--test_split",
        default="test",
        help="Also score the zero-shot and the delivered model on this split when the dataset has it (it never "
        "chooses anything; 'none': skip).",
    )
    data.add_argument(
        "--validation_split_percentage",
        type=float,
        default=10,
        help="Without a 'validation' split: the percentage of train rows held out as one, the same rows on every run "
        "(0: none).",
    )
    data.add_argument("--image_column", default=None, help="Detected from the features when omitted.")
    data.add_argument("--mask_column", default=None, help="Detected from the features when omitted.")
    data.add_argument("--annotation_format", default=None, choices=[f.value for f in AnnotationFormat])
    data.add_argument("--class_ids", type=int, nargs="+", default=None, help="Semantic maps: the object classes.")
    data.add_argument(
        "--mask_threshold",
        type=float,
        default=None,
        help="Binary masks: foreground = value >= this (e.g. 128 for soft 8-bit masks). Default: non-zero for "
        "two-valued masks, half range for JPEG masks; other masks with more than two values are refused.",
    )
    data.add_argument("--max_train_samples", type=int, default=None)
    data.add_argument("--max_eval_samples", type=int, default=None)
    data.add_argument("--synthetic_num_train", type=int, default=None, help="Embedded tasks: training images.")
    data.add_argument("--cache_embeddings", action=argparse.BooleanOptionalAction, default=True)
    data.add_argument("--cache_dtype", choices=["float32", "float16"], default="float32")
    data.add_argument("--cache_dir", default=None, help="Where the embedding cache lives (default: datasets' cache).")

    prompts = parser.add_argument_group("prompts")
    prompts.add_argument("--prompt_modes", nargs="+", default=["points", "box"], choices=PROMPT_MODES)
    prompts.add_argument("--num_positive_points", type=int, nargs=2, default=[1, 3], metavar=("MIN", "MAX"))
    prompts.add_argument("--num_negative_points", type=int, nargs=2, default=[0, 1], metavar=("MIN", "MAX"))
    prompts.add_argument("--point_placement", default="uniform", choices=POINT_PLACEMENTS)
    prompts.add_argument("--box_jitter", type=float, default=0.1)
    prompts.add_argument("--eval_prompt_mode", default="points", choices=PROMPT_MODES)
    prompts.add_argument("--eval_point_placement", default="uniform", choices=POINT_PLACEMENTS)
    prompts.add_argument("--max_objects_per_image", type=int, default=8)

    train = parser.add_argument_group("training")
    train.add_argument("--per_device_train_batch_size", type=int, default=4)
    train.add_argument("--per_device_eval_batch_size", type=int, default=8)
    train.add_argument(
        "--learning_rate",
        type=float,
        default=None,
        help="One learning rate for every trained part. Default: by part, since new modules need larger steps "
        "than SAM's pretrained weights: "
        + ", ".join(f"{part} {rate:g}" for part, rate in PART_LEARNING_RATES.items())
        + ".",
    )
    train.add_argument("--weight_decay", type=float, default=0.01)
    train.add_argument("--num_train_epochs", type=int, default=10)
    train.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    train.add_argument("--gradient_accumulation_steps", type=int, default=1)
    train.add_argument("--lr_scheduler_type", type=SchedulerType, default="cosine", choices=list(SchedulerType))
    train.add_argument("--num_warmup_steps", type=int, default=0)
    train.add_argument("--max_grad_norm", type=float, default=1.0)
    train.add_argument("--seed", type=int, default=0)

    run = parser.add_argument_group("run")
    run.add_argument(
        "--output_dir", type=Path, default=None, help="Default: outputs/<dataset name>, replaced on every run."
    )
    run.add_argument("--overwrite_output_dir", action="store_true")
    run.add_argument("--eval_steps", type=int, default=None, help="Evaluate every N steps (default: each epoch).")
    run.add_argument(
        "--load_best_model_at_end",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Deliver the evaluation with the best eval-split mIoU, the zero-shot model (step 0) included, so the "
        "delivered model is never worse there than the base (--no-load_best_model_at_end: the last step, and "
        "best_model/ holds the best).",
    )
    run.add_argument("--checkpointing_steps", type=int, default=None, help="Save a resumable state every N steps.")
    run.add_argument("--resume_from_checkpoint", default=None, help="A checkpoint directory, or 'latest'.")
    run.add_argument("--with_tracking", action="store_true")
    run.add_argument("--report_to", default="all")
    run.add_argument("--num_grid_examples", type=int, default=6, help="Rows of predictions.png.")
    hub = parser.add_argument_group("hub")
    hub.add_argument("--push_to_hub", action="store_true", help="Upload the model and a model card at the end.")
    hub.add_argument("--hub_model_id", default=None, help="<user>/<name> (default: the output directory's name).")
    hub.add_argument("--hub_token", default=None, help="Default: HF_TOKEN or the saved `hf auth login`.")
    hub.add_argument("--hub_private_repo", action="store_true")
    args = parser.parse_args(argv)
    if args.model_name_or_path is None:
        args.model_name_or_path = str(embedded_model_path())
    if args.output_dir is None:
        args.output_dir = Path("outputs") / Path(args.dataset_name).name
        args.overwrite_output_dir = args.resume_from_checkpoint is None
    if args.push_to_hub and args.hub_model_id is None:
        args.hub_model_id = args.output_dir.resolve().name

    for name in (
        "per_device_train_batch_size",
        "per_device_eval_batch_size",
        "num_train_epochs",
        "gradient_accumulation_steps",
        "lora_rank",
        "max_objects_per_image",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    for name in ("max_train_steps", "eval_steps", "checkpointing_steps", "max_train_samples", "max_eval_samples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.learning_rate is not None and args.learning_rate <= 0:
        parser.error("--learning_rate must be > 0")
    if not 0 <= args.validation_split_percentage < 100:
        parser.error("--validation_split_percentage must be in [0, 100)")
    try:
        args.config_overrides = parse_config_overrides(args.config_overrides)
        args.plan = plan_trainable(args.trainable, args.lora_targets)
        args.train_prompts = PromptConfig(
            mode_weights={mode: 1.0 for mode in args.prompt_modes},
            num_positive_points=tuple(args.num_positive_points),
            num_negative_points=tuple(args.num_negative_points),
            point_placement=args.point_placement,
            box_jitter=args.box_jitter,
        )
        args.eval_prompts = PromptConfig(
            mode_weights={args.eval_prompt_mode: 1.0}, point_placement=args.eval_point_placement
        )
    except ValueError as error:
        parser.error(str(error))
    if args.plan.encoder_trains and args.cache_embeddings:
        args.cache_embeddings = False  # gradients must flow through the encoder
    if (
        args.resume_from_checkpoint is None
        and args.output_dir.exists()
        and any(entry.name != LOCK_NAME for entry in args.output_dir.iterdir())
    ):
        if not args.overwrite_output_dir:
            parser.error(
                f"--output_dir {args.output_dir} is not empty: pass --overwrite_output_dir or "
                "--resume_from_checkpoint latest"
            )
    return args


def main(argv=None):
    args = parse_args(argv)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.report_to if args.with_tracking else None,
        project_dir=str(args.output_dir),
        # Seeded shuffling: the order of every epoch is reproducible, which exact resumption needs.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.WARNING)
    # SAM's two positional matrices are one tied tensor, stored once in checkpoints by design.
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
    if not accelerator.is_local_main_process:
        datasets.utils.logging.set_verbosity_error()
    set_seed(args.seed)
    if accelerator.is_main_process:
        try:  # before anything in the directory changes; held until this process ends
            lock_directory(args.output_dir)
        except DirectoryInUseError as error:
            raise SystemExit(
                f"train.py: error: --output_dir {error} Wait for that run to end, or choose another --output_dir."
            ) from None
        if args.overwrite_output_dir and args.resume_from_checkpoint is None:
            clear_output_dir(args.output_dir)
    accelerator.wait_for_everyone()

    # 1-2. Model and data; a wrong path, id, column or split stops here, before any heavy work.
    try:
        model, processor = load_model(args)
        train_dataset, train_report, eval_dataset, eval_report, test_dataset = load_data(args, accelerator)
    except (OSError, ValueError) as error:  # ConnectionError and FileNotFoundError are OSErrors
        raise SystemExit(f"train.py: error: {error}") from None
    logger.info(f"train split: {train_report.summary()}", main_process_only=True)
    logger.info(f"eval split: {eval_report.summary()}", main_process_only=True)
    trainable_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_parameters = sum(p.numel() for p in model.parameters())
    logger.info(f"trainable parameters: {trainable_parameters:,} of {total_parameters:,}", main_process_only=True)

    # 3. The frozen encoder runs once per image.
    if args.cache_embeddings:
        model.to(accelerator.device)
        cache = dict(dtype=getattr(torch, args.cache_dtype), accelerator=accelerator, cache_dir=args.cache_dir)
        train_dataset = build_embedding_cache(train_dataset, model, processor.image_processor, **cache)
        eval_dataset = build_embedding_cache(eval_dataset, model, processor.image_processor, **cache)
        if test_dataset is not None:
            test_dataset = build_embedding_cache(test_dataset, model, processor.image_processor, **cache)

    train_collator = SamPromptCollator(
        processor, args.train_prompts, max_objects_per_image=args.max_objects_per_image, seed=args.seed
    )
    # A generator of its own: creating a data-loader iterator draws a seed, which must not shift the global random
    # stream (the loss samples boundary points from it) when a resumed run starts mid-epoch.
    train_dataloader = DataLoader(
        train_dataset,
        shuffle=True,
        collate_fn=train_collator,
        batch_size=args.per_device_train_batch_size,
        generator=torch.Generator().manual_seed(args.seed),
    )
    eval_collator = evaluation_collator(processor, args.eval_prompts)
    eval_dataloader = DataLoader(eval_dataset, collate_fn=eval_collator, batch_size=args.per_device_eval_batch_size)
    test_dataloader = None
    if test_dataset is not None:
        test_dataloader = DataLoader(test_dataset, collate_fn=eval_collator, batch_size=args.per_device_eval_batch_size)

    groups = parameter_groups(model, args.learning_rate, args.weight_decay)
    learning_rates = {group["name"]: group["lr"] for group in groups}
    logger.info(f"learning rates: {learning_rates}", main_process_only=True)
    optimizer = torch.optim.AdamW(groups)
    steps_per_epoch = math.ceil(len(train_dataloader) / accelerator.num_processes / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    lr_scheduler = get_scheduler(
        args.lr_scheduler_type, optimizer, num_warmup_steps=args.num_warmup_steps, num_training_steps=max_train_steps
    )
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler
    )
    if test_dataloader is not None:
        test_dataloader = accelerator.prepare(test_dataloader)
    if args.with_tracking:
        accelerator.init_trackers("sam_prompt_learner", {k: str(v) for k, v in vars(args).items()})

    # 4. Zero-shot: before any step the prompt learner is the identity, so this is the base SAM.
    zero_shot = evaluate_model(model, eval_dataloader, accelerator, selections=("predicted_iou", "oracle"))
    grid = grid_examples(eval_dataset, args.eval_prompts, args.num_grid_examples)
    zero_shot_masks = predict_grid_masks(accelerator.unwrap_model(model), processor, grid)
    logger.info(f"zero-shot: {zero_shot}", main_process_only=True)
    zero_shot_test = None
    if test_dataloader is not None:
        zero_shot_test = evaluate_model(model, test_dataloader, accelerator, selections=("predicted_iou", "oracle"))

    state = TrainingState()
    best_weights = BestWeights()  # part of every checkpoint, so that a resumed run still delivers its best
    accelerator.register_for_checkpointing(best_weights)
    if args.resume_from_checkpoint:
        try:
            checkpoint, state = resume(accelerator, args.output_dir, args.resume_from_checkpoint)
        except CheckpointError as error:
            raise SystemExit(f"train.py: error: {error}") from None
        if checkpoint is not None:
            logger.info(f"resumed from {checkpoint} at step {state.completed_steps}", main_process_only=True)
    if state.completed_steps == 0:  # the zero-shot model is the first candidate for delivery
        state.history.append({"step": 0, **zero_shot["predicted_iou"]})
        state.best_metric, state.best_step = zero_shot["predicted_iou"]["mean_iou"], 0
        best_weights.capture(accelerator.unwrap_model(model))

    # 5. Training.
    progress = tqdm(
        range(max_train_steps), initial=state.completed_steps, disable=not accelerator.is_local_main_process
    )
    eval_steps = args.eval_steps or steps_per_epoch
    started = time.perf_counter() - state.elapsed_seconds
    for epoch in range(state.epoch, num_epochs):
        model.train()
        train_collator.set_epoch(epoch)
        train_dataloader.set_epoch(epoch)
        batches = train_dataloader
        skip = state.batches_done_in_epoch if epoch == state.epoch else 0
        if skip:
            batches = accelerator.skip_first_batches(train_dataloader, skip)
        for batch_index, batch in enumerate(batches, start=skip):
            with accelerator.accumulate(model):
                output = model(
                    **model_inputs(batch),
                    labels=batch["labels"],
                    prompt_mask=batch["prompt_mask"],
                    multimask_output=True,
                )
                if message := non_finite_loss(accelerator, output, state.completed_steps + 1):
                    raise SystemExit(f"train.py: error: {message}")
                accelerator.backward(output.loss)
                if accelerator.sync_gradients and args.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            state.completed_steps += 1
            progress.update(1)
            progress.set_postfix(loss=f"{output.loss.item():.3f}")
            if args.with_tracking:
                accelerator.log(
                    {"train/loss": output.loss.item(), "lr": lr_scheduler.get_last_lr()[0]}, step=state.completed_steps
                )
            done = state.completed_steps >= max_train_steps
            if state.completed_steps % eval_steps == 0 or done:
                eval_started = time.perf_counter()
                scores = evaluate_model(model, eval_dataloader, accelerator)["predicted_iou"]
                state.eval_seconds += time.perf_counter() - eval_started
                state.history.append({"step": state.completed_steps, **scores})
                logger.info(f"step {state.completed_steps}: {scores}", main_process_only=True)
                if args.with_tracking:
                    accelerator.log({f"eval/{k}": v for k, v in scores.items()}, step=state.completed_steps)
                if scores["mean_iou"] > state.best_metric:
                    state.best_metric, state.best_step = scores["mean_iou"], state.completed_steps
                    best_weights.capture(accelerator.unwrap_model(model))
            if args.checkpointing_steps and state.completed_steps % args.checkpointing_steps == 0 and not done:
                state.epoch, state.batches_done_in_epoch = epoch, batch_index + 1
                state.elapsed_seconds = time.perf_counter() - started
                save_checkpoint(accelerator, args.output_dir, state)
            if done:
                break
        state.batches_done_in_epoch = 0
        if state.completed_steps >= max_train_steps:
            break
    train_time = time.perf_counter() - started
    progress.close()

    # 6. The delivered model: the best evaluation, the zero-shot model included (or the last step), on both splits.
    delivered = delivery_decision(state.history, state.best_step, args.load_best_model_at_end)
    if delivered["step"] != state.completed_steps:
        best_weights.restore(accelerator.unwrap_model(model))
    logger.info(f"delivered step {delivered['step']}: {delivered['reason']}", main_process_only=True)
    adapted = evaluate_model(model, eval_dataloader, accelerator, selections=("predicted_iou", "oracle"))
    test = None
    if test_dataloader is not None:
        delivered_test = evaluate_model(model, test_dataloader, accelerator, selections=("predicted_iou", "oracle"))
        test = {"split": args.test_split, "zero_shot": zero_shot_test, "adapted": delivered_test}

    # 7. Outputs: the adapted model, metrics, and a grid of predictions to look at.
    adapted_masks = predict_grid_masks(accelerator.unwrap_model(model), processor, grid)
    save_adapted_model(accelerator, model, processor, args.output_dir)
    if accelerator.is_main_process and not args.plan.uses_lora and set(args.plan.parts) <= set(SAVABLE_PARTS):
        # The small checkpoint: only what was trained, loadable over the base with `load_trained_parts`.
        save_trained_parts(accelerator.unwrap_model(model), args.output_dir / "trained_parts", args.plan.parts,
                           base_model_name_or_path=args.model_name_or_path)  # fmt: skip
    if not args.load_best_model_at_end:  # the last step was delivered: best_model/ keeps the best
        best_weights.restore(accelerator.unwrap_model(model))
        save_adapted_model(accelerator, model, processor, args.output_dir / "best_model")
    if accelerator.is_main_process:
        summary = RunSummary(
            base_model=args.model_name_or_path,
            dataset=args.dataset_name,
            trainable=list(args.trainable),
            trainable_parameters=trainable_parameters,
            total_parameters=total_parameters,
            completed_steps=state.completed_steps,
            train_wall_time_seconds=round(train_time, 2),
            eval_wall_time_seconds=round(state.eval_seconds, 2),
            zero_shot=zero_shot,
            adapted={**adapted, "best_step": state.best_step, "history": state.history},
            delivered=delivered,
            test=test,
            skipped_data={"train": train_report.to_dict(), "eval": eval_report.to_dict()},
            settings={
                "eval_split": args.eval_split,
                "learning_rate": learning_rates,
                "load_best_model_at_end": args.load_best_model_at_end,
                "per_device_train_batch_size": args.per_device_train_batch_size,
                "gradient_accumulation_steps": args.gradient_accumulation_steps,
                "max_train_steps": max_train_steps,
                "prompt_modes": args.prompt_modes,
                **(
                    {"lora_targets": list(args.plan.lora_targets), "lora_rank": args.lora_rank}
                    if args.plan.uses_lora
                    else {}
                ),
                "seed": args.seed,
                "num_processes": accelerator.num_processes,
                "eval_prompts": args.eval_prompt_mode,
                "mixed_precision": accelerator.mixed_precision,
            },
        )
        summary.write(args.output_dir / "metrics.json")
        for example, before, after in zip(grid, zero_shot_masks, adapted_masks, strict=True):
            example.predictions = {"zero-shot": before, "adapted": after}
        grid_path = save_prediction_grid(args.output_dir / "predictions.png", grid)
        rows = [(f"zero-shot ({args.eval_split})", zero_shot), (f"adapted ({args.eval_split})", adapted)]
        if test is not None:
            rows += [(f"zero-shot ({args.test_split})", zero_shot_test)]
            rows += [(f"adapted ({args.test_split})", test["adapted"])]
        print(f"\n{'':24}{'mIoU':>8}{'Dice':>8}{'bIoU':>8}")
        for name, scores in rows:
            scores = scores["predicted_iou"]
            print(f"{name:24}{scores['mean_iou']:8.3f}{scores['mean_dice']:8.3f}{scores['mean_boundary_iou']:8.3f}")
        print(f"\ndelivered step {delivered['step']} of {state.completed_steps}: {delivered['reason']}")
        print(
            f"\nadapted model: {args.output_dir}\nmetrics: {args.output_dir / 'metrics.json'}\npredictions: {grid_path}"
        )
    if args.with_tracking:
        accelerator.end_training()
    if args.push_to_hub and accelerator.is_main_process:
        try:
            url = push_to_hub(args.output_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private_repo)
        except PushToHubError as error:
            raise SystemExit(f"train.py: error: {error}") from None
        print(f"pushed: {url}")


def load_model(args):
    """Any SAM checkpoint, with exactly the planned parts trainable, and its processor."""
    path = Path(args.model_name_or_path)
    if (path.is_absolute() or args.model_name_or_path.startswith(".")) and not path.is_dir():
        raise ValueError(f"--model_name_or_path {path}: no such directory.")
    return load_model_and_processor(
        args.model_name_or_path, args.plan, lora_rank=args.lora_rank, **args.config_overrides
    )


def load_data(args, accelerator):
    """The train and eval splits, normalized, with every skipped image or object counted, and the test split when
    the dataset has one (`None` otherwise)."""
    synthetic_options = None
    if args.dataset_name in SYNTHETIC_TASKS:
        synthetic_options = {"num_train": args.synthetic_num_train, "seed": 0}
    raw = load_segmentation_dataset(args.dataset_name, args.dataset_config_name, synthetic_options=synthetic_options)
    raw, held_out = hold_out_validation(raw, args.train_split, args.validation_split_percentage)
    if held_out:
        logger.info(held_out, main_process_only=True)
    detect = detection_options(args)
    test_dataset = None
    with accelerator.main_process_first():
        train_dataset, train_report = prepare_split(raw, args.train_split, max_samples=args.max_train_samples, **detect)
        eval_dataset, eval_report = prepare_split(raw, args.eval_split, max_samples=args.max_eval_samples, **detect)
        if args.test_split in raw and args.test_split not in (args.train_split, args.eval_split):
            test_dataset, test_report = prepare_split(raw, args.test_split, max_samples=args.max_eval_samples, **detect)
            logger.info(f"test split: {test_report.summary()}", main_process_only=True)
    return train_dataset, train_report, eval_dataset, eval_report, test_dataset


if __name__ == "__main__":
    main()

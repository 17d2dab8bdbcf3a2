"""Pre-train the package's embedded tiny SAM from scratch on the synthetic scenes, in resumable stages (CPU or GPU).

No SAM weights can be downloaded here, so the project ships its own small promptable segmenter: a plain
`transformers.SamModel` trained whole by `sam_prompt_learner.pretraining` (the recipe, documented there and in the
tiny-sam card). Every flag is a field of `PretrainingConfig`; a run writes its resumable state to `--output_dir`
every `--checkpoint_minutes`, and the same command with `--resume` continues it (only the stage flags may change:
time budget, threads, evaluation and checkpoint cadence, the cooldown that ends the run).

    # stage 1: start (both cores; stops after the time budget with its state saved)
    nohup env HF_HUB_OFFLINE=1 .venv/bin/python examples/pretrain_tiny_sam.py --output_dir outputs/pretrain-v3 \
        --time_budget_minutes 120 > outputs/pretrain-v3.log 2>&1 &
    # later stages: continue from the latest state
    .venv/bin/python examples/pretrain_tiny_sam.py --output_dir outputs/pretrain-v3 --resume --time_budget_minutes 120
    # the last stage: a linear cooldown of the learning rate to 0 over 3,000 steps from where it stands
    .venv/bin/python examples/pretrain_tiny_sam.py --output_dir outputs/pretrain-v3 --resume \
        --cooldown_start_step 30000 --cooldown_steps 3000
    # or, keeping the constant-rate run going, cool a copy of its latest state down in a branch (which may also
    # change the recipe, e.g. --iou_loss_weight; not the geometry or seed)
    .venv/bin/python examples/pretrain_tiny_sam.py --output_dir outputs/pretrain-v3-cooldown \
        --branch_from outputs/pretrain-v3 --cooldown_start_step 30000 --cooldown_steps 3000

`output_dir/best` is the best validation evaluation as a plain `sam` checkpoint, `output_dir/history.json` the
learning curves (`--plot` draws them as `learning_curves.png`; `--compare OTHER_RUN` prints them beside another
run's, step for step or, for two cooldowns, at the same share of the cooldown).

On a GPU, a stage takes `--device cuda --bf16` (sampling stays on the CPU, so the batches are the same); a new run
there would rather take a larger `--batch_size`.
"""

import argparse
import dataclasses
import logging
import typing
from pathlib import Path

from sam_prompt_learner.pretraining import (
    STAGE_FIELDS,
    PretrainingConfig,
    comparison_table,
    load_history,
    plot_learning_curves,
    pretrain,
    stored_config,
)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict]:
    """The run's arguments and the `PretrainingConfig` fields given on the command line (only those)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--resume", action="store_true", help="Continue the run in --output_dir from its state.")
    parser.add_argument("--plot", action="store_true", help="Only draw output_dir/learning_curves.png and exit.")
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="OTHER_RUN",
        help="Only print a markdown table of --output_dir's evaluations beside OTHER_RUN's nearest ones (at the same "
        "share of the cooldown when both cool down, else at the same step) and exit.",
    )
    parser.add_argument(
        "--branch_from",
        type=Path,
        help="Start --output_dir as a branch of this state (a state-* folder, or a run folder's latest state); the "
        "config flags given may change anything but the geometry and seed.",
    )
    hints = typing.get_type_hints(PretrainingConfig)
    for config_field in dataclasses.fields(PretrainingConfig):
        hint = hints[config_field.name]
        args = typing.get_args(hint)
        if typing.get_origin(hint) is list:
            kind, nargs = args[0], "+"
        else:
            kind, nargs = next((arg for arg in args if arg is not type(None)), hint), None
        default = (
            config_field.default_factory()
            if config_field.default_factory is not dataclasses.MISSING
            else (config_field.default)
        )
        stage = " (a stage flag: may change on --resume)" if config_field.name in STAGE_FIELDS else ""
        kind_options = {"action": argparse.BooleanOptionalAction} if kind is bool else {"type": kind, "nargs": nargs}
        parser.add_argument(
            f"--{config_field.name}",
            default=argparse.SUPPRESS,
            help=f"PretrainingConfig.{config_field.name} (default {default}){stage}.",
            **kind_options,
        )
    namespace = parser.parse_args(argv)
    if namespace.branch_from is not None and (namespace.resume or namespace.plot or namespace.compare):
        parser.error("--branch_from starts a new run: it does not go with --resume, --plot or --compare.")
    if namespace.plot and namespace.compare is not None:
        parser.error("--plot and --compare are two different reports: give one.")
    fields = {f.name for f in dataclasses.fields(PretrainingConfig)}
    given = {name: value for name, value in vars(namespace).items() if name in fields}
    return namespace, given


def main(argv: list[str] | None = None) -> None:
    args, given = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(message)s", level=logging.INFO, datefmt="%H:%M:%S")
    if args.compare is not None or args.plot:
        try:
            if args.compare is not None:
                print(comparison_table(args.output_dir, args.compare), end="")
            else:
                plot_learning_curves(
                    load_history(args.output_dir),
                    args.output_dir / "learning_curves.png",
                    title=str(args.output_dir),
                    cooldown_start_step=stored_config(args.output_dir).get("cooldown_start_step"),
                )
        except FileNotFoundError as error:
            raise SystemExit(f"error: {error}") from None
        return
    if args.branch_from is not None:
        pretrain(args.output_dir, branch_from=args.branch_from, **given)
    elif args.resume:
        pretrain(args.output_dir, **given)
    else:
        pretrain(args.output_dir, PretrainingConfig(**given))


if __name__ == "__main__":
    main()

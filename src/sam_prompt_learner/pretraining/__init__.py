"""Pre-training a SAM from scratch on the embedded synthetic scenes: how the embedded tiny SAM is made.

`pretrain(output_dir, PretrainingConfig(...))` starts a run; `pretrain(output_dir, **stage_overrides)` continues it
from its latest resumable state; `pretrain(new_dir, branch_from=state, **changes)` branches a new run from a state.
`examples/pretrain_tiny_sam.py` is the command-line recipe.
"""

from .recipe import INIT_FIELDS, STAGE_FIELDS, PretrainingConfig, build_sam_config, evaluate, init_model, object_ious
from .report import comparison_table, load_history, plot_learning_curves
from .runner import latest_state_dir, pretrain, stored_config
from .scenes import Scenes

__all__ = [
    "INIT_FIELDS",
    "STAGE_FIELDS",
    "PretrainingConfig",
    "Scenes",
    "build_sam_config",
    "comparison_table",
    "evaluate",
    "init_model",
    "latest_state_dir",
    "load_history",
    "object_ious",
    "plot_learning_curves",
    "pretrain",
    "stored_config",
]

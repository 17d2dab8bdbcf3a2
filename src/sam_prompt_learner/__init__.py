"""sam-prompt-learner: adapt the Segment Anything Model to a task by prompt learning."""

from .configuration_prompt_learner import PromptLearnerConfig

__version__ = "0.1.0.dev0"
__all__ = ["PromptLearnerConfig"]

"""The SAM this package ships: a tiny promptable segmenter pre-trained by the project itself on the embedded generic
synthetic set (`examples/pretrain_tiny_sam.py`), so that everything runs offline, with no weights to download.

```python
from sam_prompt_learner import SamPromptLearnerModel, embedded_model_path

model = SamPromptLearnerModel.from_pretrained(embedded_model_path())  # a plain `sam` checkpoint, a few MB
```

Its card (`README.md` in the same directory) gives the recipe, the exact command and the validation scores.
"""

from pathlib import Path

EMBEDDED_MODELS_DIR = Path(__file__).parent / "pretrained"
TINY_SAM = "tiny-sam"


def embedded_model_path(name: str = TINY_SAM) -> Path:
    """Directory of an embedded checkpoint (`config.json`, `model.safetensors`, `processor_config.json`,
    `README.md`), usable wherever a Hub id is: `from_pretrained`, `--model_name_or_path`, `--model`."""
    path = EMBEDDED_MODELS_DIR / name
    if not (path / "model.safetensors").is_file():
        available = (
            sorted(p.name for p in EMBEDDED_MODELS_DIR.iterdir() if p.is_dir()) if EMBEDDED_MODELS_DIR.is_dir() else []
        )
        raise FileNotFoundError(f"No embedded model {name!r} in {EMBEDDED_MODELS_DIR}; available: {available}.")
    return path

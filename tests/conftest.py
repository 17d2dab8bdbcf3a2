import os

# Tests never reach the network: every model and dataset is built here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny import tiny_config  # noqa: E402
from transformers import SamModel  # noqa: E402


@pytest.fixture(scope="session")
def sam_checkpoint(tmp_path_factory):
    """A plain tiny `SamModel` checkpoint directory (model_type "sam"), as a user's base SAM would be."""
    torch.manual_seed(0)
    model = SamModel(tiny_config()).eval()
    path = tmp_path_factory.mktemp("tiny-sam")
    model.save_pretrained(path)
    return path

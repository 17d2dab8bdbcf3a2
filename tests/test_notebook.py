"""examples/notebooks/quickstart.ipynb runs top to bottom, offline, in a real Jupyter kernel (nbclient)."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the test extra installs nbformat")
nbclient = pytest.importorskip("nbclient", reason="the test extra installs nbclient and ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs_offline(tmp_path, monkeypatch):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit it stripped"
    # Like papermill: a cell after the one tagged "parameters" overrides them; the steps stay the notebook's own.
    parameters = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    notebook.cells.insert(parameters + 1, nbformat.v4.new_code_cell(f"OUTPUT_DIR = {str(tmp_path / 'run')!r}"))
    # The kernel and the training script it starts inherit this environment: offline, one thread, a private cache.
    for name, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
                        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache")}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails

    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code_cells)
    outputs = [output for cell in code_cells for output in cell.outputs]
    pictures = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(pictures) >= 3  # click and box, the three candidates, zero-shot vs adapted
    text = "".join(output.get("text", "") for output in outputs)
    assert "zero_shot  mIoU" in text and "adapted    mIoU" in text
    assert "give the same mask" in text
    assert (tmp_path / "run" / "trained_parts" / "trained_parts.safetensors").is_file()
    assert os.listdir(tmp_path / "run" / "my_trained_parts")

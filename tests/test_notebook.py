"""The Colab quickstart notebook runs top to bottom (on CPU, with a tiny parameter setting)."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is needed (pip install -e .[dev])")
nbclient = pytest.importorskip("nbclient", reason="nbclient is needed (pip install -e .[dev])")
pytest.importorskip(
    "ipykernel", reason="ipykernel is needed to run notebooks (pip install -e .[dev])"
)

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"
# Appended to the cell tagged "parameters": one epoch of training and one of fine-tuning.
TINY = "EPOCHS, FINETUNE_EPOCHS, RAMP_EPOCHS = 1, 1, 1"
ACCURACIES = re.compile(
    r"accuracy: float ([\d.]+) \| snapped ([\d.]+) \| fine-tuned ([\d.]+) \| loaded ([\d.]+)"
)


@pytest.mark.slow
def test_quickstart_runs_and_reports_accuracies(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    params[0].source += f"\n{TINY}\n"
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert not [o for o in outputs if o.output_type == "error"]
    assert re.search(r"backend: (CPU|GPU|TPU), \d+ device", text)
    match = ACCURACIES.search(text)
    assert match, text[-2000:]
    acc_float, acc_snapped, acc_finetuned, acc_loaded = map(float, match.groups())
    assert acc_float > 0.5 and 0.0 <= acc_snapped <= 1.0  # 10 classes: chance is 0.1
    assert acc_loaded == acc_finetuned
    assert "**total**" in text and "1/psi" in text  # the size report
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the histogram
    assert (tmp_path / "quickstart.qareg").stat().st_size > 0


@pytest.fixture
def run_install_cell(monkeypatch):
    """Runs the cell tagged "install" with pip stubbed out, qareg_jax importable or not;
    returns the arguments after ``pip install -q`` (None: pip was not called)."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c for c in nb.cells if "install" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "the notebook needs exactly one cell tagged 'install'"
    real_find_spec = importlib.util.find_spec
    monkeypatch.syspath_prepend(str(REPO))  # sys.path is restored after the test

    def hidden(name, *args):
        return None if name == "qareg_jax" else real_find_spec(name, *args)

    def run(importable: bool) -> list[str] | None:
        calls = []
        monkeypatch.setattr(subprocess, "check_call", lambda cmd: calls.append(cmd[5:]))
        monkeypatch.setattr(importlib.util, "find_spec", real_find_spec if importable else hidden)
        exec(compile(cells[0].source, "install-cell", "exec"), {})
        return calls[0] if calls else None

    return run


def test_install_cell_picks_the_source(run_install_cell, monkeypatch, tmp_path):
    monkeypatch.delenv("QAREG_SOURCE", raising=False)
    monkeypatch.chdir(REPO / "notebooks")
    assert run_install_cell(importable=True) is None
    assert run_install_cell(importable=False) == ["-e", str(REPO)]
    monkeypatch.chdir(REPO)
    assert run_install_cell(importable=False) == ["-e", str(REPO)]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="set QAREG_SOURCE"):
        run_install_cell(importable=False)
    monkeypatch.setenv("QAREG_SOURCE", "dist/qareg_jax-0.1.0-py3-none-any.whl")
    assert run_install_cell(importable=False) == ["dist/qareg_jax-0.1.0-py3-none-any.whl"]

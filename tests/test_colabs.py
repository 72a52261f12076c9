"""The colabs run top to bottom (nbclient, a fresh kernel) in their fast mode.

`INVJAX_COLAB_FAST=1` makes each notebook use fewer training steps / images; the code
path is the one a reader runs. A failing cell fails the test with its traceback.
"""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = ("inversion_attacks.ipynb", "passeurs.ipynb")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_colab_runs_top_to_bottom(name, monkeypatch, tmp_path):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("INVJAX_COLAB_FAST", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nb = nbformat.read(os.path.join(ROOT, "colabs", name), as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  if name == "passeurs.ipynb":
    assert "k=2: L_inf 2/255" in text, text[-2000:]
    assert "poisoned k=2" in text
  else:
    assert "test accuracy" in text and "same prediction as x1: 1.0" in text, text[-2000:]

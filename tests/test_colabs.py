"""The colabs run top to bottom (nbclient, a fresh kernel) in their fast mode.

`INVJAX_COLAB_FAST=1` makes each notebook use fewer training steps / images; the code
path is the one a reader runs. A failing cell fails the test with its traceback.
Every notebook starts with the same cell, which installs invjax on a fresh Colab runtime.
"""
import builtins
import json
import math
import os
import re
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(ROOT, "colabs")
NOTEBOOKS = ("inversion_attacks.ipynb", "passeurs.ipynb", "flows.ipynb", "evaluation.ipynb",
             "robustness.ipynb")

REPO_URL = "https://github.com/invjax/invjax"
INSTALL_CELL = f'''# Colab: install invjax when it is not importable (a fresh runtime), then import it.
INVJAX_REPO = "{REPO_URL}"  # where to install invjax from
try:
  import invjax
except ImportError:
  import subprocess, sys
  subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", f"git+{{INVJAX_REPO}}"])
  import invjax
print("invjax", invjax.__version__)'''


def _all_notebooks():
  return sorted(n for n in os.listdir(COLABS) if n.endswith(".ipynb"))


def _code_cells(name):
  with open(os.path.join(COLABS, name)) as f:
    nb = json.load(f)
  return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_every_colab_is_run_by_the_tests():
  assert _all_notebooks() == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", _all_notebooks())
def test_colab_starts_with_the_install_cell(name):
  cells = _code_cells(name)
  assert cells and cells[0] == INSTALL_CELL, f"{name}: first code cell is\n{cells[:1]}"
  code = "\n".join(cells)
  assert code.count(REPO_URL) == 1, f"{name}: the repository URL must be written once"
  assert len(re.findall(r"^\s*INVJAX_REPO\s*=", code, re.M)) == 1
  assert "github.com" not in "\n".join(cells[1:])


def _exec_install_cell(source, invjax_importable):
  """Runs `source` with a fake `subprocess`; returns (pip commands, printed, namespace)."""
  commands, printed, installed = [], [], [invjax_importable]

  def check_call(cmd):
    commands.append(list(cmd))
    installed[0] = True

  fake_subprocess = types.SimpleNamespace(check_call=check_call)

  def fake_import(name, globals=None, locals=None, fromlist=(), level=0):
    if name == "invjax" and not installed[0]:
      raise ImportError("No module named 'invjax'")
    if name == "subprocess":
      return fake_subprocess
    return builtins.__import__(name, globals, locals, fromlist, level)

  namespace = {"__builtins__": {**vars(builtins), "__import__": fake_import,
                                "print": lambda *args: printed.append(args)}}
  exec(source, namespace)  # pylint: disable=exec-used
  return commands, printed, namespace


@pytest.mark.parametrize("name", _all_notebooks())
def test_install_cell_installs_only_when_invjax_is_missing(name):
  import invjax  # pylint: disable=g-import-not-at-top
  source = _code_cells(name)[0]
  commands, printed, ns = _exec_install_cell(source, invjax_importable=False)
  assert commands == [[sys.executable, "-m", "pip", "install", "-q", f"git+{REPO_URL}"]]
  assert ns["invjax"] is invjax and printed == [("invjax", invjax.__version__)]
  commands, printed, ns = _exec_install_cell(source, invjax_importable=True)
  assert commands == [] and ns["invjax"] is invjax


def _number(pattern, text):
  match = re.search(pattern, text)
  assert match, f"{pattern!r} not printed:\n{text[-2000:]}"
  return float(match.group(1))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_colab_runs_top_to_bottom(name, monkeypatch, tmp_path):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("INVJAX_COLAB_FAST", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  # The kernel runs in tmp_path: put this checkout first so it imports this checkout's invjax.
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
  nb = nbformat.read(os.path.join(ROOT, "colabs", name), as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert re.search(r"^invjax \S+$", text, re.M), text[:2000]
  if name == "passeurs.ipynb":
    assert "k=2: L_inf 2/255" in text, text[-2000:]
    assert "poisoned k=2" in text
  elif name == "flows.ipynb":
    for model in ("Glow", "i-ResNet"):  # training beats the untrained model on the test split
      untrained = _number(model + r": .* test bits/dim at initialisation (\d+\.\d+)", text)
      trained = _number(model + r" test bits/dim (\d+\.\d+)", text)
      assert math.isfinite(untrained) and 0 < trained < untrained, (model, text[-3000:])
    assert _number(r"Glow test bits/dim (\d+\.\d+)", text) < 8  # uniform noise: 8 bits/dim
    assert "samples: {'Glow, T=1.0': (8, 32, 32, 3)" in text, text[-3000:]
    assert "inverse error falls with iterations: True" in text, text[-3000:]
    assert _number(r"default stopping rule \(.*\): (\S+)", text) < 1e-4
    assert "distrax log_prob matches: True" in text, text[-3000:]
    assert "distrax samples: (2, 32, 32, 3)" in text
  elif name == "evaluation.ipynb":
    clean = _number(r"clean accuracy (\d\.\d+), robust accuracy", text)
    robust = _number(r"robust accuracy \(AutoAttack, 1/255\) (\d\.\d+)", text)
    assert 0.1 < clean <= 1.0 and 0.0 <= robust <= clean, text[-3000:]
    # zero gradients: PGD is blind, Square is not, and AutoAttack says why
    assert _number(r"PGD success (\d\.\d+)", text) <= 0.2, text[-3000:]
    assert _number(r"Square success (\d\.\d+)", text) >= 0.5, text[-3000:]
    assert "'zero_gradients'" in text, text[-3000:]
    assert "robust accuracy: {'implicit'" in text and "masked gradients: " in text
  elif name == "robustness.ipynb":
    # the certified constant bounds every measured one; no attack inside a certified radius
    assert "certified bound above every measured constant: True" in text, text[-3000:]
    assert "no adversarial inside a certified radius: True" in text, text[-3000:]
    assert _number(r"clean accuracy (\d\.\d+); certified accuracy", text) > 0.1
    assert "smoothing (sigma 0.25, N 100): certified accuracy" in text
  else:
    assert "test accuracy" in text and "same prediction as x1: 1.0" in text, text[-2000:]

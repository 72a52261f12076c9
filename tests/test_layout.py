"""The package layout: no import cycle between invjax modules, every subpackage declares its
public API (`__all__`, each name importable), no module over the size of one idea."""
import ast
import importlib
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "invjax")


def _modules():
  out = {}
  for root, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(root, f)
        name = os.path.relpath(path[:-3], os.path.dirname(ROOT)).replace(os.sep, ".")
        out[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
  return out


MODULES = _modules()
PACKAGES = sorted(m for m, p in MODULES.items() if p.endswith("__init__.py"))


def _imports(module, path):
  """invjax modules `module` imports (at any depth), its own ancestors excluded."""
  out = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("invjax"):
      subs = [f"{node.module}.{a.name}" for a in node.names]
      out.update(subs if all(s in MODULES for s in subs) else [node.module])
    elif isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith("invjax"))
  return {d for d in out if d in MODULES and d != module and not module.startswith(d + ".")}


def test_no_import_cycle():
  graph = {m: _imports(m, p) for m, p in MODULES.items()}
  state, cycle = {}, []

  def visit(m, path):
    state[m] = "open"
    for d in sorted(graph[m]):
      if state.get(d) == "open":
        cycle.extend(path[path.index(d):] + [d] if d in path else [m, d])
        return True
      if d not in state and visit(d, path + [d]):
        return True
    state[m] = "done"
    return False

  for m in sorted(graph):
    if m not in state and visit(m, [m]):
      break
  assert not cycle, " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
  # the check itself: two modules importing each other are found
  monkeypatch.setitem(MODULES, "invjax.fake_a", str(tmp_path / "a.py"))
  monkeypatch.setitem(MODULES, "invjax.fake_b", str(tmp_path / "b.py"))
  (tmp_path / "a.py").write_text("from invjax import fake_b\n")
  (tmp_path / "b.py").write_text("from invjax import fake_a\n")
  with pytest.raises(AssertionError, match="fake_a"):
    test_no_import_cycle()


@pytest.mark.parametrize("package", [p for p in PACKAGES if not p.startswith("invjax._src")])
def test_every_package_declares_its_public_api(package):
  module = importlib.import_module(package)
  assert hasattr(module, "__all__"), f"{package} has no __all__"
  missing = [n for n in module.__all__ if not hasattr(module, n)]
  assert not missing, f"{package}.__all__ names what it does not define: {missing}"


def test_modules_hold_one_idea():
  long = {m: n for m, p in MODULES.items() if (n := sum(1 for _ in open(p))) > 420}
  assert not long, f"modules over ~400 lines (split by idea): {long}"

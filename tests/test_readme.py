"""The README's quick start runs as written, and its relative links point to existing files."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _read(path):
  with open(path, encoding="utf-8") as f:
    return f.read()


def _headings(text):
  """(line number, level, title) of every markdown heading outside fenced code blocks."""
  found, in_fence = [], False
  for i, line in enumerate(text.splitlines()):
    if line.startswith("```"):
      in_fence = not in_fence
    elif not in_fence and re.match(r"#{1,6} ", line):
      level = len(line) - len(line.lstrip("#"))
      found.append((i, level, line[level:].strip()))
  return found


def _section(text, heading):
  """The text under `## heading` up to the next heading of level 1 or 2."""
  lines = text.splitlines(keepends=True)
  heads = _headings(text)
  starts = [i for i, level, title in heads if level == 2 and title == heading]
  if not starts:
    raise AssertionError(f"README.md has no '## {heading}' section")
  end = next((i for i, level, _ in heads if i > starts[0] and level <= 2), len(lines))
  return "".join(lines[starts[0] + 1:end])


def quick_start_code(text):
  """The one ```python block of the README's "Quick start" section."""
  blocks = [code for lang, code in _FENCE.findall(_section(text, "Quick start"))
            if lang == "python"]
  if len(blocks) != 1:
    raise AssertionError(f"'Quick start' must hold exactly one ```python block, found {len(blocks)}")
  return blocks[0]


def _slug(heading):
  """GitHub's anchor of a markdown heading."""
  heading = re.sub(r"[`*_]", "", heading.strip().lower())
  return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def _anchors(path):
  return {_slug(title) for _, _, title in _headings(_read(path))}


def broken_links(path):
  """Relative links of a markdown file whose target file (or `#anchor` in it) does not exist."""
  text = _FENCE.sub("", _read(path))
  broken = []
  for target in _LINK.findall(text):
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
      continue  # http(s):, mailto:, in-page anchors
    file_part, _, anchor = target.partition("#")
    resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part))
    if not os.path.exists(resolved):
      broken.append(f"{target} (no file {os.path.relpath(resolved, ROOT)})")
    elif anchor and resolved.endswith(".md") and anchor not in _anchors(resolved):
      broken.append(f"{target} (no heading #{anchor})")
  return broken


def test_quick_start_runs_and_prints_its_results(tmp_path):
  code = quick_start_code(_read(README))
  script = tmp_path / "quick_start.py"
  script.write_text(code)
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  # A fresh interpreter and namespace (runpy), with this checkout's invjax, not an installed one.
  runner = ("import runpy, sys, invjax; print('invjax from', invjax.__file__, flush=True); "
            "runpy.run_path(sys.argv[1], run_name='__main__')")
  proc = subprocess.run([sys.executable, "-c", runner, str(script)], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = proc.stdout
  imported = re.search(r"invjax from (\S+)", out).group(1)
  assert os.path.dirname(os.path.dirname(imported)) == ROOT, imported
  inverse_error = float(re.search(r"inverse error (\S+)", out).group(1))
  assert inverse_error < 1e-4, out  # float32 coupling inverse: ~1e-7
  pgd, latent = map(float, re.search(r"PGD-10 success (\S+), latent success (\S+)", out).groups())
  # An untrained classifier attacked at 8/255 on its own predictions: both attacks break it.
  assert pgd >= 0.9 and latent >= 0.9, out
  svm_accuracy = float(re.search(r"SVM test accuracy (\S+)", out).group(1))
  assert 0.15 < svm_accuracy <= 1.0, out  # 10 classes: chance is 0.10
  assert "InvjaxError: epsilon must be > 0" in out, out


def test_quick_start_extraction_finds_exactly_the_block():
  code = "# a comment, not a heading\n## nor this\nprint(1)\n"
  text = (f"# t\n\n## Quick start\n\nprose\n\n```python\n{code}```\n\n### More\n\n"
          "## Results\n\n```python\nx\n```\n")
  assert quick_start_code(text) == code
  with pytest.raises(AssertionError, match="exactly one"):
    quick_start_code("## Quick start\n\n```bash\nls\n```\n")
  with pytest.raises(AssertionError, match="no '## Quick start'"):
    quick_start_code("## Usage\n\n```python\nprint(1)\n```\n")


@pytest.mark.parametrize("path", ["README.md", "docs/cpu.md"] + sorted(
    os.path.join("docs", "results", f) for f in os.listdir(os.path.join(ROOT, "docs", "results"))
    if f.endswith(".md")))
def test_relative_links_resolve(path):
  assert broken_links(os.path.join(ROOT, path)) == []


def test_readme_links_to_every_results_file():
  linked = {os.path.normpath(t.partition("#")[0]) for t in _LINK.findall(_read(README))}
  results = {os.path.join("docs", "results", f)
             for f in os.listdir(os.path.join(ROOT, "docs", "results")) if f.endswith(".md")}
  assert results <= linked, sorted(results - linked)


def test_broken_link_is_reported(tmp_path):
  (tmp_path / "b.md").write_text("# Some heading\n")
  page = tmp_path / "a.md"
  page.write_text("[ok](b.md) [ok](b.md#some-heading) [web](https://x.org/y) [self](#top)\n"
                  "[gone](missing.md) [bad anchor](b.md#other)\n```\n[in code](nope.md)\n```\n")
  assert broken_links(str(page)) == ["missing.md (no file " + os.path.relpath(
      str(tmp_path / "missing.md"), ROOT) + ")", "b.md#other (no heading #other)"]

r"""Assembles the report of `bench/accelerator.sh` (standard library only, no JAX).

The script runs each step with its own time limit and appends one line per step to a
tab-separated file: `name, what, status, wall_s, limit_s, workdir, md, log, command`
(`workdir`: a launcher's --workdir, whose `metrics.jsonl` files give the training speed;
`md`: a benchmark's own markdown output). This module turns that file and the hardware
description into one markdown report: the summary table (one row per step: status, wall
time against its limit, the headline figures), then each step's exact command and its own
tables.

  python bench/accelerator_report.py STEPS_TSV HARDWARE_TXT OUT_MD [TITLE]
"""
from __future__ import annotations

import glob
import json
import os
import re
import sys
from typing import List, Optional

FIELDS = ("name", "what", "status", "wall_s", "limit_s", "workdir", "md", "log", "command")
# Columns of the benchmarks' tables worth a place in the summary, most telling first.
_HEADLINE_COLUMNS = ("speed-up", "invjax / pytorch", "invjax / peer", "images/s",
                     "end to end (s)", "public acc")
_NUMBER = re.compile(r"[-+]?[\d,]*\.?\d+(e[-+]?\d+)?%?")
_MISSING_MODULE = re.compile(r"No module named '([^']+)'")


def read_steps(path: str) -> List[dict]:
  """The rows of the steps file as dicts keyed by `FIELDS`."""
  rows = []
  with open(path) as f:
    for line in f:
      line = line.rstrip("\n")
      if not line:
        continue
      parts = line.split("\t")
      if len(parts) != len(FIELDS):
        raise ValueError(f"{path}: expected {len(FIELDS)} tab-separated fields, got "
                         f"{len(parts)} in {line!r}")
      rows.append(dict(zip(FIELDS, parts)))
  return rows


def _read(path: str) -> str:
  if not path or not os.path.isfile(path):
    return ""
  with open(path, errors="replace") as f:
    return f.read()


def training_speed(workdir: str) -> str:
  """'<run>: S steps/s, loss L' per `metrics.jsonl` under `workdir` (the last record that
  has a time/steps_per_sec: a window after the first, compiling, one when there are two)."""
  out = []
  if not workdir or not os.path.isdir(workdir):
    return ""
  for path in sorted(glob.glob(os.path.join(workdir, "**", "metrics.jsonl"), recursive=True)):
    timed = []
    for line in _read(path).splitlines():
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        continue
      if "time/steps_per_sec" in record:
        timed.append(record)
    if not timed:
      continue
    last = timed[-1]
    run = os.path.relpath(os.path.dirname(path), workdir)
    text = f"{'' if run == '.' else run + ': '}{last['time/steps_per_sec']:.2f} steps/s"
    if len(timed) == 1:
      text += " (incl. compile)"
    if isinstance(last.get("loss"), (int, float)):
      text += f", loss {last['loss']:.3g} at step {last.get('step')}"
    out.append(text)
  return "; ".join(out)


def _cells(line: str) -> List[str]:
  return [c.strip() for c in line.strip().strip("|").split("|")]


def headlines(md: str, limit: int = 6) -> str:
  """'row: value' for the rows of each markdown table in `md`, taking the most telling
  column (`_HEADLINE_COLUMNS`) of that table."""
  out = []
  lines = md.splitlines()
  for i, line in enumerate(lines[:-1]):
    if not (line.startswith("|") and re.match(r"^\|(\s*:?-+:?\s*\|)+\s*$", lines[i + 1])):
      continue
    header = [c.lower() for c in _cells(line)]
    col = next((header.index(h) for want in _HEADLINE_COLUMNS for h in header if want in h),
               None)
    if col is None:
      continue
    for row in lines[i + 2:]:
      if not row.startswith("|"):
        break
      cells = _cells(row)
      if len(cells) > col:
        # the row's name: its leading cells that are not plain numbers ("64x64 forward")
        key = " ".join(c for c in cells[:min(col, 3)] if c and not _NUMBER.fullmatch(c))
        key = key if len(key) <= 40 else key[:37] + "..."
        out.append(f"{key}: {cells[col]} ({header[col]})")
  if len(out) > limit:
    out = out[:limit] + [f"... {len(out) - limit} more below"]
  return "; ".join(out)


def _status(row: dict) -> str:
  status = row["status"]
  if status.startswith("failed"):
    missing = _MISSING_MODULE.findall(_read(row["log"]))
    if missing:
      status += f": no module {missing[-1]}"
  return status


def _last_line(log: str, pattern: str = r"(bits/dim|accuracy|acc |images/s|\(\d+\.\d s\))") -> str:
  for line in reversed(log.splitlines()):
    if re.search(pattern, line) and not line.startswith("|"):
      return line.strip()[:160]
  return ""


def summary_cell(row: dict) -> str:
  """The headline of one step: training speed and final line (launchers) or table figures."""
  parts = []
  speed = training_speed(row["workdir"])
  if speed:
    parts.append(speed)
  md = _read(row["md"])
  if md:
    parts.append(headlines(md))
  elif row["workdir"]:
    last = _last_line(_read(row["log"]))
    if last:
      parts.append(last)
  if not parts and row["status"] != "ok":
    tail = [l for l in _read(row["log"]).splitlines() if l.strip()][-1:]
    parts.extend(t.strip()[:160] for t in tail)
  return "; ".join(p for p in parts if p).replace("|", "/") or "-"


def assemble(steps_tsv: str, hardware_txt: str, title: Optional[str] = None) -> str:
  """The whole report (markdown)."""
  rows = read_steps(steps_tsv)
  hardware = _read(hardware_txt).strip()
  lines = [f"# {title or 'invjax accelerator benchmark'}", "", hardware, "",
           "| step | what | status | wall s (limit) | result |", "|---|---|---|---|---|"]
  for row in rows:
    lines.append(f"| {row['name']} | {row['what']} | {_status(row)} | "
                 f"{float(row['wall_s']):.0f} ({row['limit_s']}) | {summary_cell(row)} |")
  lines += ["", "## Commands", ""]
  for row in rows:
    lines += [f"* {row['name']}: `{row['command']}`"]
  for row in rows:
    md = _read(row["md"]).strip()
    if md:
      lines += ["", f"## {row['name']}: {row['what']}", "", md]
  return "\n".join(lines) + "\n"


def main(argv: List[str]) -> int:
  if len(argv) not in (4, 5):
    print(__doc__, file=sys.stderr)
    return 2
  text = assemble(argv[1], argv[2], argv[4] if len(argv) == 5 else None)
  with open(argv[3], "w") as f:
    f.write(text)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))

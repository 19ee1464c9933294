"""Fill the results table of benchmarks/README.md from benchmarks/paper/*.yaml (the paper's
figures) and the run results in benchmarks/results/*.json (``results.json`` files written by
``pml-hyper train``, renamed ``<recipe name>[_<anything>].json``).

Usage: python benchmarks/make_table.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pml_hyper.training.config import load_recipe, recipe_files

HERE = Path(__file__).resolve().parent
START, END = "<!-- results:start -->", "<!-- results:end -->"


def run_results(results_dir: Path) -> dict[str, list[dict]]:
    """Training results (JSON with a ``history``) per recipe name; other JSON files are skipped."""
    runs: dict[str, list[dict]] = {}
    for path in sorted(results_dir.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "history" in data and "name" in data:
            runs.setdefault(data["name"], []).append(data)
    return runs


def _values(metrics: dict, names: list[str], scale: float = 1.0) -> str:
    if not metrics:
        return "—"
    return " / ".join("—" if metrics.get(n) is None else f"{scale * metrics[n]:.1f}" for n in names)


def selection(config: dict) -> str:
    """The paper's model selection, ``paper.selection``: ``best`` (best test epoch) or ``last``."""
    chosen = config["paper"].get("selection", "best")
    if chosen not in ("best", "last"):
        raise ValueError(f"{config['name']}: paper.selection must be best or last, got {chosen!r}")
    return chosen


def table(paper_dir: Path, results_dir: Path) -> str:
    """One Markdown row per recipe and run: the paper's Recall@K next to ours, first at the
    epoch the paper selected (``paper.selection``: best test epoch or last epoch), then at the
    other one, with the backbone, hardware and date of the run."""
    runs = run_results(results_dir)
    lines = [
        "| recipe | K | paper | selection | ours (paper's selection) | ours (other) | backbone "
        "| hardware | date |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in recipe_files(paper_dir):  # bases (_base*) are not recipes
        config = load_recipe(path)  # merged onto its defaults: bases
        paper = config["paper"]["metrics"]
        names = list(paper)
        ks = "R@" + "/".join(n.removeprefix("recall_at_") for n in names)
        chosen = selection(config)
        for run in runs.get(config["name"], [None]):
            run = run or {}
            machine = run.get("machine", {})
            hardware = machine.get("gpu") or (f"CPU × {machine['cpus']}" if machine else "—")
            best = _values((run.get("best") or {}).get("metrics"), names, 100)
            last = _values(run.get("last"), names, 100)
            first, other = (best, f"last: {last}") if chosen == "best" else (last, f"best: {best}")
            lines.append(
                f"| {config['name']} | {ks} | {_values(paper, names)} | {chosen} epoch "
                f"| {first} | {other} "
                f"| {run.get('backbone', config['model']['backbone'])} | {hardware} "
                f"| {run.get('date', '—')[:10]} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the README is stale")
    args = parser.parse_args(argv)
    readme = HERE / "README.md"
    text = readme.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    updated = f"{head}{START}\n{table(HERE / 'paper', HERE / 'results')}\n{END}{tail}"
    if args.check:
        if updated != text:
            print("benchmarks/README.md is stale: run python benchmarks/make_table.py")
            return 1
        return 0
    readme.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())

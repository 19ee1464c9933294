"""benchmarks/make_table.py reports each family's model selection first."""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "make_table.py"
spec = importlib.util.spec_from_file_location("make_table", SCRIPT)
make_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_table)


def _recipe(folder: Path, name: str, selection: str | None) -> None:
    paper = {"source": "x", "metrics": {"recall_at_1": 50.0}}
    if selection:
        paper["selection"] = selection
    config = {"name": name, "paper": paper, "model": {"backbone": "resnet50"}}
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture
def dirs(tmp_path):
    paper, results = tmp_path / "paper", tmp_path / "results"
    paper.mkdir(), results.mkdir()
    _recipe(paper, "hier_a", "best")
    _recipe(paper, "hyp_b", "last")
    for name in ("hier_a", "hyp_b"):
        run = {"name": name, "history": [], "best": {"metrics": {"recall_at_1": 0.6}}}
        run["last"] = {"recall_at_1": 0.4}
        (results / f"{name}.json").write_text(json.dumps(run))
    return paper, results


def test_paper_selection_comes_first_and_the_other_beside_it(dirs):
    rows = {line.split("|")[1].strip(): line for line in make_table.table(*dirs).splitlines()}
    cells = [c.strip() for c in rows["hier_a"].split("|")]
    assert cells[4:7] == ["best epoch", "60.0", "last: 40.0"]
    cells = [c.strip() for c in rows["hyp_b"].split("|")]
    assert cells[4:7] == ["last epoch", "40.0", "best: 60.0"]


def test_bad_selection_is_an_error(dirs):
    _recipe(dirs[0], "hist_c", "median")
    with pytest.raises(ValueError, match="paper.selection must be best or last"):
        make_table.table(*dirs)

"""The foundation examples run and show what their docstrings claim."""

import runpy
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_example(name: str) -> dict:
    return runpy.run_path(str(REPO_ROOT / "examples" / f"{name}.py"))


def test_hyperbolic_knn_example_matches_brute_force(capsys):
    results = load_example("hyperbolic_knn")["main"](n_super=4, n_sub=5, per_class=6, dim=16)
    ours, brute = results.values()
    assert ours == pytest.approx(brute, abs=1e-9)
    assert 0 < ours["precision_at_1"] < 1
    assert "HyperbolicKNN" in capsys.readouterr().out


def test_hyp_loss_example_decreases():
    history = load_example("hyp_loss")["main"](steps=12)
    assert history[-1] < 0.2 * history[0]

"""Reliability of runs: the run-folder lock, resume config checks, divergence stops, corrupt
checkpoints, unusable output folders and meaningless configs (tiny synthetic recipe)."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pml_hyper.cli import main
from pml_hyper.training import ConfigError, NonFiniteLossError, Runner, build_config
from pml_hyper.training.trainer import write_atomically


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_second_process_into_a_busy_run_folder_fails_at_once(make_config, tmp_path):
    # far more epochs than the test waits for: the first run must still hold the folder while the
    # second one starts (it is killed at the end)
    raw = make_config("hist", epochs=1_000_000)
    raw["schedule"]["warmup_epochs"] = 0
    config_file = tmp_path / "a.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    out_dir = tmp_path / raw["name"]
    first = subprocess.Popen(
        [sys.executable, "-m", "pml_hyper.cli", "train", str(config_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while not (out_dir / ".lock").exists():
            assert first.poll() is None, first.stderr.read().decode()
            assert time.monotonic() < deadline, "no lock within 120 s"
            time.sleep(0.01)
        second = subprocess.run(
            [sys.executable, "-m", "pml_hyper.cli", "train", str(config_file), "--set", "seed=1"],
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            timeout=120,
        )
        assert first.poll() is None, "the first run should still be training"
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 1
    assert str(out_dir) in second.stderr and str(first.pid) in second.stderr
    # the second run wrote nothing into the folder
    assert (
        not (out_dir / "config.yaml").exists()
        or "seed: 1" not in (out_dir / "config.yaml").read_text()
    )


def test_stale_lock_is_taken_over_and_released(make_config, tmp_path):
    config = build_config(make_config("hist", epochs=1))
    out_dir = tmp_path / "smoke_hist"
    out_dir.mkdir()
    import socket

    (out_dir / ".lock").write_text(f"{_dead_pid()} {socket.gethostname()}\n")
    runner = Runner(config)
    assert (out_dir / ".lock").read_text().split()[0] == str(os.getpid())
    from pml_hyper.training.run_lock import RunFolderBusyError

    with pytest.raises(RunFolderBusyError, match=str(os.getpid())):
        Runner(config)
    runner.run()
    assert not (out_dir / ".lock").exists()
    Runner(config).lock.release()  # free again


def test_temporary_files_have_unique_names(tmp_path):
    seen = []
    for _ in range(2):
        write_atomically(tmp_path / "x.pt", lambda p: (seen.append(p.name), p.write_text("x")))
    assert seen[0] != seen[1] and str(os.getpid()) in seen[0]
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_resume_with_changed_config_is_refused_unless_allowed(make_config, tmp_path, capsys):
    raw = make_config("hist", epochs=1)
    raw["schedule"]["warmup_epochs"] = 0
    config_file = tmp_path / "hist.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    assert main(["train", str(config_file)]) == 0
    out_dir = tmp_path / "smoke_hist"
    before = (out_dir / "results.json").read_text()
    changed = ["--set", "optimizer.lr=0.5", "--set", "loss.terms.0.kwargs.alpha=2.0"]
    assert main(["train", str(config_file), "--resume", *changed]) == 2
    err = capsys.readouterr().err
    assert "optimizer.lr" in err and "loss.terms.0.kwargs.alpha" in err
    assert (out_dir / "results.json").read_text() == before  # nothing recorded
    # extending the run is allowed as is; other keys only when named
    extend = ["--set", "schedule.epochs=2", "--set", "optimizer.lr=0.5"]
    args = ["train", str(config_file), "--resume", *extend]
    assert main([*args, "--allow-config-change", "optimizer.lr"]) == 0
    results = json.loads((out_dir / "results.json").read_text())
    assert results["status"] == "finished" and results["epochs_completed"] == 2
    assert results["resume_config_changes"] == {"optimizer.lr": {"checkpoint": 1.0e-3, "now": 0.5}}


def test_sgd_huge_lr_stops_cleanly_keeping_the_last_good_checkpoint(make_config, tmp_path):
    raw = make_config("hist", epochs=4)
    # epoch 1 trains the losses' parameters only (backbone lr 0, head lr ~0), then lr 1e3
    raw["optimizer"] = {"name": "sgd", "lr": 1.0e3, "head_lr_scale": 1.0e-6}
    raw["schedule"].update(warmup_epochs=1, warmup_freeze="lr")
    runner = Runner(build_config(raw))
    with pytest.raises(NonFiniteLossError, match="last good checkpoint is kept"):
        runner.run()
    results = json.loads((runner.out_dir / "results.json").read_text())
    assert results["status"] == "failed" and "non-finite" in results["error"]
    state = torch.load(runner.out_dir / "last.pt", weights_only=True)
    assert state["epoch"] == results["epochs_completed"] >= 1
    assert all(torch.isfinite(v).all() for v in state["models"]["trunk"].values())
    assert not (runner.out_dir / ".lock").exists()


def test_nan_evaluation_embeddings_stop_before_the_tester(make_config, tmp_path, monkeypatch):
    runner = Runner(build_config(make_config("hyp", epochs=2)))
    forward = runner.model.forward
    monkeypatch.setattr(
        runner.model,
        "forward",
        lambda x: forward(x) * (float("nan") if not runner.model.training else 1),
    )
    with pytest.raises(NonFiniteLossError, match="non-finite embeddings"):
        runner.run()
    results = json.loads((runner.out_dir / "results.json").read_text())
    assert results["status"] == "failed" and not (runner.out_dir / "last.pt").exists()


def test_any_error_finalises_results_as_failed(make_config, monkeypatch):
    runner = Runner(build_config(make_config("hist", epochs=2)))
    monkeypatch.setattr(runner.bookkeeper, "evaluate", lambda epoch: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        runner.run()
    results = json.loads((runner.out_dir / "results.json").read_text())
    assert results["status"] == "failed" and "ZeroDivisionError" in results["error"]


def test_loss_blowup_warns(make_config):
    runner = Runner(build_config(make_config("hist", epochs=2)))
    runner.bookkeeper.history = [{"epoch": 1, "loss": 1.0}]
    with pytest.warns(RuntimeWarning, match="diverging"):
        runner.bookkeeper.warn_loss_blowup(2, 1.0e8)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    spec = importlib.util.spec_from_file_location(
        "_recipes", Path(__file__).with_name("conftest.py")
    )
    recipes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipes)
    tmp_path = tmp_path_factory.mktemp("run")
    raw = recipes.recipe_config("hyp", tmp_path, epochs=1)
    Runner(build_config(raw)).run()
    return tmp_path / raw["name"]


@pytest.mark.parametrize("kind", ["empty", "truncated", "random", "state_dict", "no_config"])
def test_corrupt_or_foreign_checkpoints_give_one_clear_error(trained_run, tmp_path, kind, capsys):
    good = (trained_run / "best.pt").read_bytes()
    path = tmp_path / "bad.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "state_dict":
        torch.save(torch.load(trained_run / "best.pt", weights_only=True)["models"]["trunk"], path)
    else:
        state = torch.load(trained_run / "best.pt", weights_only=True)
        torch.save({k: v for k, v in state.items() if k != "config"}, path)
    assert main(["evaluate", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err and "weights_only" not in err


def test_evaluate_accepts_a_run_folder(trained_run, capsys):
    assert main(["evaluate", str(trained_run)]) == 0
    assert "recall_at_1" in capsys.readouterr().out


def test_evaluate_refuses_model_overrides(trained_run, capsys):
    assert main(["evaluate", str(trained_run / "best.pt"), "--set", "model.head=hist"]) == 2
    assert "model.head" in capsys.readouterr().err


@pytest.mark.parametrize("problem", ["parent_is_file", "unwritable"])
def test_unusable_output_folder_is_a_clear_error(make_config, tmp_path, problem):
    raw = make_config("hist", epochs=1)
    if problem == "parent_is_file":
        (tmp_path / "file").write_text("")
        target = tmp_path / "file" / "run"
    else:
        if os.geteuid() == 0:
            pytest.skip("root can write anywhere")
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "run"
    raw["output"]["dir"] = str(target)
    with pytest.raises(ConfigError, match=str(target)):
        Runner(build_config(raw))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"schedule": {"epochs": 0}}, "schedule.epochs"),
        ({"schedule": {"epochs": -2}}, "schedule.epochs"),
        ({"data": {"images_per_class": 1}}, "images_per_class"),
        ({"data": {"synthetic": {"num_classes": 1}}}, "at least 2"),
    ],
)
def test_meaningless_runs_are_config_errors(make_config, change, message):
    raw = make_config("hyp", epochs=1)
    for section, values in change.items():
        for key, value in values.items():
            if isinstance(value, dict):
                raw[section][key].update(value)
            else:
                raw[section][key] = value
    with pytest.raises(ValueError, match=message):
        Runner(build_config(raw))


def test_empty_config_file_is_an_error(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert main(["train", str(empty)]) == 2
    assert "empty" in capsys.readouterr().err

"""A run killed with SIGKILL after its first checkpoint and resumed with --resume ends with
the same weights and metrics as an uninterrupted run (CPU, deterministic); an allowed config
change takes effect in the resumed run."""

import json
import os
import signal
import subprocess
import sys
import time

import torch
import yaml

from pml_hyper.cli import main
from pml_hyper.training import Runner, build_config

EPOCHS = 4


def _final_state(out_dir):
    return torch.load(out_dir / "last.pt", weights_only=True)


def test_resume_after_sigkill_matches_uninterrupted_run(make_config, tmp_path):
    raw = make_config("pa_hier", epochs=EPOCHS)
    config_file = tmp_path / "killed.yaml"
    killed = dict(raw, name="killed")
    config_file.write_text(yaml.safe_dump(killed))
    out_dir = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "pml_hyper.cli", "train", str(config_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 120
    while not (out_dir / "last.pt").exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert _final_state(out_dir)["epoch"] < EPOCHS, "the run finished before it was killed"

    torch.set_num_threads(1)
    resumed = Runner(build_config(killed), resume=True).run()
    uninterrupted = Runner(build_config(dict(raw, name="uninterrupted"))).run()

    assert resumed["history"] == uninterrupted["history"]
    assert resumed["best"] == uninterrupted["best"]
    a, b = _final_state(out_dir), _final_state(tmp_path / "uninterrupted")
    for group in ("models", "loss_funcs"):
        for key, state in a[group].items():
            for name, tensor in state.items():
                torch.testing.assert_close(tensor, b[group][key][name], atol=0, rtol=0)


def test_allowed_lr_change_takes_effect_on_resume(make_config, tmp_path, capsys):
    raw = make_config("hist", epochs=1)
    raw["schedule"].update(warmup_epochs=0, lr_decay="step", step_epochs=1, gamma=0.5)
    config_file = tmp_path / "hist.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    assert main(["train", str(config_file)]) == 0
    out_dir = tmp_path / raw["name"]
    first = _final_state(out_dir)["bookkeeper"]["history"]
    assert first[0]["lr"]["head"] == 1.0e-3 * 0.5  # after epoch 1: one decay step

    fixed = ["--set", "optimizer.name=sgd", "--allow-config-change", "optimizer.name"]
    assert main(["train", str(config_file), "--resume", *fixed]) == 2
    assert "optimizer.name cannot change in a resumed run" in capsys.readouterr().err
    # a batch size that changes the epoch's length would shift the lr schedule
    resized = ["--set", "data.batch_size=6", "--allow-config-change", "data.batch_size"]
    assert main(["train", str(config_file), "--resume", *resized]) == 2
    assert "have 4 iterations, this run's 8" in capsys.readouterr().err

    changed = ["--set", "schedule.epochs=2", "--set", "optimizer.lr=0.5"]
    allowed = ["--allow-config-change", "optimizer.lr"]
    assert main(["train", str(config_file), "--resume", *changed, *allowed]) == 0
    results = json.loads((out_dir / "results.json").read_text())
    assert results["resume_config_changes"] == {"optimizer.lr": {"checkpoint": 1.0e-3, "now": 0.5}}
    assert results["history"][0] == json.loads(json.dumps(first[0]))
    # after epoch 2: the new lr times the schedule's factor (two decay steps)
    assert results["history"][1]["lr"]["head"] == 0.5 * 0.5**2
    assert results["history"][1]["lr"]["backbone"] == 0.5 * 0.5**2

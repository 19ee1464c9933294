"""A run killed with SIGKILL after its first checkpoint and resumed with --resume ends with
the same weights and metrics as an uninterrupted run (CPU, deterministic)."""

import os
import signal
import subprocess
import sys
import time

import torch
import yaml

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

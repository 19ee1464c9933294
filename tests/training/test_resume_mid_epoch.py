"""A run checkpointing every few iterations, SIGKILLed within an epoch and resumed with
``--resume``, ends with the same weights as an uninterrupted run: the resumed epoch sees the
same batches (sampler order and augmentation randomness) from its next iteration on."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

# the CLI with a random augmentation of the synthetic images and dropout on the embeddings
# (both from torch's global RNG, interleaved as data loading and training are); with PAUSE_AT
# "epoch,iteration" it writes a marker after that iteration and waits to be killed
SCRIPT = """
import os, sys, time
import torch
from pml_hyper.cli import main
from pml_hyper.data import SyntheticImages
from pml_hyper.training.bookkeeper import RunBookkeeper
from pml_hyper.training.trainer import MetricLossTrainer

get = SyntheticImages.__getitem__

def augmented(self, index):
    image, label = get(self, index)
    if torch.rand(()) < 0.5:
        image = image.flip(-1)
    return image + 0.05 * torch.randn_like(image), label

SyntheticImages.__getitem__ = augmented
embed = MetricLossTrainer.compute_embeddings
MetricLossTrainer.compute_embeddings = lambda self, data: torch.nn.functional.dropout(
    embed(self, data), 0.2
)
if os.environ.get("PAUSE_AT"):
    pause = tuple(map(int, os.environ["PAUSE_AT"].split(",")))
    end_of_iteration = RunBookkeeper.end_of_iteration

    def end_and_pause(self, trainer):
        end_of_iteration(self, trainer)
        if (trainer.epoch, trainer.iteration) == pause:
            open(os.environ["PAUSE_MARKER"], "w").close()
            time.sleep(600)

    RunBookkeeper.end_of_iteration = end_and_pause
sys.exit(main(sys.argv[1:]))
"""


def _cli(script, args, **env):
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )


def _finish(process):
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err.decode()


@pytest.mark.parametrize(
    ("iterations_per_epoch", "every", "pause_at", "position"),
    [
        (None, 2, (2, 2), 2),  # 4 batches a pass: killed after iteration 3, resumed at 3
        (6, 5, (2, 5), 5),  # 6 iterations, a second pass from iteration 4: resumed at 6
    ],
)
def test_sigkill_within_an_epoch_then_resume_matches_uninterrupted_run(
    make_config, tmp_path, iterations_per_epoch, every, pause_at, position
):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    raw = make_config("hist", epochs=3)
    raw["schedule"]["iterations_per_epoch"] = iterations_per_epoch
    raw["output"]["checkpoint_every_iterations"] = every
    files = {}
    for name in ("killed", "uninterrupted"):
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump(dict(raw, name=name)))
    marker = tmp_path / "paused"
    killed = _cli(
        script,
        ["train", str(files["killed"])],
        PAUSE_AT=",".join(map(str, pause_at)),
        PAUSE_MARKER=str(marker),
    )
    uninterrupted = _cli(script, ["train", str(files["uninterrupted"])])
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert killed.poll() is None, killed.stderr.read().decode()
        assert time.monotonic() < deadline, "the run did not reach the pause within 240 s"
        time.sleep(0.01)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    killed.stderr.close()
    state = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert state["epoch"] == pause_at[0] and state["position"]["iteration"] == position
    assert len(state["bookkeeper"]["epoch_losses"]) == position

    _finish(_cli(script, ["train", str(files["killed"]), "--resume"]))
    _finish(uninterrupted)

    a, b = (torch.load(tmp_path / n / "last.pt", weights_only=True) for n in files)
    assert a["epoch"] == b["epoch"] == 3 and a["position"] is b["position"] is None
    for group in ("models", "loss_funcs"):
        for key, tensors in b[group].items():
            assert tensors.keys() == a[group][key].keys()
            for name, tensor in tensors.items():
                assert torch.equal(a[group][key][name], tensor), f"{group}.{key}.{name}"
    assert a["bookkeeper"]["history"] == b["bookkeeper"]["history"]

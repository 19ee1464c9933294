"""A run's outputs: output-folder check, record keeper, machine info and the Recall@K curves."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import torch
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import logging_presets

from .config import ConfigError

PROBE_PREFIX = ".write-test-"
"""Name prefix of :func:`check_output_dir`'s probe file (the process id follows)."""


def check_output_dir(folder: Path) -> None:
    """Create ``folder`` and check up front that files can be written in it (a probe file,
    removed again): an unusable folder (``PermissionError``, a file in the way, ...) is a
    ``ConfigError`` naming the folder. On failure nothing this check created is left behind."""
    folder = Path(folder)
    created = [path for path in (folder, *folder.parents) if not path.exists()]
    probe = folder / f"{PROBE_PREFIX}{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            probe.write_text("")
        finally:
            probe.unlink(missing_ok=True)
    except OSError as error:
        for path in created:  # deepest first; only the empty folders made here
            with contextlib.suppress(OSError):
                path.rmdir()
        reason = error.strerror or type(error).__name__
        raise ConfigError(
            f"output folder {folder} cannot be used: {reason} ({error.filename or folder}); "
            "set output.dir to a writable folder"
        ) from None


def build_record_keeper(folder: Path):
    """PML's record keeper (CSV/SQLite, TensorBoard when installed); without tensorboard PML's
    preset returns nothing, so the record keeper is built directly (docs/pml.md#logging)."""
    record_keeper, _, _ = logging_presets.get_record_keeper(
        str(folder / "logs"), str(folder / "tensorboard")
    )
    if record_keeper is None:
        import record_keeper as rk

        record_keeper = rk.RecordKeeper(
            tensorboard_writer=None,
            record_writer=rk.RecordWriter(str(folder / "logs")),
            attributes_to_search_for=c_f.list_of_recordable_attributes_list_names(),
        )
    return record_keeper


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    """Training loss and Recall@K per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_recall) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([h["epoch"] for h in history], [h["loss"] for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title=title)
    evaluated = [h for h in history if "metrics" in h]
    for metric in dict.fromkeys(m for h in evaluated for m in h["metrics"]):
        found = [h for h in evaluated if metric in h["metrics"]]
        values = [100 * h["metrics"][metric] for h in found]
        ax_recall.plot([h["epoch"] for h in found], values, marker="o", label=metric)
    ax_recall.set(xlabel="epoch", ylabel="%", title="Recall@K (test)")
    if evaluated:
        ax_recall.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

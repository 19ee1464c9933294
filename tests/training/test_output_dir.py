"""The up-front output-folder check: a clear error naming the folder, nothing left behind.

Root ignores file modes, so a PermissionError is simulated by making the write probe (or the
folder creation) fail, which also runs as root."""

import errno
from pathlib import Path

import pytest

from pml_hyper.training import ConfigError, Runner, build_config
from pml_hyper.training.results import PROBE_PREFIX, check_output_dir


def refuse(monkeypatch, method: str, error: OSError, create_first: bool = False) -> None:
    """Make ``Path.<method>`` raise ``error`` (with the path as its filename) for the write
    probe (``write_text``) or for folders named ``run`` (``mkdir``); other calls work. With
    ``create_first`` the probe file exists before the error, as after a partial write."""
    original = getattr(Path, method)

    def targeted(path: Path) -> bool:
        return path.name.startswith(PROBE_PREFIX) if method == "write_text" else path.name == "run"

    def failing(self, *args, **kwargs):
        if targeted(self):
            if create_first:
                original(self, *args, **kwargs)
            raise type(error)(error.errno, error.strerror, str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, method, failing)


DENIED = PermissionError(errno.EACCES, "Permission denied")


def test_unwritable_folder_names_it_and_leaves_nothing(monkeypatch, tmp_path):
    target = tmp_path / "a" / "b" / "run"
    refuse(monkeypatch, "write_text", DENIED)
    with pytest.raises(ConfigError, match="Permission denied") as raised:
        check_output_dir(target)
    assert f"output folder {target} cannot be used" in str(raised.value)
    assert "set output.dir to a writable folder" in str(raised.value)
    assert list(tmp_path.iterdir()) == []  # the folders made for the check are gone


def test_failed_folder_creation_names_it(monkeypatch, tmp_path):
    target = tmp_path / "a" / "run"
    refuse(monkeypatch, "mkdir", DENIED)
    with pytest.raises(ConfigError, match=f"output folder {target} cannot be used"):
        check_output_dir(target)
    assert list(tmp_path.iterdir()) == []


def test_partial_probe_is_removed_and_existing_folder_kept(monkeypatch, tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "old.txt").write_text("kept")
    refuse(monkeypatch, "write_text", OSError(errno.ENOSPC, "No space left on device"), True)
    with pytest.raises(ConfigError, match="No space left on device"):
        check_output_dir(target)
    assert [p.name for p in target.iterdir()] == ["old.txt"]


def test_usable_folder_is_created_and_left_clean(tmp_path):
    target = tmp_path / "a" / "run"
    check_output_dir(target)
    assert target.is_dir() and list(target.iterdir()) == []


def test_runner_checks_the_folder_up_front(monkeypatch, make_config, tmp_path):
    raw = make_config("hist", epochs=1)
    target = tmp_path / "out" / "run"
    raw["output"]["dir"] = str(target)
    refuse(monkeypatch, "write_text", DENIED)
    with pytest.raises(ConfigError, match=f"output folder {target} cannot be used"):
        Runner(build_config(raw))
    assert not (tmp_path / "out").exists()

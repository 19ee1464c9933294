"""An exclusive, stale-safe lock on a run's output folder."""

from __future__ import annotations

import os
import socket
from pathlib import Path


class RunFolderBusyError(RuntimeError):
    """Another live process holds the run folder's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class RunLock:
    """A ``.lock`` file in ``folder`` holding ``pid host``, created exclusively.

    A lock whose process no longer runs on this host (a killed run) is stale and taken over.
    ``release`` (or leaving the ``with`` block) removes it.

    Args:
        folder: the run folder (created when missing).
    """

    FILE = ".lock"

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / self.FILE
        self.held = False

    def _holder(self) -> tuple[int | None, str]:
        try:
            text = self.path.read_text().split()
            return int(text[0]), text[1] if len(text) > 1 else ""
        except (OSError, ValueError, IndexError):
            return None, ""

    def acquire(self) -> RunLock:
        """Take the lock, or raise :class:`RunFolderBusyError` naming the folder and holder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid, holder_host = self._holder()
                if pid is not None and (holder_host != host or _alive(pid)):
                    raise RunFolderBusyError(
                        f"run folder {self.folder} is in use by process {pid} on "
                        f"{holder_host or 'this host'} (lock file {self.path}); wait for it, "
                        "or give this run another name or output.dir"
                    ) from None
                # stale (dead process) or unreadable: take it over
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()} {host}\n")
            self.held = True
            return self
        raise RunFolderBusyError(f"could not take the lock {self.path} of run folder {self.folder}")

    def release(self) -> None:
        """Remove the lock file when this process holds it."""
        if self.held:
            pid, _ = self._holder()
            if pid == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

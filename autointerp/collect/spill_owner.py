"""Who owns a spill folder, so spills left by a killed collect can be found and deleted.

A process killed outright (kill -9, the OOM killer) cannot delete its `.autointerp-spill-*` folder, and
with the default --spill-gb a large run leaves gigabytes. The owner therefore holds an exclusive `flock`
on `owner.lock` inside its folder, with its PID written there for people. The kernel drops the lock
when the process dies, whatever killed it, so `remove_orphaned_spills` (run at the start of every collect)
deletes exactly the folders whose owner is gone and never one that a concurrent collect is still
writing; a lock is also immune to PID reuse, which a bare PID check is not.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

SPILL_PREFIX = ".autointerp-spill-"
LOCK_NAME = "owner.lock"
# A folder without a lock file is either from before lock files or mid-creation (mkdtemp, then the lock
# a moment later); only an old one is an orphan.
UNLOCKED_GRACE_S = 60.0


def claim(directory: Path) -> IO[str]:
    """Lock `directory` for this process and record its PID; keep the handle open while the folder lives
    and close it only after the folder is removed (so no cleaner ever sees a live folder unlocked)."""
    handle = (directory / LOCK_NAME).open("w")
    fcntl.flock(handle, fcntl.LOCK_EX)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def owner_alive(directory: Path) -> bool:
    """True while some process holds the folder's lock (or it is too young to have one yet)."""
    lock = directory / LOCK_NAME
    if not lock.exists():
        try:
            return time.time() - directory.stat().st_mtime < UNLOCKED_GRACE_S
        except FileNotFoundError:
            return True  # removed meanwhile by someone else: nothing to do
    try:
        with lock.open("rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, FileNotFoundError):
        return True
    return False  # we got the lock (released on close): its owner is dead


def remove_orphaned_spills(parent: Path) -> list[Path]:
    """Delete the spill folders in `parent` whose owning process is gone; returns what was removed."""
    removed = []
    for directory in sorted(Path(parent).glob(SPILL_PREFIX + "*")):
        if directory.is_dir() and not owner_alive(directory):
            log.warning("removing the spill folder %s left by a collect that was killed", directory)
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed

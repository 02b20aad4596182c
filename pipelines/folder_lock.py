"""One writer per output folder.

    with folder_lock(out, "duchkit run"):
        ...                                      # nobody else writes into `out` meanwhile

The lock is an advisory `flock` on `<out>/.duchkit.lock`, which names its holder (PID, host,
command, start time). The operating system drops it when the holder dies, however it dies, so
a lock left by a killed run is simply taken over (and the log says whose it was). A second
writer gets a ConfigError naming the holder. Re-entrant within one process: a study that runs
the pipeline into the folder it already holds does not block itself.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from duchkit.pipelines.stage import ConfigError

LOCK_FILE = ".duchkit.lock"
log = logging.getLogger("duchkit")
_HELD: dict[Path, list] = {}  # folder -> [file object, depth]


def _holder(text: str) -> dict:
    try:
        value = json.loads(text)
        return value if isinstance(value, dict) else {}
    except json.JSONDecodeError:
        return {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def folder_lock(folder: Path, command: str = "duchkit") -> Iterator[None]:
    folder = Path(folder).resolve()
    if folder in _HELD:
        _HELD[folder][1] += 1
        try:
            yield
        finally:
            _HELD[folder][1] -= 1
        return
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file, not an output folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_FILE, "a+", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write into {folder}: {exc.strerror}") from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        who = _holder(handle.read())
        handle.close()
        raise ConfigError(
            f"{folder} is in use by {who.get('command', 'another duchkit process')} (PID "
            f"{who.get('pid', '?')} on {who.get('host', '?')}, since {who.get('started', '?')}): "
            "wait for it to finish or choose another output folder") from None
    handle.seek(0)
    before = _holder(handle.read())
    host = socket.gethostname()
    if before.get("pid") and before.get("pid") != os.getpid():
        gone = before.get("host") == host and not _alive(int(before["pid"]))
        log.warning("%s: took over the lock of PID %s on %s (%s)", folder, before.get("pid"),
                    before.get("host"), "no longer running" if gone else "lock released")
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": host, "command": command,
                             "started": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    handle.flush()
    _HELD[folder] = [handle, 1]
    try:
        yield
    finally:
        _HELD.pop(folder, None)
        handle.seek(0)
        handle.truncate()  # an empty lock file: nobody holds the folder
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()

"""Worker processes end when the process that started them ends, however it ends: a SIGKILL
of a run leaves no chance to shut its pools down, and an encoder process holds ~0.5-0.85 GB.

`die_with_parent()` arms the kernel's parent-death signal (Linux) and a watchdog thread (any
POSIX system) in a worker. Workers that come from a forkserver have the server as their parent,
so the server arms it too: importing `forkserver_guard` (in the server's preload list) does.
"""
from __future__ import annotations

import os
import signal
import threading
import time


def die_with_parent() -> None:
    """End this process when its parent ends (call it first thing in a worker)."""
    import ctypes

    parent = os.getppid()
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="duchkit-die-with-parent").start()

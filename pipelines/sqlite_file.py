"""One SQLite file that several processes and threads read and write at once: the base of the
output folder's caches (translation memory, clean-view embeddings).

WAL mode and a busy timeout let worker processes share the file; one connection per thread,
because SQLite connections may not cross threads and engines (Ray actors, for one) set a stage
up in one thread and call it from another. An object pickles as its path, so a stage holding
one travels to worker processes without its connection.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from duchkit.pipelines.stage import ConfigError

CHUNK = 500  # keys per IN (...) query: SQLite's bound-parameter limit is 999 on old builds
BUSY_SECONDS = 60


def _wal(db: sqlite3.Connection) -> None:
    """Switch to WAL. The switch needs the file to itself, and SQLite's busy timeout does not
    wait for it: two workers opening a new cache at once (Ray actors setting up a stage) got
    "database is locked". Retry until the busy timeout instead."""
    deadline = time.monotonic() + BUSY_SECONDS
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class SQLiteFile:
    SCHEMA = ""  # the CREATE TABLE IF NOT EXISTS statement of the subclass

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        try:
            db = self._db
            db.execute(self.SCHEMA)
            db.commit()
        except sqlite3.DatabaseError as exc:  # a damaged or foreign file: name it, not a traceback
            raise ConfigError(f"{self.path}: not a usable duchkit cache ({exc}); it holds only "
                              "results that can be recomputed: delete it and rerun") from None

    @property
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite3.connect(self.path, timeout=BUSY_SECONDS)
            _wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
        return db

    def close(self) -> None:
        self._db.close()

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

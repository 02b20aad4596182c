"""The persistent translation memory: one SQLite file under the output folder's cache dir.

Keys are (namespace, source text); the namespace is the translator's JSON description of
backend, model id + revision, languages, precision and decoding parameters, so a translation is
only reused where it would come out the same. SQLite because several worker processes may read
and write at once (WAL mode, a busy timeout) and any tool can open the file.
"""
from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

_CHUNK = 500  # SQLite's bound-parameter limit is 999 on old builds


class SQLiteTranslationCache:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One connection per thread: SQLite connections may not cross threads, and engines
        # (Ray actors, for one) set a stage up in one thread and call it from another.
        self._local = threading.local()
        db = self._db
        db.execute("CREATE TABLE IF NOT EXISTS translations (namespace TEXT NOT NULL, "
                   "source TEXT NOT NULL, target TEXT NOT NULL, note TEXT, "
                   "PRIMARY KEY (namespace, source)) WITHOUT ROWID")
        db.commit()

    @property
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite3.connect(self.path, timeout=60)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
        return db

    def lookup(self, namespace: str, texts: list[str]) -> dict[str, tuple[str, str | None]]:
        found: dict[str, tuple[str, str | None]] = {}
        for i in range(0, len(texts), _CHUNK):
            part = texts[i:i + _CHUNK]
            marks = ",".join("?" * len(part))
            for source, target, note in self._db.execute(
                    f"SELECT source, target, note FROM translations WHERE namespace = ? "
                    f"AND source IN ({marks})", [namespace, *part]):
                found[source] = (target, note)
        return found

    def store(self, namespace: str, items: dict[str, tuple[str, str | None]]) -> None:
        if not items:
            return
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO translations VALUES (?, ?, ?, ?)",
                [(namespace, s, t, n) for s, (t, n) in items.items()])

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM translations").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    # The stage object travels to worker processes; the connection must not.
    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

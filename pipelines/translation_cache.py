"""The persistent translation memory: one SQLite file under the output folder's cache dir.

Keys are (namespace, source text); the namespace is the translator's JSON description of
backend, model id + revision, languages, precision and decoding parameters, so a translation is
only reused where it would come out the same. SQLite because several worker processes may read
and write at once (WAL mode, a busy timeout) and any tool can open the file.
"""
from __future__ import annotations

from duchkit.pipelines.sqlite_file import CHUNK, SQLiteFile


class SQLiteTranslationCache(SQLiteFile):
    SCHEMA = ("CREATE TABLE IF NOT EXISTS translations (namespace TEXT NOT NULL, "
              "source TEXT NOT NULL, target TEXT NOT NULL, note TEXT, "
              "PRIMARY KEY (namespace, source)) WITHOUT ROWID")

    def lookup(self, namespace: str, texts: list[str]) -> dict[str, tuple[str, str | None]]:
        found: dict[str, tuple[str, str | None]] = {}
        for i in range(0, len(texts), CHUNK):
            part = texts[i:i + CHUNK]
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

"""SQLiteFile: many workers opening one new cache at the same moment all get it."""
from __future__ import annotations

import threading

from duchkit.pipelines.sqlite_file import SQLiteFile


class Cache(SQLiteFile):
    SCHEMA = "CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT)"


def test_concurrent_opens_of_a_new_file_all_succeed(tmp_path):
    # each open switches the file to WAL, which needs it alone: without waiting for that,
    # Ray actors setting up one stage failed with "database is locked"
    for round_ in range(5):
        path = tmp_path / f"c{round_}.sqlite"
        n, errors = 12, []
        start = threading.Barrier(n)

        def open_it():
            start.wait()
            try:
                Cache(path)._db.execute("INSERT OR IGNORE INTO kv VALUES ('a', 'b')").connection.commit()
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors

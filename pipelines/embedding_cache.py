"""Clean-view embeddings shared by the image stages of one output folder: one SQLite file under
the folder's cache dir.

Every augmentation setup of a study (and any pipeline with several `embed-images` stages) starts
from the same view 0, the centre crop the trainer uses as the clean image. Encoding it once per
setup repeated the same work (on full UCM a quarter of the offline Table II's time). So an
`embed-images` stage looks its view-0 rows up here before encoding and stores what it computed.

Keys: (namespace, view key). The namespace is the encoder's identity (model spec and resolved
version, architecture, input size, precision, runtime, device), so an embedding is only reused
where the same encoder would compute it; the view key is the image file (path, size, mtime)
and the view spec, so a changed image is a miss. SQLite for the same reasons as the translation
memory (pipelines/translation_cache.py): several processes read and write at once.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from duchkit.pipelines.sqlite_file import CHUNK, SQLiteFile


def view_key(image_path: str, spec: str) -> str:
    """The file's identity as make sees it (path, size, mtime) and the view spec."""
    st = Path(image_path).stat()
    return f"{image_path}\x1f{st.st_size}\x1f{st.st_mtime_ns}\x1f{spec}"


class EmbeddingCache(SQLiteFile):
    SCHEMA = ("CREATE TABLE IF NOT EXISTS embeddings (namespace TEXT NOT NULL, "
              "key TEXT NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (namespace, key)) "
              "WITHOUT ROWID")

    def lookup(self, namespace: str, keys: list[str], dim: int) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for i in range(0, len(keys), CHUNK):
            part = keys[i:i + CHUNK]
            marks = ",".join("?" * len(part))
            for key, blob in self._db.execute(
                    f"SELECT key, vector FROM embeddings WHERE namespace = ? AND key IN ({marks})",
                    [namespace, *part]):
                vec = np.frombuffer(blob, np.float32)
                if vec.shape == (dim,):  # anything else is not this encoder's: recompute
                    found[key] = vec
        return found

    def store(self, namespace: str, items: dict[str, np.ndarray]) -> None:
        if not items:
            return
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?)",
                [(namespace, k, np.ascontiguousarray(v, np.float32).tobytes())
                 for k, v in items.items()])

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]

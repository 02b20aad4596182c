"""Everything about data at rest and in flight: dataset readers, the Parquet shard store and
manifests, the stage runner and its engines, encoders, and the `duchkit` command line."""
from duchkit.pipelines.version import __version__

__all__ = ["__version__"]

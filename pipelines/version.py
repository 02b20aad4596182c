"""The installed package version, recorded in every manifest."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("duchkit")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

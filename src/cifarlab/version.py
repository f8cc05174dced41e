"""The package version, read from the installed package's metadata (pyproject.toml)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cifarlab")
except PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0+unknown"

"""tbps service: settings, database, search logic, HTTP API and the `tbps` command."""

from importlib.metadata import PackageNotFoundError, version

try:  # the one version: pyproject.toml's, as installed (`make setup`)
    __version__ = version("tbps")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"

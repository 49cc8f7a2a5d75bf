"""sent: a transformer sentiment classifier from data to a monitored service."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sent")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

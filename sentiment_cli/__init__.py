"""sent: a transformer sentiment classifier from data to a monitored service."""


def __getattr__(name: str) -> str:
    # Resolved on first use: importlib.metadata costs ~50 ms that `sent --help` need not pay.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("sent")
        except PackageNotFoundError:  # running from a source tree without installing
            return "0.0.0+unknown"
    raise AttributeError(name)

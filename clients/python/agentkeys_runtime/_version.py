"""The package version, shared by the metadata sent to the daemon and ``__version__``."""

__version__ = "0.1.0"

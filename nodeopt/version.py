"""The version of nodeopt (one place; the package and the run directory read it)."""

__version__ = "0.1.0"

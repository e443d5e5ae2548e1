"""phiquant's version, importable from every floor (the package root imports the API lazily)."""

__version__ = "0.1.0"

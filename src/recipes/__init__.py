"""recipes: back up and restore applications the way their own documentation says."""

__version__ = "0.1.0"

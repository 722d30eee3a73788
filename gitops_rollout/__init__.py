"""Roll out new versions of ML models safely, through Git pull requests."""

__version__ = "0.1.0"

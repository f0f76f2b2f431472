"""salience: explain and guide image classifiers with salience maps, at scale."""

__version__ = "0.1.0"

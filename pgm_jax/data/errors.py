"""The one exception type of the data module."""


class DataError(ValueError):
    """A problem with the user's data or data config, reported in one line."""

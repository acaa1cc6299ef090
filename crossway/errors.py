"""Errors a user can act on. The CLI prints them as one line, never as a traceback."""


class CrosswayError(Exception):
    """Base class: anything wrong with the user's input, configuration or files."""


class DataError(CrosswayError):
    """Bad data: the message names the file, the line and what is wrong."""


class ConfigError(CrosswayError):
    """Bad configuration: the message names the key and the valid choices."""


class CheckpointError(CrosswayError):
    """A run directory or checkpoint that cannot be loaded."""

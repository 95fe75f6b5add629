"""Error types. Every bad input raises a BiojaxError subclass whose message names the
file, the field and what was expected; the CLI prints it without a traceback."""


class BiojaxError(Exception):
    """Base class for every error biojax raises on bad input or a failed run."""


class ConfigError(BiojaxError):
    """A configuration file or option is missing, malformed or has an unknown key."""


class DataError(BiojaxError):
    """A data file is missing, malformed or lacks a required field."""


class ModelError(BiojaxError):
    """A saved model is missing or cannot be used for the given input."""


class SimulationError(BiojaxError):
    """A simulation cannot start or has become unstable."""


class AnalysisError(BiojaxError):
    """An analysis request does not fit its input."""

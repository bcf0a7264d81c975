"""User-facing errors. The CLI prints their message and exits non-zero, without a traceback."""


class LmrecError(Exception):
    """An error caused by user input (a file, a config value, a flag); the message says how to fix it."""


class ConfigError(LmrecError):
    """A config file or override is invalid."""


class DataError(LmrecError):
    """A data file is missing, malformed, or lacks a required column."""


class StoreError(LmrecError):
    """Invalid input to the user-state store (an id, an event, a vector), or the store cannot be reached."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached or stayed locked: nothing was wrong with the request, a retry may succeed."""


class RolloutError(LmrecError):
    """A request met replicas of two models while a new one rolls out (one model's user vector, the other's
    index): nothing was wrong with the request, a retry succeeds."""


class RetrievalError(LmrecError):
    """Invalid input to the item index (a query shape, a filter, an upsert)."""


class UnknownItemError(LmrecError):
    """The model has no vector of the item asked about (unknown to it, or waiting to be re-encoded)."""


class Failure(LmrecError):
    """Nothing was wrong with the input, but the work could not be done (a service that did not start, a
    step that failed): the CLI exits with status 1 instead of 2 (bad input)."""

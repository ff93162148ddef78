"""User-facing errors: the message says what is wrong and what to do; the CLI prints it without a traceback."""


class TslrecError(Exception):
    """A problem the user can fix (bad config, bad input, missing table)."""


class ConfigError(TslrecError):
    """A configuration key or value that cannot be used."""


class ConcurrentCommit(TslrecError):
    """Another writer committed to a table after the rows of this write were computed from it (retry from a new
    read)."""

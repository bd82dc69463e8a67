"""The one exception type the CLI turns into a one-line message."""


class SaeKitError(Exception):
    """A user-facing error: the message says what was wrong and what to do about it."""

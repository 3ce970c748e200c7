"""The one exception type that the CLI turns into a clear message and a non-zero exit."""


class FanLoRAError(Exception):
    """A user-facing error: the message says what is wrong, where, and what to do."""

"""The one exception type for user mistakes: the CLI prints its message and exits non-zero, no traceback."""


class FlexIPError(ValueError):
    """Bad input from the user: the message names the file or value, what is wrong, and what to do."""

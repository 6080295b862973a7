"""The one exception type the CLI turns into a clean message (no traceback)."""


class CompkitError(Exception):
    """A problem the user can fix; the message says what to do."""

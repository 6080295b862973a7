"""The one exception type the CLI turns into a clean message (no traceback)."""

WORKER_MARK = "Original Traceback"  # how torch's DataLoader re-raises an error from a worker process


class CompkitError(Exception):
    """A problem the user can fix; the message says what to do."""


def user_message(error: CompkitError) -> str:
    """The message of ``error``; one a DataLoader worker raised comes back with the worker's traceback
    in front of it, which is cut off here."""
    text = str(error)
    if WORKER_MARK in text:
        _, found, message = text.rpartition(f"{CompkitError.__name__}: ")
        if found:
            return message.strip()
    return text

"""The one place compkit prints: ``echo`` for what a command reports, ``note`` for a remark worth one line.

Both write through ``tqdm.write``, so a line never lands on an active progress bar's line, and both stay
silent on every process but rank 0 under torchrun (one copy of each line, not one per GPU).
"""

from __future__ import annotations

import sys
from typing import TextIO

from compkit import _distributed

_NOTED: set[str] = set()  # notes already printed by this process


def echo(message: str, *, err: bool = False) -> None:
    """Print ``message`` and a newline to stdout (stderr with ``err``), above any active progress bar."""
    _write(message, sys.stderr if err else sys.stdout)


def note(message: str) -> None:
    """Print ``note: message`` to stderr, each distinct message once per process."""
    if message in _NOTED:
        return
    _NOTED.add(message)
    _write(f"note: {message}", sys.stderr)


def _write(text: str, stream: TextIO) -> None:
    # The stream is looked up at call time, so a redirected sys.stdout (pytest, click's CliRunner) gets it.
    if not _distributed.is_main():
        return
    from tqdm import tqdm  # here, not at import: ``compkit --help`` loads nothing it does not print

    tqdm.write(text, file=stream)
    stream.flush()  # as print(flush=True) did: a piped log shows each line when it happens

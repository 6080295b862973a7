"""``python -m compkit`` (and ``torchrun -m compkit``) runs the CLI."""

from compkit.cli import main

main()

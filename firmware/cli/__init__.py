"""The ``nokbox`` command: ``main.py`` parses and dispatches, one module per area's subcommands
(``vault.py``: init secrets, keys, retention; ``people.py``: user and audit)."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]

"""nokbox firmware, by area (docs/architecture.md, "Layout"). Importing it touches no hardware.

Imports run downward only: ``cli/`` on top; ``recording/`` and ``release/`` (never each other);
``vault/`` and ``people/`` (never each other); the ground (``config``, ``errors``, ``index``,
``vaultdb``, ``audit``, ``syslog``, ``hal/``, ``data/``); ``dsp/`` below all of it.
``tests/test_layout.py`` fails on an import that breaks the rule.
"""

__version__ = "0.1.0"

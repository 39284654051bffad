"""nokbox firmware: the recorder daemon. Importing it touches no hardware."""

__version__ = "0.1.0"

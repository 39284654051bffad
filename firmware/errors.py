"""One exception root for the project; subclasses also inherit the matching builtin."""


class NokboxError(Exception):
    """Root of every error nokbox raises on purpose."""


class ConfigError(NokboxError, ValueError):
    """A configuration file or value is invalid; the message names the key."""


class DeviceError(NokboxError, OSError):
    """An audio or GPIO device could not be opened or stopped working."""


class DeviceLost(DeviceError):
    """A device that was working went away (unplugged, driver reset)."""


class EndOfStream(NokboxError, EOFError):
    """A finite source (WAV replay) has delivered its last sample."""


class VaultError(NokboxError, OSError):
    """Recording storage or key material is missing or inconsistent."""


class DataDirError(NokboxError, FileNotFoundError):
    """The data directory is missing or not initialised."""


class CaptureOverrun(DeviceError):
    """The capture device overran (ALSA xrun) and was recovered; samples were lost there."""

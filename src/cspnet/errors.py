"""Every error this library raises on purpose, in one place.

Each derives from :class:`CSPNetError`, so a caller can catch the whole family, and from the built-in
exception a user would guess (``ValueError`` for a bad argument, ``FileNotFoundError`` for a missing file), so
existing ``except`` clauses keep working. Messages name the file, URL or argument and say what to do.
"""


class CSPNetError(Exception):
    """Base class of every deliberate cspnet error."""


class InvalidOptionError(CSPNetError, ValueError):
    """A model or CLI option is out of range or unknown."""


class ImageError(CSPNetError, ValueError):
    """An image could not be read or decoded; the message names it."""


class CheckpointError(CSPNetError, ValueError):
    """A checkpoint file is unreadable, unsafe, or does not fit the model."""


class WeightsNotFoundError(CSPNetError, FileNotFoundError):
    """No source could provide pretrained weights; the message lists every source tried."""


class DownloadError(CSPNetError, OSError):
    """A download failed (HTTP error, timeout, truncation, hash mismatch). Nothing is left in the cache."""


class ConfigError(CSPNetError, ValueError):
    """A config file or override is invalid (unknown key, bad value)."""


class DatasetError(CSPNetError, ValueError):
    """A dataset root or annotation is missing or malformed."""


class ExportError(CSPNetError, RuntimeError):
    """An export failed, needs a missing package, or its file disagrees with PyTorch. Nothing is written."""


class TrainingError(CSPNetError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN/inf); the last good checkpoint is left untouched."""

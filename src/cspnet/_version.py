"""The version, in a module that imports nothing: ``cspnet --help`` and packaging read it without torch."""

__version__ = "0.2.0"

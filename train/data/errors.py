"""The data errors: what the trainers map to one line and exit status 2."""

from __future__ import annotations


class DataError(RuntimeError):
    """A dataset exists but cannot be used (corrupt, wrong format, empty)."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset is not where it was looked for."""


class ChecksumError(DataError):
    """A file's checksum differs from the expected one."""

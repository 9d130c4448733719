"""Errors of the retrieval layer; `str(err)` is a complete sentence for the user."""

from __future__ import annotations

from appliance.errors import ApplianceError


class RetrievalError(ApplianceError):
    """Base class of retrieval errors."""


class NotFoundError(RetrievalError):
    """A collection, document or job does not exist (HTTP 404)."""


class ConflictError(RetrievalError):
    """The thing to create exists already (HTTP 409)."""


class InvalidNameError(RetrievalError):
    """A collection name that is not allowed (HTTP 400)."""


class FileError(RetrievalError):
    """One input file could not be ingested; the rest of its job goes on."""

    status = 422


class UnsupportedTypeError(FileError):
    """Not a file type we can parse (HTTP 415)."""

    status = 415


class TooLargeError(FileError):
    """A file or an archive's expansion is over its limit (HTTP 413)."""

    status = 413


class CorruptFileError(FileError):
    """The file claims a type but cannot be read as it (encrypted or broken PDF, bad DOCX, bad zip...)."""


class UnsafeArchiveError(FileError):
    """An archive with entries that could escape its folder, links, or a zip bomb."""


class ParseTimeoutError(FileError):
    """Parsing one file took longer than the per-file time limit."""

"""Errors that carry a message meant for the user (printed as one line, or sent as a JSON error)."""


class ApplianceError(Exception):
    """Base class: `str(err)` is a complete sentence for the user."""


class ModelLoadError(ApplianceError):
    """The model could not be found, read or is of an unsupported kind."""


class RequestError(ApplianceError):
    """A request is invalid (bad sampling parameters, prompt too long, ...): HTTP 400."""


class QueueFullError(ApplianceError):
    """The engine's queue is full: HTTP 503 with Retry-After."""


class EngineUnavailableError(ApplianceError):
    """The engine cannot serve (its process stopped): HTTP 503."""

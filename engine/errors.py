"""One exception root for Persona, and the single place that maps errors to HTTP status codes."""

from __future__ import annotations

from http import HTTPStatus

__all__ = [
    "PersonaError",
    "InvalidInputError",
    "NotFoundError",
    "ConflictError",
    "DependencyMissingError",
    "BackendUnavailableError",
    "OverloadedError",
    "PromptTemplateError",
    "CancelledRequestError",
    "http_status",
]


class PersonaError(Exception):
    """Root of every error Persona raises on purpose."""


class InvalidInputError(PersonaError, ValueError):
    """The caller sent something malformed: a missing field, a bad value, an unreadable file."""


class NotFoundError(PersonaError, LookupError):
    """An unknown item id, user id or prompt name."""

    def __str__(self) -> str:  # LookupError would quote the message like a dict key
        return str(self.args[0]) if self.args else "not found"


class ConflictError(PersonaError):
    """The store already holds data incompatible with this request (e.g. other vector sizes)."""


class DependencyMissingError(PersonaError, ImportError):
    """An optional dependency (extra) is not installed; the message carries the install hint."""


class BackendUnavailableError(PersonaError):
    """A model server or vector store is down, timed out, or answered garbage."""


class OverloadedError(PersonaError):
    """Too many requests in flight; retry later."""

    def __init__(self, message: str = "server overloaded", retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PromptTemplateError(PersonaError):
    """A prompt template failed to load or render; the message names the file and line."""


class CancelledRequestError(PersonaError):
    """The work was cancelled because its caller went away (HTTP client disconnect)."""


_STATUS: list[tuple[type[BaseException], HTTPStatus]] = [
    (InvalidInputError, HTTPStatus.UNPROCESSABLE_ENTITY),
    (NotFoundError, HTTPStatus.NOT_FOUND),
    (ConflictError, HTTPStatus.CONFLICT),
    (OverloadedError, HTTPStatus.SERVICE_UNAVAILABLE),
    (BackendUnavailableError, HTTPStatus.BAD_GATEWAY),
    (PromptTemplateError, HTTPStatus.INTERNAL_SERVER_ERROR),
    (DependencyMissingError, HTTPStatus.NOT_IMPLEMENTED),
    # The client is gone, so nobody reads this; 408 is the closest standard code to nginx's 499.
    (CancelledRequestError, HTTPStatus.REQUEST_TIMEOUT),
]


def http_status(exc: BaseException) -> HTTPStatus:
    """Map an exception to the HTTP status the API answers with (500 for anything unexpected)."""
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return HTTPStatus.INTERNAL_SERVER_ERROR


def missing(extra: str, package: str) -> DependencyMissingError:
    """Build the error raised when an optional extra is not installed."""
    return DependencyMissingError(
        f"{package} is not installed; install it with: pip install 'persona-engine[{extra}]'"
    )

"""Domain errors. Each carries the HTTP status the REST edge answers with."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""

    status_code = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadArchive(DomainError):
    status_code = 400


class BadDataset(DomainError):
    status_code = 400


class BadImage(DomainError):
    """An image that cannot be decoded (corrupt, truncated, empty)."""

    status_code = 400


class NotFound(DomainError):
    status_code = 404


class Conflict(DomainError):
    """A model not ready, a dataset in use or being deleted, a job already final."""

    status_code = 409


class TooLarge(DomainError):
    status_code = 413


class NotAnImage(DomainError):
    status_code = 415


class InvalidSpec(DomainError):
    status_code = 422


class Unauthorized(DomainError):
    status_code = 401


class BrokerUnavailable(DomainError):
    status_code = 503


class JobCancelled(Exception):
    """Raised inside training when the cancel check answers true."""


class JobTimedOut(Exception):
    """Raised inside training when the job runs past its time limit."""

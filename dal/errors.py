"""The DAL's errors. Every message is meant to be shown to a user as it is."""

from __future__ import annotations


class TradebookError(Exception):
    """Base class of every error the DAL raises on purpose."""


class InvalidInput(TradebookError, ValueError):
    """Bad input: nothing was written. The message says what is wrong and how to fix it."""


class NotFound(TradebookError, LookupError):
    """The row does not exist *or belongs to another user* (the two are indistinguishable)."""


class NotApproved(TradebookError, PermissionError):
    """The user is not (or no longer) approved, or is inactive."""


class Forbidden(TradebookError, PermissionError):
    """The action needs an admin scope."""


class Conflict(TradebookError):
    """The request contradicts what is stored: an idempotency key reused with other fields,
    an illegal order transition, an overfill, a name already taken, history that forbids a
    delete."""


class ConcurrentUpdate(TradebookError):
    """PostgreSQL aborted the transaction because a concurrent one touched the same rows
    (deadlock or serialization failure) and the retries ran out; nothing was written."""


class DatabaseUnavailable(TradebookError):
    """No database connection could be had: the server is unreachable, or it (or this
    process's pool) has no connection to spare."""

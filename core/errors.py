"""The error vocabulary every shell (CLI, TUI) turns into a one-line message.

Each error says what went wrong *and* what to do, and carries the CLI exit code:
2 for bad input (the user can fix the command or the data), 1 for a failure that was
handled safely (nothing lost; the message says what happened).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED_SAFELY = 1
EXIT_BAD_INPUT = 2


class ClinivaultError(Exception):
    """Base of all expected failures. ``str(err)`` is the one-line message for the user."""

    exit_code: int = EXIT_FAILED_SAFELY

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")

    def user_message(self) -> str:
        """One line: the problem, then what to do about it."""
        return self.message if not self.hint else f"{self.message}. {self.hint}"


class BadInput(ClinivaultError):
    """The user gave something we cannot use (a path, an ID, an option)."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(BadInput):
    """A configuration file is unreadable, unknown or ill-typed."""


class VaultError(ClinivaultError):
    """The vault is missing, locked by another process, unreadable or corrupt."""

    exit_code = EXIT_BAD_INPUT


class WrongPassphrase(VaultError):
    """No key slot opened with the passphrase given."""


class IntegrityError(ClinivaultError):
    """Stored data failed authentication: tampering, corruption or truncation."""

    exit_code = EXIT_FAILED_SAFELY


class FailedSafely(ClinivaultError):
    """A step could not complete; nothing was lost and the message says what state things are in."""

    exit_code = EXIT_FAILED_SAFELY

"""Errors of the load-test suite. The CLI turns them into one line on stderr."""

from __future__ import annotations

from loadtests import EXIT_INVALID, EXIT_USAGE


class LoadtestError(Exception):
    """Base class: a message for the user and the exit code that goes with it."""

    exit_code = EXIT_USAGE


class UsageError(LoadtestError):
    """A bad option, value or file given by the user (exit 2)."""


class SloError(UsageError):
    """The SLO file cannot be read or does not follow the format (exit 2)."""


class ServerError(UsageError):
    """The server could not be reached to resolve a default (exit 2)."""


class NoResultError(LoadtestError):
    """The load generator ended without a verdict (exit 3)."""

    exit_code = EXIT_INVALID

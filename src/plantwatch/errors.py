"""Errors that the CLI turns into one readable line and a non-zero exit code."""

from __future__ import annotations


class PlantwatchError(Exception):
    """Base class: a user-facing failure with a readable message. ``exit_code`` is what the CLI returns."""

    exit_code: int = 1


class ConfigError(PlantwatchError):
    """params.yaml (or an override) is malformed: a usage error."""

    exit_code = 2


class UsageError(PlantwatchError):
    """A command was called with arguments that cannot work."""

    exit_code = 2


class DataError(PlantwatchError):
    """Input data cannot be read or violates the contract at batch level."""

    exit_code = 1


class GateFailed(PlantwatchError):
    """A quality gate refused the candidate model."""

    exit_code = 1


class RegistryError(PlantwatchError):
    """The model registry refused an operation (missing, rejected or tampered version)."""

    exit_code = 1


class HttpError(PlantwatchError):
    """A failure with an HTTP meaning: the service answers ``http_status``, the CLI uses ``exit_code``.

    Subclasses set both class attributes, so one core function serves the CLI and the service alike.
    """

    http_status: int = 500
    exit_code = 1

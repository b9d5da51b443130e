"""Every error the toolkit raises on purpose: one base class and small named subclasses.

Errors carry their context (file, line/row, column, field, batch, request) as attributes and
print it readably, papermill-style, so an analyst sees *where* and *how to fix* without a
traceback from pandas or requests. The tree (catch the parent to catch its children)::

    ToolkitError
    ├── ExportFormatError          an export file cannot be read
    ├── ExportValidationError      an export holds values the toolkit cannot use
    ├── ProfileAPIError            Segment's Profile API refused or failed
    ├── MappingError               a mapping rule is invalid
    ├── FilterError                a Braze segment filter is invalid
    ├── PlanError                  a plan cannot be built, saved or loaded
    │   └── PlanNotApproved        no (valid) approval
    │       ├── PlanExpired
    │       ├── PlanAltered
    │       └── PlanWorkspaceMismatch
    ├── LedgerError                the sync ledger cannot be used
    │   └── LedgerMoved            the ledger changed since the plan was made
    ├── BrazeAPIError              Braze answered an error, or not at all (.outcome, .attempts)
    │   ├── BrazeAuthError         401/403
    │   ├── BrazeBadRequest        other 3xx/4xx: fix the request
    │   ├── BrazeRateLimited       429 after every retry
    │   ├── BrazeServerError       5xx/423 after every retry
    │   └── BrazeConnectionError   no answer after every retry
    ├── TransportError             a transport got no answer (the client turns it into the above)
    ├── ReportError                a sync report cannot be written or read
    ├── SettleError                a batch cannot be settled as asked
    ├── ConfigError                a setting is missing or invalid
    ├── SandboxError               the local Braze sandbox was used wrongly
    ├── PlotInputError             a plot was asked for data it cannot draw
    ├── SegmentCheckError          a Braze segment cannot be checked against its computation
    └── ApprovalRefused, PushInProgress, StepNotDone   the wizard's refusals

`Outcome` is what Braze may have done with a request: acknowledged, rejected, not applied or
unknown.
"""
from __future__ import annotations

from enum import StrEnum
from html import escape
from typing import Any

__all__ = [
    "ToolkitError",
    "ExportFormatError",
    "ExportValidationError",
    "ExportTooLarge",
    "ProfileAPIError",
    "DefinitionError",
    "PublicAPIError",
    "MappingError",
    "FilterError",
    "PlanError",
    "PlanNotApproved",
    "PlanExpired",
    "PlanAltered",
    "PlanWorkspaceMismatch",
    "LedgerError",
    "LedgerMoved",
    "BrazeAPIError",
    "BrazeAuthError",
    "BrazeRateLimited",
    "BrazeConnectionError",
    "BrazeBadRequest",
    "BrazeServerError",
    "TransportError",
    "Outcome",
    "ReportError",
    "SettleError",
    "PlotInputError",
    "ApprovalRefused",
    "PushInProgress",
    "StepNotDone",
    "ConfigError",
    "WarehouseError",
    "SandboxError",
    "SegmentCheckError",
]

# Context keys printed in this order; anything else passed as context follows alphabetically.
_CONTEXT_ORDER = ("file", "line", "row", "column", "field", "rule", "batch", "request")


class ToolkitError(Exception):
    """Base class of every error the toolkit raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None, **context: Any) -> None:
        self.message = message
        self.hint = hint
        self.context = {k: v for k, v in context.items() if v is not None}
        super().__init__(self._render())

    def __getattr__(self, name: str) -> Any:
        # Context is readable as attributes (err.file, err.row) without declaring each one.
        context = self.__dict__.get("context", {})
        if name in context:
            return context[name]
        if name in _CONTEXT_ORDER:
            return None
        raise AttributeError(name)

    def _render(self) -> str:
        keys = [k for k in _CONTEXT_ORDER if k in self.context]
        keys += sorted(k for k in self.context if k not in _CONTEXT_ORDER)
        where = ", ".join(f"{k} {self.context[k]}" for k in keys)
        text = f"{where}: {self.message}" if where else self.message
        if self.hint:
            text += f"\n  How to fix: {self.hint}"
        return text

    def __reduce__(self):  # keep errors picklable across processes (papermill, workers)
        return (_rebuild, (type(self), self.message, self.hint, self.context))

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>"
            for k, v in self.context.items()
        )
        hint = f"<p><b>How to fix:</b> {escape(self.hint)}</p>" if self.hint else ""
        return (
            f"<div class='toolkit-error' style='border-left:4px solid #c0392b;padding:4px 8px'>"
            f"<b>{escape(type(self).__name__)}</b>: {escape(self.message)}"
            f"<table>{rows}</table>{hint}</div>"
        )


def _rebuild(cls, message, hint, context):
    return cls(message, hint=hint, **context)


class ExportFormatError(ToolkitError):
    """An Engage export file could not be read: wrong shape, encoding or content."""


class ExportValidationError(ToolkitError):
    """An Engage export was read but holds values the toolkit cannot use."""


class ExportTooLarge(ExportValidationError):
    """An engine-backed export has more profiles than may be held as one pandas DataFrame."""


class ProfileAPIError(ToolkitError):
    """The Segment Profile API refused or failed a request."""


class DefinitionError(ToolkitError):
    """An Engage audience definition cannot be parsed, checked or evaluated; names the character."""


class PublicAPIError(ToolkitError):
    """The Segment Public API refused or failed a request for audience definitions."""


class MappingError(ToolkitError):
    """A mapping rule is invalid: unknown key, reserved or invalid Braze name, bad option."""


class FilterError(ToolkitError):
    """A Braze segment filter is invalid the way Braze's dashboard would refuse it."""


class PlanError(ToolkitError):
    """A plan cannot be built, saved or loaded."""


class PlanNotApproved(PlanError):
    """The plan has no approval; approve it before applying."""


class PlanExpired(PlanNotApproved):
    """The plan's approval has expired."""


class PlanAltered(PlanNotApproved):
    """The plan's operations or target changed after it was approved."""


class PlanWorkspaceMismatch(PlanNotApproved):
    """The plan was approved for another Braze workspace than the client targets."""


class LedgerError(ToolkitError):
    """The sync ledger cannot be opened, read or written (corrupt, locked, wrong workspace)."""


class LedgerMoved(LedgerError):
    """The ledger changed since the plan was made; re-plan before applying."""


class Outcome(StrEnum):
    """What Braze may have done with a request — the contract between client, apply and ledger.

    A `StrEnum`, so reports and ledgers store the plain value (``"unknown"``)."""

    ACKNOWLEDGED = "acknowledged"  # Braze answered 2xx (per-object rejects may still be listed)
    REJECTED = "rejected"          # Braze refused the request (4xx): nothing applied, do not resend
    NOT_APPLIED = "not_applied"    # nothing reached Braze, or it said so (429, 5xx): safe to resend
    UNKNOWN = "unknown"            # may have been applied (dropped after sending, read timeout)


class BrazeAPIError(ToolkitError):
    """Braze answered with an error status or not at all; keeps the status, body, request and
    response, what Braze may have done with the request (`outcome`), the `attempts` made and the
    objects Braze refused by ``(input_array, index)`` (`rejected`)."""

    def __init__(self, message: str, *, status: int | None = None, body: Any = None,
                 request: Any = None, response: Any = None, hint: str | None = None,
                 outcome: "Outcome | str" = Outcome.UNKNOWN, attempts: int | None = None,
                 rejected: "dict[tuple[str, int], str] | None" = None, **context: Any) -> None:
        self.status = status
        self.body = body
        self.request = request
        self.response = response
        self.outcome = Outcome(outcome)
        self.attempts = attempts
        self.rejected = dict(rejected or {})
        super().__init__(message, hint=hint, status=status, outcome=self.outcome.value,
                         attempts=attempts, **context)

    def __reduce__(self):
        context = {k: v for k, v in self.context.items() if k != "status"}
        return (_rebuild_api, (type(self), self.message, self.hint, self.status, self.body,
                               self.rejected, context))


def _rebuild_api(cls, message, hint, status, body, rejected, context):
    return cls(message, status=status, body=body, hint=hint, rejected=rejected, **context)


class BrazeAuthError(BrazeAPIError):
    """Braze refused the API key (401/403): wrong key, wrong instance or missing permission."""


class BrazeRateLimited(BrazeAPIError):
    """Braze kept answering 429 after every retry allowed."""


class BrazeConnectionError(BrazeAPIError):
    """Braze could not be reached or did not answer in time after every retry allowed."""


class BrazeBadRequest(BrazeAPIError):
    """Braze refused the request itself (400, 404, 413 …); fix it before sending it again."""


class BrazeServerError(BrazeAPIError):
    """Braze kept failing with 5xx (or 423) after every retry allowed."""


class TransportError(ToolkitError):
    """A transport got no answer to a request; `outcome` says whether Braze may have applied it."""

    def __init__(self, message: str, *, outcome: "Outcome | str" = "unknown",
                 kind: str = "connection", **context: Any) -> None:
        self.outcome = Outcome(outcome)
        self.kind = kind  # "timeout", "connection" (worth retrying) or "fatal" (never retried)
        super().__init__(message, **context)

    def __reduce__(self):
        return (_rebuild_transport, (type(self), self.message, self.outcome, self.kind,
                                     self.context))


def _rebuild_transport(cls, message, outcome, kind, context):
    return cls(message, outcome=outcome, kind=kind, **context)


class ConfigError(ToolkitError):
    """A setting is missing or invalid (endpoint, API key, paths, options)."""


class WarehouseError(ConfigError):
    """A database URL cannot be used: unknown scheme, server unreachable, login refused, or a
    schema, table or column missing."""


class SandboxError(ToolkitError):
    """The local Braze sandbox could not start or was used wrongly."""


class ReportError(ToolkitError):
    """A sync report file cannot be written or read back."""


class SettleError(ToolkitError):
    """A batch cannot be settled as asked (unknown batch name, contradictory options)."""


class PlotInputError(ToolkitError):
    """A plot was asked for data it cannot draw (wrong object, unknown key, nothing to show)."""


class ApprovalRefused(ToolkitError):
    """The approval was not given: no name, the box not ticked, or the wrong workspace typed."""


class PushInProgress(ToolkitError):
    """The wizard is still pushing; wait for the push to finish before changing steps."""


class StepNotDone(ToolkitError):
    """Next was pressed before the current step was done."""


class SegmentCheckError(ToolkitError):
    """A Braze segment cannot be checked against its computation (unknown id, no estimate, unreadable description)."""

"""Braze's documented limits in one place: the `BrazeLimits` object, each number with its source.

Validation, payload rules, segment filters, plan, client and sandbox all read `LIMITS` (or a
`BrazeLimits` with other values, e.g. ``BrazeLimits(objects_per_array=50)`` for a contract whose
limits differ). ``LIMITS.source("string_length")`` quotes where a number comes from; sections
are those of shared/reference/braze-api.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from html import escape
from types import MappingProxyType
from typing import Mapping

from toolkit.errors import ConfigError

__all__ = ["BrazeLimits", "LIMITS", "SOURCES", "PERMISSIONS"]

# field -> where the number comes from (braze-api.md section and Braze's words)
SOURCES: Mapping[str, str] = MappingProxyType({
    "objects_per_array": "§1.6: 'up to 75 event objects, 75 attribute objects, and 75 purchase "
                         "objects' per /users/track request",
    "combined_objects": "§1.6: MAU CY 24-25 contracts 'may batch up to 50 updates combined'; "
                        "None = no combined limit (other contracts)",
    "name_length": "§2.1/§2.3: attribute keys and event names 'Limited to 255 characters'",
    "string_length": "§2.2: String 'Text; 255 characters or fewer'",
    "event_properties": "§1.4: 'only the first 256' custom event properties are captured",
    "property_payload_bytes": "§1.4: 'event property payload of up to 100 KB'",
    "object_bytes": "§2.2: nested objects 'have a maximum size of 100 KB'",
    "array_length": "§2.2: 'The default length for an attribute is up to 500 items' "
                    "(workspace-dependent)",
    "export_ids_per_request": "§1.9/§6: /users/export/ids takes at most 50 external IDs",
    "cohort_ids_per_request": "§4.1: 'maximum of 1,000 user IDs per request'",
    "event_count": "§5.3: 'between 0 and 50 times' in an X-events-in-Y-days filter",
    "event_days": "§5.3: 'between 1 and 30' calendar days",
    "regex_length": "§5.1/§5.2: regex 'maximum of 32,764 characters'",
    "filter_values": "§5.1: multi-value operators take '≤256 strings'",
    "segments_per_page": "§6 and docs/reference-segments.md: /segments/list 'returned in "
                         "groups of 100'",
    "series_days": "§6 and docs/reference-segments.md: /segments/data_series length "
                   "'between 1 and 100 (inclusive)'",
    "rate_limits": "§1.7/§6: /users/track 3,000 per 3 s; /users/export/ids 250/min; "
                   "/custom_attributes, /events, /events/list, /purchases/product_list share "
                   "1,000/h; partner cohorts 250,000/h; anything else 250,000/h",
})

# The REST API key permission each endpoint needs (braze-api.md §6, docs/reference-segments.md;
# the partner endpoints use partner credentials instead)
PERMISSIONS: Mapping[str, str] = MappingProxyType({
    "/users/track": "users.track", "/users/export/ids": "users.export.ids",
    "/custom_attributes": "custom_attributes.get", "/events/list": "events.list",
    "/segments/list": "segments.list", "/segments/details": "segments.details",
    "/segments/data_series": "segments.data_series",
    "/users/export/segment": "users.export.segment",
})

_RATE_LIMITS = {
    "/users/track": (3000, 3.0),
    "/users/export/ids": (250, 60.0),          # workspaces onboarded on/after 2024-08-22
    "/custom_attributes": (1000, 3600.0),
    "/partners/segment/cohorts": (250_000, 3600.0),
    "*": (250_000, 3600.0),
}


@dataclass(frozen=True)
class BrazeLimits:
    """Braze's per-request, per-value and rate limits (see `SOURCES` for each number)."""

    objects_per_array: int = 75
    combined_objects: int | None = None
    name_length: int = 255
    string_length: int = 255
    event_properties: int = 256
    property_payload_bytes: int = 100 * 1024
    object_bytes: int = 100 * 1024
    array_length: int = 500
    export_ids_per_request: int = 50
    cohort_ids_per_request: int = 1000
    event_count: int = 50
    event_days: int = 30
    regex_length: int = 32_764
    filter_values: int = 256
    segments_per_page: int = 100
    series_days: int = 100
    rate_limits: Mapping[str, tuple[int, float]] = field(
        default_factory=lambda: MappingProxyType(dict(_RATE_LIMITS)))

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "rate_limits" or (f.name == "combined_objects" and value is None):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Braze limit {f.name} must be a positive integer, got "
                                  f"{value!r}", field=f.name)
        if not isinstance(self.rate_limits, MappingProxyType):
            object.__setattr__(self, "rate_limits", MappingProxyType(dict(self.rate_limits)))

    @staticmethod
    def source(name: str) -> str:
        """Where the limit ``name`` comes from."""
        if name not in SOURCES:
            raise ConfigError(f"no Braze limit named {name!r}", field="limit",
                              hint=f"use one of {', '.join(SOURCES)}")
        return SOURCES[name]

    def with_(self, **changes) -> BrazeLimits:
        """These limits with some changed (a contract with other limits)."""
        return replace(self, **changes)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{escape(f.name)}</th>"
                       f"<td>{escape(str(getattr(self, f.name)))}</td>"
                       f"<td>{escape(SOURCES[f.name])}</td></tr>" for f in fields(self))
        return f"<div><b>Braze limits</b><table>{rows}</table></div>"


LIMITS = BrazeLimits()

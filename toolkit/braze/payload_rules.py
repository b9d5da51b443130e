"""Braze payload rules shared by mapping, preview and plan: names, values, reserved fields, standard traits.

Everything here follows /work/shared/reference/braze-api.md §1.3 (profile fields), §1.4 (event
properties), §2 (custom attribute and event rules) and segment-engage.md §4 (how Segment's Braze
destinations turn standard traits into Braze profile fields). Bulk checkers get `Violation`s back
(never exceptions); `require_*` helpers raise `MappingError` for rule definitions.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from toolkit.braze.limits import LIMITS
from toolkit.errors import MappingError

__all__ = [
    "PROFILE_FIELDS", "CONTROL_KEYS", "RESERVED_NAMES",
    "WRITABLE_PROFILE_FIELDS", "RESERVED_EVENT_PROPERTIES", "STANDARD_TRAITS", "GENDER_CODES",
    "Violation", "name_violations", "attribute_name_violations", "event_name_violations",
    "property_name_violations", "string_value_violation", "require_attribute_name",
    "require_event_name", "standard_field", "normalize_gender", "Conversion", "convert",
    "to_json_values", "json_type", "value_kind",
]


# §1.3: Braze profile-field names in the attributes object; they are profile fields, never custom
# attributes. `image_url` appears in the older table only, `bio` "will not be processed as a custom
# attribute" (older UAO) — both kept so nobody shadows them.
PROFILE_FIELDS = frozenset({
    "alias_name", "alias_label", "braze_id", "country", "current_location",
    "date_of_first_session", "date_of_last_session", "dob", "email", "email_subscribe",
    "email_open_tracking_disabled", "email_click_tracking_disabled", "external_id", "facebook",
    "first_name", "gender", "home_city", "language", "last_name", "marked_email_as_spam_at",
    "phone", "push_subscribe", "push_tokens", "subscription_groups", "time_zone", "twitter",
    "image_url", "bio",
})
# §2.1: control keys of the attributes object that are special even though not profile fields.
CONTROL_KEYS = frozenset({
    "external_id", "user_alias", "braze_id", "email", "phone", "_update_existing_only",
    "push_token_import", "_merge_objects",
})
RESERVED_NAMES = PROFILE_FIELDS | CONTROL_KEYS

# Profile fields a Segment standard trait may be written to (segment-engage.md §4.1/§4.2). Every
# other reserved name (external_id, braze_id, email_subscribe, …) is never a mapping target.
WRITABLE_PROFILE_FIELDS = frozenset({
    "first_name", "last_name", "dob", "home_city", "country", "gender", "phone", "email",
    "image_url", "language", "time_zone",
})

# §1.4: "Reserved property keys: custom events `time`, `event_name`".
RESERVED_EVENT_PROPERTIES = frozenset({"time", "event_name"})

# segment-engage.md §4.1 (classic table + archived mapper) and §4.2 (Actions field defaults):
# Segment trait → Braze profile field. Engage computation keys are snake_case, so both spellings.
STANDARD_TRAITS: dict[str, str] = {
    "firstName": "first_name", "first_name": "first_name",
    "lastName": "last_name", "last_name": "last_name",
    "birthday": "dob", "dob": "dob",
    "avatar": "image_url",
    "address.city": "home_city", "address_city": "home_city", "city": "home_city",
    "address.country": "country", "address_country": "country", "country": "country",
    "gender": "gender",
    "phone": "phone",
    "email": "email",
}

# segment-engage.md §4.2 `toBrazeGender`, plus U (unknown) which the Braze SDKs use.
GENDER_CODES = ("M", "F", "O", "N", "P", "U")
_GENDER_ALIASES = {
    "m": "M", "male": "M", "man": "M",
    "f": "F", "w": "F", "female": "F", "woman": "F",
    "o": "O", "other": "O",
    "n": "N", "not applicable": "N",
    "p": "P", "prefer not to say": "P",
    "u": "U", "unknown": "U",
}

# §2.1 "can only contain alphanumeric characters and punctuation": printable text. Spaces are
# accepted in practice (Engage's own defaults are "Audience Entered"); control characters are not.
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_COUNTRY = re.compile(r"^[A-Za-z]{2}$")
_LANGUAGE = re.compile(r"^[a-z]{2}$")


@dataclass(frozen=True)
class Violation:
    """One payload rule a name or value breaks, with how to fix it."""

    code: str        # "name_too_long", "leading_dollar", "reserved_name", "string_too_long", …
    field: str       # the name concerned
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message} (fix: {self.fix})"


def name_violations(name: object, *, what: str = "custom attribute") -> list[Violation]:
    """Violations of the generic Braze key rules (§2.1/§2.3) for an attribute, event or property name."""
    label = repr(name)
    if not isinstance(name, str):
        return [Violation("name_not_text", label, f"a {what} name must be text, not "
                          f"{type(name).__name__}", f"quote the {what} name")]
    out = []
    if not name.strip():
        out.append(Violation("name_empty", label, f"a {what} name cannot be empty",
                             f"give the {what} a name"))
    if len(name) > LIMITS.name_length:
        out.append(Violation("name_too_long", label, f"{what} name has {len(name)} characters; "
                             f"Braze allows at most {LIMITS.name_length}", "shorten the name"))
    if name.startswith("$"):
        out.append(Violation("leading_dollar", label, f"a {what} name cannot begin with '$'",
                             "drop the leading '$'"))
    if _CONTROL_CHARS.search(name):
        out.append(Violation("control_character", label, f"a {what} name may only contain "
                             "letters, digits, punctuation and spaces",
                             "remove tabs, newlines and other control characters"))
    return out


def attribute_name_violations(name: object, *, allow_profile_field: bool = False) -> list[Violation]:
    """Violations for a top-level custom attribute name, including reserved Braze profile fields.

    With ``allow_profile_field`` the name may be one of `WRITABLE_PROFILE_FIELDS` (a standard
    trait written to its Braze profile field), never a control key such as ``external_id``.
    """
    out = name_violations(name, what="custom attribute")
    if isinstance(name, str) and name in RESERVED_NAMES:
        if not (allow_profile_field and name in WRITABLE_PROFILE_FIELDS):
            where = "profile field" if name in PROFILE_FIELDS else "control key"
            out.append(Violation(
                "reserved_name", repr(name),
                f"{name!r} is a Braze {where}; Braze would not store it as a custom attribute",
                "choose another attribute name (for example prefix it with 'engage_')"
                + ("" if allow_profile_field else
                   "; only Segment standard traits may be written to profile fields")))
    return out


def event_name_violations(name: object) -> list[Violation]:
    """Violations for a custom event name (§2.3)."""
    return name_violations(name, what="custom event")


def property_name_violations(name: object) -> list[Violation]:
    """Violations for a custom event property key (§1.4: ≤255, no leading $, not time/event_name)."""
    out = name_violations(name, what="event property")
    if isinstance(name, str) and name in RESERVED_EVENT_PROPERTIES:
        out.append(Violation("reserved_property", repr(name),
                             f"{name!r} is a reserved event property key; Braze answers "
                             "\"Invalid 'properties' field\"", "rename the property"))
    return out


def string_value_violation(value: str, *, field: str) -> Violation | None:
    """The violation of a string value longer than 255 characters (§2.2), or None."""
    if isinstance(value, str) and len(value) > LIMITS.string_length:
        return Violation("string_too_long", field, f"value has {len(value)} characters; Braze "
                         f"strings hold at most {LIMITS.string_length}", "shorten or drop the value")
    return None


def _raise_first(violations: list[Violation], rule: str | None, field: str) -> None:
    if violations:
        v = violations[0]
        raise MappingError(v.message, rule=rule, field=field, hint=v.fix)


def require_attribute_name(name: object, *, rule: str | None = None,
                           allow_profile_field: bool = False) -> None:
    """Raise MappingError naming the rule when `name` cannot be a Braze custom attribute."""
    _raise_first(attribute_name_violations(name, allow_profile_field=allow_profile_field),
                 rule, "attribute")


def require_event_name(name: object, *, rule: str | None = None, field: str = "event") -> None:
    """Raise MappingError naming the rule when Braze would reject `name` as a custom event name."""
    _raise_first(event_name_violations(name), rule, field)


def standard_field(trait_key: str) -> str | None:
    """The Braze profile field a Segment standard trait lands in (firstName → first_name), or None."""
    return STANDARD_TRAITS.get(trait_key)


def normalize_gender(values: pd.Series) -> pd.Series:
    """Segment's `toBrazeGender` vectorised: man/male/m → M, … ; other text passes through unchanged."""
    text = values.astype("string")
    key = text.str.strip().str.lower()
    mapped = key.map(_GENDER_ALIASES)
    return mapped.where(mapped.notna(), text).astype("string")


# --------------------------------------------------------------------------------------------
# value conversion


@dataclass
class Conversion:
    """A computation column converted to what Braze stores, with masks of what Braze would refuse.

    ``values`` is typed for evaluation (boolean, Float64, string, datetime64[UTC]); ``json_type``
    the Braze data type the attribute gets ("boolean", "number", "string", "time", "array",
    "object"); ``invalid`` marks values Braze rejects or nulls (string > 255, bad dob/country/
    gender); ``conflict`` marks values whose type differs from the type the attribute is locked
    to (§2.2: "API calls that send the previous data type … are not accepted").
    """

    values: pd.Series
    json_type: str
    invalid: pd.Series
    conflict: pd.Series


def value_kind(value: object, *, date_text: re.Pattern | str | None = None) -> str | None:
    """The type of one value in the `EngageExport` vocabulary — boolean, number, string,
    datetime, list, object — or None for null: the one classifier of readers and payloads.
    ``date_text``: a pattern for text that counts as a datetime (JSON has no date type)."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (bool, np.bool_)):
        return "boolean"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return "number"
    if isinstance(value, str):
        return "datetime" if date_text is not None and re.match(date_text, value) else "string"
    if isinstance(value, (pd.Timestamp, np.datetime64)) or hasattr(value, "isoformat"):
        return "datetime"
    if isinstance(value, (list, tuple, np.ndarray)):
        return "list"
    if isinstance(value, dict):
        return "object"
    return "string"


_VALUE_TYPE_TO_JSON = {"boolean": "boolean", "number": "number", "string": "string",
                       "datetime": "time", "list": "array", "object": "object"}


def json_type(value: object) -> str | None:
    """The Braze data type of one Python value as it would be sent, or None for null."""
    kind = value_kind(value)
    return None if kind is None else _VALUE_TYPE_TO_JSON[kind]


def convert(column: pd.Series, value_type: str, *, field: str | None = None) -> Conversion:
    """Convert one EngageExport computation column to the values Braze would store.

    ``field`` is the Braze profile field when the column is a standard trait (dob, gender, …):
    the value is then formatted the way Segment's Braze destination sends it.
    """
    index = column.index
    no = pd.Series(False, index=index)
    if field == "dob":
        when = _as_datetime(column)
        bad = column.notna() & when.isna()
        return Conversion(when.dt.floor("D"), "time", bad, no.copy())
    if field == "gender":
        g = normalize_gender(column)
        bad = g.notna() & ~g.isin(GENDER_CODES)
        return Conversion(g.where(~bad), "string", bad, no.copy())
    if field == "country":
        c = column.astype("string").str.strip()
        # §1.3: country is ISO-3166-1 alpha-2; "bad values become NULL".
        bad = c.notna() & ~c.str.fullmatch(_COUNTRY.pattern).fillna(False).astype(bool)
        return Conversion(c.str.upper().where(~bad), "string", bad, no.copy())
    if field == "language":
        c = column.astype("string").str.strip().str.lower()
        bad = c.notna() & ~c.str.fullmatch(_LANGUAGE.pattern).fillna(False).astype(bool)
        return Conversion(c.where(~bad), "string", bad, no.copy())

    kind = _VALUE_TYPE_TO_JSON.get(value_type, "string")
    if value_type == "boolean":
        return Conversion(column.astype("boolean"), kind, no.copy(), no.copy())
    if value_type == "number":
        if isinstance(column.dtype, pd.Float64Dtype):   # numbers already: nothing to coerce
            bad = _non_finite(column)
            return Conversion(column.where(~bad) if bad.any() else column, kind, bad, no.copy())
        vals = pd.to_numeric(column, errors="coerce").astype("Float64")
        bad = (column.notna() & vals.isna()) | _non_finite(vals)
        return Conversion(vals.where(~bad), kind, bad, no.copy())
    if value_type == "datetime":
        when = _as_datetime(column)
        return Conversion(when, kind, column.notna() & when.isna(), no.copy())
    # An object column (lists, dicts, or scalars of disagreeing types): Braze locks the type.
    if column.dtype == object or value_type in ("list", "object"):
        return _convert_mixed(column.astype(object), default=kind)
    text = column.astype("string")
    bad = _too_long(text)
    return Conversion(_blanked(text, bad), "string", pd.Series(bad, index=index, name=text.name),
                      no.copy())


def _too_long(text: pd.Series) -> np.ndarray:
    """Mask of the texts over `LIMITS.string_length` characters. Only a value of more bytes
    can have more characters, and byte sizes come from the Arrow offsets alone: characters are
    counted for those values only, not for every profile."""
    limit = LIMITS.string_length
    if not isinstance(text.array, pd.arrays.ArrowStringArray):
        return (text.str.len().fillna(0) > limit).to_numpy(dtype=bool)
    data = pa.array(text.array)
    out = np.zeros(len(text), dtype=bool)
    start = 0
    for arr in data.chunks if isinstance(data, pa.ChunkedArray) else [data]:
        if len(arr):
            width = np.int64 if arr.type == pa.large_string() else np.int32
            offsets = np.frombuffer(arr.buffers()[1], dtype=width)[
                arr.offset:arr.offset + len(arr) + 1]
            at = np.flatnonzero(np.diff(offsets) > limit)
            if len(at):
                count = pc.utf8_length(arr.take(pa.array(at)))
                out[start + at[pc.fill_null(pc.greater(count, limit), False).to_numpy(
                    zero_copy_only=False)]] = True
        start += len(arr)
    return out


def _blanked(text: pd.Series, bad: np.ndarray) -> pd.Series:
    """``text.where(~bad)``: in Arrow (pandas' own masked replace converts every value), and
    no copy at all when nothing is blanked."""
    if not bad.any():
        return text
    if not isinstance(text.array, pd.arrays.ArrowStringArray):
        return text.where(~bad)
    data = pa.array(text.array)
    mask = pa.array(bad)
    kept = pc.if_else(pa.chunked_array([mask]) if isinstance(data, pa.ChunkedArray) else mask,
                      pa.scalar(None, data.type), data)
    return pd.Series(text.dtype.__from_arrow__(kept), index=text.index, name=text.name)


def _non_finite(numbers: pd.Series) -> pd.Series:
    """Mask of ±inf (JSON has no infinity, and Braze numbers are finite)."""
    arr = numbers.to_numpy(dtype="float64", na_value=np.nan)
    return pd.Series(np.isinf(arr), index=numbers.index)


def _as_datetime(column: pd.Series) -> pd.Series:
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        return column.dt.tz_convert("UTC")
    out = pd.to_datetime(column, errors="coerce", utc=True, format="mixed")
    return out


def _convert_mixed(column: pd.Series, *, default: str = "string") -> Conversion:
    """An object column: Braze locks the attribute to the type of the first value it receives."""
    types = pd.Series([json_type(v) for v in column.to_numpy()], index=column.index, dtype=object)
    present = types.notna()
    locked = types[present].iloc[0] if present.any() else default
    conflict = present & (types != locked)
    values = column.where(~conflict)
    if locked == "string":
        text = values.astype("string")
        bad = (text.str.len().fillna(0) > LIMITS.string_length).astype(bool)
        return Conversion(text.where(~bad), "string", bad, conflict.astype(bool))
    if locked == "number":
        numbers = pd.to_numeric(values, errors="coerce").astype("Float64")
        bad = _non_finite(numbers)
        return Conversion(numbers.where(~bad), "number", bad, conflict.astype(bool))
    if locked == "boolean":
        return Conversion(values.astype("boolean"), "boolean",
                          pd.Series(False, index=column.index), conflict.astype(bool))
    if locked == "time":
        return Conversion(_as_datetime(values), "time", pd.Series(False, index=column.index),
                          conflict.astype(bool))
    return Conversion(values, locked, pd.Series(False, index=column.index), conflict.astype(bool))


def to_json_values(conv: Conversion, *, field: str | None = None) -> np.ndarray:
    """Object array of the values exactly as they go into JSON (bool/int/float/str, ISO-8601 times).

    Missing values are ``pd.NA`` (nothing to send); callers put ``None`` where JSON null is meant.
    """
    vals = conv.values
    n = len(vals)
    out = np.full(n, pd.NA, dtype=object)
    mask = vals.notna().to_numpy(dtype=bool)
    if not mask.any():
        return out
    if conv.json_type == "boolean":
        out[mask] = vals.to_numpy(dtype=bool, na_value=False)[mask].astype(object)
    elif conv.json_type == "number":
        arr = vals.to_numpy(dtype="float64", na_value=np.nan)[mask]
        integral = np.isfinite(arr) & (np.floor(arr) == arr) & (np.abs(arr) < 2 ** 53)
        objs = arr.astype(object)
        objs[integral] = arr[integral].astype(np.int64).astype(object)
        out[mask] = objs
    elif conv.json_type == "time":
        arr = vals.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")[mask]
        if field == "dob":  # §1.3 dob "YYYY-MM-DD"
            out[mask] = np.datetime_as_string(arr, unit="D").astype(object)
        else:
            text = np.char.add(np.datetime_as_string(arr, unit="ms").astype(str), "Z")
            out[mask] = text.astype(object)
    elif conv.json_type == "string":
        out[mask] = vals.to_numpy(dtype=object)[mask]
    else:
        out[mask] = vals.to_numpy(dtype=object)[mask]
    return out

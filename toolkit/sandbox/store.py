"""The sandbox's Braze workspace state and the endpoint semantics applied to it (no HTTP here).

Each public method takes a decoded JSON body and returns ``(status, response_body, stats)``. The
rules follow /work/shared/reference/braze-api.md; section numbers (§) in comments point there.
Where Braze documents nothing the sandbox is strict and says so in the error text, so that code
which passes here does not depend on lenient behaviour Braze never promised.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
import math
import re
import threading
import time
from datetime import datetime, timezone
from typing import Any

from toolkit.braze.limits import LIMITS
from toolkit.sandbox.timeparse import format_time, parse_time

__all__ = ["Store", "CountStore", "KEEP", "STRICT"]

STRICT = "(sandbox is strict here: Braze does not document this case)"

# §1.2 control keys of a user object; §1.3 Braze profile fields (case sensitive, lower case).
_IDENTIFIERS = ("external_id", "user_alias", "braze_id", "email", "phone")
_CONTROL = frozenset({"external_id", "user_alias", "braze_id", "_update_existing_only",
                      "push_token_import", "_merge_objects"})
_PROFILE_FIELDS = frozenset({
    "country", "current_location", "date_of_first_session", "date_of_last_session", "dob", "email",
    "email_subscribe", "email_open_tracking_disabled", "email_click_tracking_disabled", "facebook",
    "first_name", "gender", "home_city", "language", "last_name", "marked_email_as_spam_at", "phone",
    "push_subscribe", "push_tokens", "subscription_groups", "time_zone", "twitter",
})
# Profile fields that cannot be written through an attributes object.
_READ_ONLY_FIELDS = frozenset({"alias_name", "alias_label"})
_SPECIAL_KEYS = _PROFILE_FIELDS | _READ_ONLY_FIELDS | {"braze_id"}
# §7: subscription state changes are not billable data points.
_UNBILLED_FIELDS = frozenset({"email_subscribe", "push_subscribe", "subscription_groups"})
_SUBSCRIBE_STATES = frozenset({"opted_in", "unsubscribed", "subscribed"})
_GENDERS = frozenset({"M", "F", "O", "N", "P"})

_EVENT_KEYS = frozenset({*_IDENTIFIERS, "app_id", "name", "time", "properties",
                         "_update_existing_only"})
_PURCHASE_KEYS = frozenset({*_IDENTIFIERS, "app_id", "product_id", "currency", "price", "quantity",
                            "time", "properties", "_update_existing_only"})
# §1.4: reserved property keys return "Invalid 'properties' field".
_EVENT_RESERVED = frozenset({"time", "event_name"})
_PURCHASE_RESERVED = frozenset({"time", "product_id", "quantity", "event_name", "price", "currency"})


NO_IDENTIFIER = "'external_id', 'braze_id', 'user_alias', 'email' or 'phone' is required"
NO_VALID_DATA = "Valid data must be provided in the 'attributes', 'events', or 'purchases' fields."
INVALID_PROPERTIES = "Invalid 'properties' field"

# /users/export/ids fields this sandbox can answer (Braze's list is longer; unknown ones are refused).
EXPORT_FIELDS = frozenset({
    "external_id", "user_aliases", "braze_id", "email", "phone", "first_name", "last_name",
    "country", "dob", "gender", "home_city", "language", "time_zone", "email_subscribe",
    "push_subscribe", "created_at", "custom_attributes", "custom_events", "purchases",
})

_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,400}")

# /custom_attributes data_type labels.
_TYPE_LABEL = {"string": "String", "number": "Number", "boolean": "Boolean", "time": "Date",
               "array": "Array", "object": "Object"}


class _User:
    __slots__ = ("braze_id", "external_id", "aliases", "email", "phone", "fields", "attrs",
                 "events", "purchases", "created_at", "touched", "arrivals")

    def __init__(self, braze_id: str, created_at: datetime, touched: int) -> None:
        self.braze_id = braze_id
        self.external_id: str | None = None
        self.aliases: list[tuple[str, str]] = []
        self.email: str | None = None
        self.phone: str | None = None
        self.fields: dict[str, Any] = {}
        self.attrs: dict[str, Any] = {}
        self.events: dict[str, list] = {}      # name -> [first, last, count]
        self.arrivals: list[tuple] = []        # (arrived, name, time) per event, for read_delay
        self.purchases: dict[str, list] = {}   # product_id -> [first, last, count]
        self.created_at = created_at
        self.touched = touched                 # update sequence: "most recently updated" (§1.1)


class _ObjectError(Exception):
    """One object of a /users/track array is rejected; becomes an ``errors[]`` entry."""


class Store:
    """One Braze workspace in memory, guarded by a single short lock (``keep="users"``: every
    user's identifiers, profile fields, attributes, events and purchases)."""

    keep = "users"
    _identity = staticmethod(id)     # a user's key in a cohort's members

    def __init__(self, *, seed: int = 0, max_objects_per_array: int = LIMITS.objects_per_array,
                 combined_limit: int | None = LIMITS.combined_objects,
                 array_length_limit: int = LIMITS.array_length,
                 read_delay: float = 0.0) -> None:
        self.seed = seed
        # seconds before a stored event shows in /users/export/ids (Braze's eventual
        # consistency, braze-api.md §6: "allow for a 5-minute delay"); attributes show at once
        self.read_delay = float(read_delay)
        self.max_objects_per_array = max_objects_per_array
        self.combined_limit = combined_limit
        self.array_length_limit = array_length_limit
        self.lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        self.users: list[_User] = []
        self.by_external: dict[str, _User] = {}
        self.by_alias: dict[tuple[str, str], _User] = {}
        self.by_braze: dict[str, _User] = {}
        self.by_email: dict[str, list[_User]] = {}
        self.by_phone: dict[str, list[_User]] = {}
        self.attr_types: dict[str, str] = {}       # §2.2: type locked on the first value
        self.event_names: dict[str, None] = {}
        self.event_log: list[tuple] = []           # (user, name, time, properties, app_id)
        self.purchase_log: list[tuple] = []        # (user, product_id, currency, price, qty, time, props)
        self.cohorts: dict[str, dict] = {}         # cohort_id -> {name, created_at, members: dict}
        self.data_points = 0
        self._seq = itertools.count(1)

    # ------------------------------------------------------------------ summaries
    @property
    def user_count(self) -> int:
        return len(self.users)

    def summary(self) -> dict[str, Any]:
        """What the workspace holds, as counts (the same keys whatever ``keep`` is)."""
        events: dict[str, int] = {}
        for _, name, *_ in self.event_log:
            events[name] = events.get(name, 0) + 1
        purchases: dict[str, int] = {}
        for _, product, *_ in self.purchase_log:
            purchases[product] = purchases.get(product, 0) + 1
        return {"keep": self.keep, "users": self.user_count, "data_points": self.data_points,
                "attribute_types": dict(sorted(self.attr_types.items())),
                "events": dict(sorted(events.items())),
                "purchases": dict(sorted(purchases.items())),
                "cohorts": {cid: len(c["members"]) for cid, c in sorted(self.cohorts.items())}}

    @staticmethod
    def label(user: _User) -> str:
        """A user's key in inspection frames: external id, else ``alias_name:alias_label``, else
        braze_id."""
        if user.external_id is not None:
            return user.external_id
        if user.aliases:
            return f"{user.aliases[0][0]}:{user.aliases[0][1]}"
        return user.braze_id

    # ------------------------------------------------------------------ users and identifiers
    def _new_user(self) -> _User:
        n = next(self._seq)
        # 24 hex characters like Braze's ids, deterministic for a seed.
        digest = hashlib.blake2b(f"{self.seed}:{n}".encode(), digest_size=12).hexdigest()
        user = _User(digest, datetime.now(timezone.utc), n)
        self.users.append(user)
        self.by_braze[digest] = user
        return user

    def _touch(self, user: _User) -> None:
        user.touched = next(self._seq)

    @staticmethod
    def _pick_identifier(obj: dict, *, allow_profile_email: bool) -> tuple[str, Any]:
        """Which identifier addresses the object (§1.1, §1.2)."""
        primary = [k for k in ("external_id", "user_alias", "braze_id") if k in obj]
        if len(primary) > 1:
            raise _ObjectError(f"only one of 'external_id', 'user_alias', 'braze_id' may be given, "
                               f"got {primary} {STRICT}")
        if primary:
            key = primary[0]
            if not allow_profile_email and ("email" in obj or "phone" in obj):
                raise _ObjectError(f"'{key}' given together with 'email'/'phone': an event or "
                                   f"purchase takes one identifier {STRICT}")
        elif "email" in obj:
            key = "email"   # "If you include … both email and phone, Braze will use the email" (§1.1)
        elif "phone" in obj:
            key = "phone"
        else:
            raise _ObjectError(NO_IDENTIFIER)
        value = obj[key]
        if key == "user_alias":
            if (type(value) is not dict or set(value) != {"alias_name", "alias_label"}
                    or not all(type(v) is str and v for v in value.values())):
                raise _ObjectError("'user_alias' must be an object with non-empty string "
                                   "'alias_name' and 'alias_label'")
            return key, (value["alias_name"], value["alias_label"])
        if type(value) is not str or not value:
            raise _ObjectError(f"'{key}' must be a non-empty string")
        if len(value) > LIMITS.string_length:
            raise _ObjectError(f"'{key}' is longer than {LIMITS.string_length} characters {STRICT}")
        return key, value

    def _find(self, key: str, value: Any) -> _User | None:
        if key == "external_id":
            return self.by_external.get(value)
        if key == "user_alias":
            return self.by_alias.get(value)
        if key == "braze_id":
            return self.by_braze.get(value)
        candidates = (self.by_email if key == "email" else self.by_phone).get(value)
        if not candidates:
            return None
        # §1.1 FAQ: prefer the most recently updated profile with an external ID, else the most
        # recently updated profile.
        identified = [u for u in candidates if u.external_id is not None]
        return max(identified or candidates, key=lambda u: u.touched)

    def _create(self, key: str, value: Any) -> _User:
        user = self._new_user()
        if key == "external_id":
            user.external_id = value
            self.by_external[value] = user
        elif key == "user_alias":
            user.aliases.append(value)
            self.by_alias[value] = user
        elif key in ("email", "phone"):
            self._set_contact(user, key, value)
        return user

    def _set_contact(self, user: _User, field: str, value: str | None) -> None:
        """Set ``user.email`` or ``user.phone``, keeping its lookup index (several users may
        share one) in step."""
        index = self.by_email if field == "email" else self.by_phone
        old = getattr(user, field)
        if old is not None:
            index[old].remove(user)
        setattr(user, field, value)
        if value is not None:
            index.setdefault(value, []).append(user)

    def _resolve(self, obj: dict, array: str, key: str, value: Any) -> _User | None:
        """Find or create the object's user; None when the object is skipped (update only)."""
        update_only = obj.get("_update_existing_only")
        if update_only is not None and type(update_only) is not bool:
            raise _ObjectError("'_update_existing_only' must be a boolean")
        if key == "user_alias":
            # §1.2: for attributes "'Update Only' defaults to true"; for events and purchases it
            # "is always true", so an alias-only profile is created only by an attributes object
            # that says `_update_existing_only: false`.
            update_only = True if array != "attributes" else (update_only is not False)
        elif key == "braze_id":
            update_only = True  # Braze assigns braze_ids; a client cannot create one.
        else:
            update_only = bool(update_only)  # §1.2: omitted -> Braze creates the profile
        user = self._find(key, value)
        if user is None:
            if update_only:
                return None
            user = self._create(key, value)
        return user

    # ------------------------------------------------------------------ value validation
    @staticmethod
    def _check_key(key: Any, what: str) -> None:
        if type(key) is not str or not key:
            raise _ObjectError(f"{what} key must be a non-empty string")
        if len(key) > LIMITS.name_length:
            raise _ObjectError(f"{what} key '{key[:40]}…' is longer than {LIMITS.name_length} characters")
        if key[0] == "$":
            raise _ObjectError(f"{what} key '{key}' cannot begin with '$'")

    @staticmethod
    def _is_time(value: str) -> bool:
        dt = parse_time(value)
        return dt is not None and 0 <= dt.year <= 3000  # §2.2: other years are stored as strings

    def _classify(self, name: str, value: Any) -> str:
        """Braze data type of a custom attribute value (§2.2), or raise for an invalid one."""
        t = type(value)
        if t is bool:
            return "boolean"
        if t is int or t is float:
            if t is float and not math.isfinite(value):
                raise _ObjectError(f"attribute '{name}' is not a finite number")
            return "number"
        if t is str:
            if len(value) > LIMITS.string_length:
                raise _ObjectError(f"attribute '{name}' string value is longer than {LIMITS.string_length} "
                                   f"characters")
            return "time" if self._is_time(value) else "string"
        if t is list:
            for item in value:
                if type(item) is not str:
                    raise _ObjectError(f"attribute '{name}' array items must be strings (arrays of "
                                       f"objects are not modelled by the sandbox)")
                if len(item) > LIMITS.string_length:
                    raise _ObjectError(f"attribute '{name}' array item is longer than {LIMITS.string_length} "
                                       f"characters")
            return "array"
        if t is dict:
            self._check_nested(name, value)
            if len(json.dumps(value)) > LIMITS.object_bytes:
                raise _ObjectError(f"attribute '{name}' object is larger than 100 KB")
            return "object"
        raise _ObjectError(f"attribute '{name}' has an unsupported value type")

    def _check_nested(self, name: str, value: Any) -> None:
        # Nested custom attributes: keys ≤255, no spaces, no '.' or '$' (§2.1).
        if type(value) is dict:
            for k, v in value.items():
                if (not k or len(k) > LIMITS.name_length or " " in k or "." in k or "$" in k):
                    raise _ObjectError(f"attribute '{name}' has an invalid nested key '{k[:40]}': "
                                       f"keys are ≤255 characters without spaces, '.' or '$'")
                self._check_nested(name, v)
        elif type(value) is list:
            for v in value:
                self._check_nested(name, v)
        elif type(value) is str and len(value) > LIMITS.string_length:
            raise _ObjectError(f"attribute '{name}' nested string is longer than {LIMITS.string_length} "
                               f"characters")

    def _lock_type(self, name: str, kind: str, pending: dict[str, str]) -> None:
        locked = self.attr_types.get(name) or pending.get(name)
        if locked is None:
            pending[name] = kind
        elif locked != kind:
            # §2.2 (DT): "API calls that send the previous data type for the changed attribute are
            # not accepted" — the type is fixed by the first value the workspace saw.
            raise _ObjectError(f"custom attribute '{name}' has data type {_TYPE_LABEL[locked]}; a "
                               f"{_TYPE_LABEL[kind]} value is not accepted (type is locked on the "
                               f"first value)")

    def _check_profile_field(self, name: str, value: Any) -> Any:
        if value is None:
            return None
        if name in ("email_subscribe", "push_subscribe"):
            if value not in _SUBSCRIBE_STATES:
                raise _ObjectError(f"'{name}' must be one of opted_in, subscribed, unsubscribed")
        elif name == "gender":
            if value not in _GENDERS:
                raise _ObjectError("'gender' must be one of M, F, O, N, P or null")
        elif name == "dob":
            dt = parse_time(value)
            if dt is None or len(value) != 10:
                raise _ObjectError("'dob' must be a date string YYYY-MM-DD")
        elif name == "country":
            # §1.3: bad country values become NULL rather than an error.
            if type(value) is not str or len(value) != 2 or not value.isalpha():
                return None
            return value.upper()
        elif name in ("current_location",):
            if type(value) is not dict or set(value) != {"longitude", "latitude"}:
                raise _ObjectError("'current_location' must be {\"longitude\": …, \"latitude\": …}")
        elif name in ("subscription_groups", "push_tokens"):
            if type(value) is not list:
                raise _ObjectError(f"'{name}' must be an array")
        elif name in ("email_open_tracking_disabled", "email_click_tracking_disabled"):
            if type(value) is not bool:
                raise _ObjectError(f"'{name}' must be a boolean")
        else:
            if type(value) is not str or len(value) > LIMITS.string_length:
                raise _ObjectError(f"'{name}' must be a string of at most {LIMITS.string_length} characters")
        return value

    def _check_properties(self, props: Any, reserved: frozenset) -> dict:
        if props is None:
            return {}
        if type(props) is not dict:
            raise _ObjectError(f"{INVALID_PROPERTIES}: 'properties' must be an object")
        nested = False
        for k, v in props.items():
            if not k or len(k) > LIMITS.name_length or k[0] == "$":
                raise _ObjectError(f"{INVALID_PROPERTIES}: property key '{k[:40]}' must be "
                                   f"non-empty, ≤255 characters and not begin with '$'")
            if k in reserved:
                raise _ObjectError(f"{INVALID_PROPERTIES}: '{k}' is a reserved property key")
            t = type(v)
            if t is str:
                if len(v) > LIMITS.string_length:
                    raise _ObjectError(f"{INVALID_PROPERTIES}: property '{k}' string is longer than "
                                       f"{LIMITS.string_length} characters")
            elif t is list or t is dict:
                nested = True
            elif v is not None and t not in (int, float, bool):
                raise _ObjectError(f"{INVALID_PROPERTIES}: property '{k}' has an unsupported type")
        if nested and len(json.dumps(props)) > LIMITS.property_payload_bytes:
            raise _ObjectError(f"{INVALID_PROPERTIES}: properties with arrays or objects are larger "
                               f"than 100 KB")
        if len(props) > LIMITS.event_properties:
            props = dict(itertools.islice(props.items(), LIMITS.event_properties))
        return props

    @staticmethod
    def _check_time(value: Any, now: datetime) -> datetime:
        dt = parse_time(value)
        if dt is None:
            raise _ObjectError("'time' is required as an ISO-8601 string (or "
                               "yyyy-MM-dd'T'HH:mm:ss:SSSZ)")
        return min(dt, now)  # §1.4: future timestamps default to the current time

    # ------------------------------------------------------------------ /users/track
    def track(self, body: Any) -> tuple[int, dict, dict]:
        if type(body) is not dict:
            return 400, {"message": "Bad Request: the body must be a JSON object"}, {}
        unknown = sorted(set(body) - {"attributes", "events", "purchases"})
        if unknown:
            return 400, {"message": f"Bad Request: unknown top-level field(s) {unknown}; expected "
                                    f"'attributes', 'events', 'purchases' {STRICT}"}, {}
        arrays = {}
        for name in ("attributes", "events", "purchases"):
            value = body.get(name)
            if value is None:
                continue
            if type(value) is not list:
                return 400, {"message": f"Bad Request: '{name}' must be an array"}, {}
            arrays[name] = value
        total = sum(len(v) for v in arrays.values())
        too_long = [n for n, v in arrays.items() if len(v) > self.max_objects_per_array]
        if too_long or (self.combined_limit is not None and total > self.combined_limit):
            # §1.6 / §1.9: 400 Max Input Length Exceeded. Each error points at the first object
            # over the limit, counted within its own array.
            if too_long:
                limit = f"{self.max_objects_per_array} objects per array"
                over = [(n, self.max_objects_per_array) for n in too_long]
            else:
                limit = (f"{self.combined_limit} objects combined across attributes, events and "
                         f"purchases")
                seen, over = 0, []
                for n, v in arrays.items():
                    if seen + len(v) > self.combined_limit:
                        over.append((n, max(self.combined_limit - seen, 0)))
                        break
                    seen += len(v)
            return 400, {"message": "Max Input Length Exceeded",
                         "errors": [{"type": f"Max Input Length Exceeded: at most {limit} per "
                                             f"request", "input_array": n, "index": i}
                                    for n, i in over]}, {"objects": total}
        if total == 0:
            return 400, {"message": NO_VALID_DATA}, {}

        errors: list[dict] = []
        processed = dict.fromkeys(arrays, 0)
        skipped = 0
        points = 0
        now = datetime.now(timezone.utc)
        with self.lock:
            # §1.1 (LIMITS): processing order attributes, then events, then purchases.
            for name, apply in (("attributes", self._apply_attributes),
                                ("events", self._apply_event),
                                ("purchases", self._apply_purchase)):
                for index, obj in enumerate(arrays.get(name, ())):
                    try:
                        if type(obj) is not dict:
                            raise _ObjectError(f"each '{name}' item must be an object")
                        dp, skip = apply(obj, now)
                    except _ObjectError as exc:
                        errors.append({"type": str(exc), "input_array": name, "index": index})
                        continue
                    processed[name] += 1
                    points += dp
                    skipped += skip
            self.data_points += points
        stats = {"objects": total, "data_points": points, "skipped": skipped}
        if not any(processed.values()):
            # Every object was invalid: the illustrative fatal shape in §1.8.
            return 400, {"message": NO_VALID_DATA, "errors": errors}, stats
        response: dict[str, Any] = {"message": "success"}
        for name in arrays:
            response[f"{name}_processed"] = processed[name]
        if errors:
            response["errors"] = errors
        if skipped:
            stats["note"] = f"{skipped} object(s) for unknown users skipped (update only)"
        return 201, response, stats

    def _apply_attributes(self, obj: dict, now: datetime) -> tuple[int, int]:
        ext = obj.get("external_id")
        if (type(ext) is str and 0 < len(ext) <= LIMITS.string_length and "user_alias" not in obj
                and "braze_id" not in obj):
            key, ident = "external_id", ext   # the common case, as _pick_identifier decides it
        else:
            key, ident = self._pick_identifier(obj, allow_profile_email=True)
        merge = obj.get("_merge_objects", False)
        if type(merge) is not bool:
            raise _ObjectError("'_merge_objects' must be a boolean")
        if obj.get("push_token_import"):
            raise _ObjectError(f"'push_token_import' is not modelled by the sandbox {STRICT}")
        # Validate every key before touching the profile: a rejected object changes nothing.
        ops: list[tuple[str, str, Any]] = []  # (kind, name, value)
        pending: dict[str, str] = {}
        attr_types = self.attr_types
        for name, value in obj.items():
            if name in _CONTROL or name == key:
                continue
            t = type(value)
            # Fast path for the common case (a plain custom attribute with a scalar value); the
            # rules are the same as _check_key/_classify/_lock_type below.
            if ((t is bool or t is int or (t is float and math.isfinite(value))
                    or (t is str and len(value) <= LIMITS.string_length))
                    and name and len(name) <= LIMITS.name_length and name[0] != "$"
                    and name not in _SPECIAL_KEYS):
                kind = ("boolean" if t is bool else "number" if t is not str else
                        "time" if value[:1].isdigit() and self._is_time(value) else "string")
                locked = attr_types.get(name) or pending.get(name)
                if locked is None:
                    pending[name] = kind
                elif locked != kind:
                    self._lock_type(name, kind, pending)  # raises the type-lock error
                ops.append(("set", name, value))
                continue
            self._check_key(name, "attribute")
            if name in _READ_ONLY_FIELDS or name == "braze_id":
                raise _ObjectError(f"'{name}' cannot be set through an attributes object {STRICT}")
            if name in _PROFILE_FIELDS:
                ops.append(("field", name, self._check_profile_field(name, value)))
                continue
            if value is None:
                ops.append(("null", name, None))
                continue
            if type(value) is dict and value and set(value) <= {"inc"}:
                step = value["inc"]
                if type(step) is not int:
                    raise _ObjectError(f"attribute '{name}': 'inc' takes an integer")
                self._lock_type(name, "number", pending)
                ops.append(("inc", name, step))
                continue
            if type(value) is dict and value and set(value) <= {"add", "remove"}:
                for op in value:
                    if type(value[op]) is not list:
                        raise _ObjectError(f"attribute '{name}': '{op}' takes an array of strings")
                    self._classify(name, value[op])
                self._lock_type(name, "array", pending)
                ops.append(("array", name, value))
                continue
            kind = self._classify(name, value)
            self._lock_type(name, kind, pending)
            ops.append(("set", name, value))

        user = self._resolve(obj, "attributes", key, ident)
        if user is None:
            return 0, 1
        self.attr_types.update(pending)
        points = self._write(user, ops, merge)
        self._touch(user)
        return points, 0

    def _write(self, user: _User, ops: list[tuple[str, str, Any]], merge: bool) -> int:
        """Apply an attributes object's validated ``ops`` to ``user``; the data points billed."""
        attrs = user.attrs
        points = 0
        for kind, name, value in ops:
            # §7: every write is billed, changed or not; arrays per added/removed value.
            if kind == "set":
                if type(value) is list:
                    value = self._dedupe(value)[-self.array_length_limit:]
                elif type(value) is dict:
                    points += _count_keys(value) - 1   # the keys sent, merged or not
                    if merge and type(attrs.get(name)) is dict:
                        value = _deep_merge(attrs[name], value)
                attrs[name] = value
                points += 1
            elif kind == "null":
                attrs.pop(name, None)
                points += 1
            elif kind == "inc":
                current = attrs.get(name)
                attrs[name] = (current if type(current) in (int, float) else 0) + value
                points += 1
            elif kind == "array":
                current = list(attrs.get(name) or ())
                for item in value.get("add", ()):
                    if item in current:
                        current.remove(item)   # §2.2: a re-added element moves to the end
                    current.append(item)
                    points += 1
                for item in value.get("remove", ()):
                    if item in current:
                        current.remove(item)
                    points += 1
                attrs[name] = current[-self.array_length_limit:]
            else:  # profile field
                if name in ("email", "phone"):
                    self._set_contact(user, name, value)
                elif value is None:
                    user.fields.pop(name, None)
                else:
                    user.fields[name] = value
                if name not in _UNBILLED_FIELDS:
                    points += 1
        return points

    @staticmethod
    def _dedupe(values: list) -> list:
        out: dict[str, None] = {}
        for v in values:
            out.pop(v, None)  # the last occurrence wins its position
            out[v] = None
        return list(out)

    def _identified(self, obj: dict, known: frozenset, what: str) -> tuple[str, Any]:
        """The identifier of an event or purchase object, after refusing unknown fields."""
        unknown = set(obj) - known
        if unknown:
            raise _ObjectError(f"unknown {what} field(s) {sorted(unknown)} {STRICT}")
        return self._pick_identifier(obj, allow_profile_email=False)

    def _apply_event(self, obj: dict, now: datetime) -> tuple[int, int]:
        key, ident = self._identified(obj, _EVENT_KEYS, "event")
        name = obj.get("name")
        if type(name) is not str or not name:
            raise _ObjectError("event 'name' is required as a non-empty string")
        self._check_key(name, "event name")
        when = self._check_time(obj.get("time"), now)
        props = self._check_properties(obj.get("properties"), _EVENT_RESERVED)
        app_id = obj.get("app_id")
        if app_id is not None and type(app_id) is not str:
            raise _ObjectError("'app_id' must be a string")
        user = self._resolve(obj, "events", key, ident)
        if user is None:
            return 0, 1
        self._record_event(user, name, when, props, app_id)
        self._touch(user)
        return 1, 0

    def _record_event(self, user: _User, name: str, when: datetime, props: dict,
                      app_id: str | None) -> None:
        self.event_names.setdefault(name, None)
        self.event_log.append((user, name, when, props, app_id))
        _count(user.events, name, when)
        user.arrivals.append((time.monotonic(), name, when))

    def _apply_purchase(self, obj: dict, now: datetime) -> tuple[int, int]:
        key, ident = self._identified(obj, _PURCHASE_KEYS, "purchase")
        product = obj.get("product_id")
        if type(product) is not str or not product or len(product) > LIMITS.string_length:
            raise _ObjectError("'product_id' is required as a string of at most 255 characters")
        currency = obj.get("currency")
        if type(currency) is not str or len(currency) != 3 or not currency.isalpha() \
                or not currency.isupper():
            raise _ObjectError("'currency' is required as an ISO 4217 code such as USD")
        price = obj.get("price")
        if type(price) not in (int, float) or not math.isfinite(price):
            raise _ObjectError("'price' is required as a number")
        quantity = obj.get("quantity", 1)
        if type(quantity) is not int or not 1 <= quantity <= 100:
            raise _ObjectError("'quantity' must be an integer from 1 to 100")
        when = self._check_time(obj.get("time"), now)
        props = self._check_properties(obj.get("properties"), _PURCHASE_RESERVED)
        user = self._resolve(obj, "purchases", key, ident)
        if user is None:
            return 0, 1
        self._record_purchase(user, product, currency, price, quantity, when, props)
        self._touch(user)
        return 1, 0

    def _record_purchase(self, user: _User, product: str, currency: str, price: float,
                         quantity: int, when: datetime, props: dict) -> None:
        self.purchase_log.append((user, product, currency, price, quantity, when, props))
        _count(user.purchases, product, when)

    # ------------------------------------------------------------------ /users/export/ids
    def export_ids(self, body: Any) -> tuple[int, dict, dict]:
        if type(body) is not dict:
            return 400, {"message": "Bad Request: the body must be a JSON object"}, {}
        allowed = {"external_ids", "user_aliases", "device_id", "braze_id", "email_address",
                   "phone", "fields_to_export"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            return 400, {"message": f"Bad Request: unknown field(s) {unknown} {STRICT}"}, {}
        external_ids = body.get("external_ids") or []
        aliases = body.get("user_aliases") or []
        if type(external_ids) is not list or not all(type(x) is str for x in external_ids):
            return 400, {"message": "'external_ids' must be an array of strings"}, {}
        if type(aliases) is not list or not all(
                type(a) is dict and type(a.get("alias_name")) is str
                and type(a.get("alias_label")) is str for a in aliases):
            return 400, {"message": "'user_aliases' must be an array of {alias_name, alias_label}"}, {}
        if len(external_ids) + len(aliases) > LIMITS.export_ids_per_request:
            # §1.9: "Caused by calling more than 50 external IDs."
            return 400, {"message": "The max number of external_ids and aliases per request was "
                                    "exceeded"}, {"objects": len(external_ids) + len(aliases)}
        fields = body.get("fields_to_export")
        if fields is None:
            # §6: required for workspaces onboarded on/after 2024-08-22; the sandbox is a new one.
            return 400, {"message": "'fields_to_export' is required"}, {}
        if type(fields) is not list or not fields or not all(type(f) is str for f in fields):
            return 400, {"message": "'fields_to_export' must be a non-empty array of strings"}, {}
        bad = sorted(set(fields) - EXPORT_FIELDS)
        if bad:
            return 400, {"message": f"'fields_to_export' has unsupported field(s) {bad}; the "
                                    f"sandbox answers {sorted(EXPORT_FIELDS)}"}, {}
        lookups: list[tuple[str, Any, str]] = []
        lookups += [("external_id", x, x) for x in external_ids]
        lookups += [("user_alias", (a["alias_name"], a["alias_label"]),
                     f"{a['alias_name']}:{a['alias_label']}") for a in aliases]
        for field, key in (("braze_id", "braze_id"), ("email_address", "email"),
                           ("phone", "phone")):
            if field in body:
                if type(body[field]) is not str:
                    return 400, {"message": f"'{field}' must be a string"}, {}
                lookups.append((key, body[field], body[field]))
        if "device_id" in body:
            lookups.append(("device_id", body["device_id"], str(body["device_id"])))
        if not lookups:
            return 400, {"message": "Provide 'external_ids', 'user_aliases', 'device_id', "
                                    "'braze_id', 'email_address' or 'phone'"}, {}
        users, invalid, seen = [], [], set()
        with self.lock:
            for key, value, label in lookups:
                user = None if key == "device_id" else self._find(key, value)
                if user is None:
                    invalid.append(label)
                elif id(user) not in seen:
                    seen.add(id(user))
                    users.append(self._export_user(user, fields, self.read_delay))
        response: dict[str, Any] = {"users": users, "message": "success"}
        if invalid:
            response["invalid_user_ids"] = invalid
        return 201, response, {"objects": len(lookups)}

    @staticmethod
    def _visible_events(user: _User, read_delay: float) -> dict:
        """The user's event counters as a reader sees them ``read_delay`` seconds late."""
        if read_delay <= 0:
            return user.events
        cutoff = time.monotonic() - read_delay
        counters: dict[str, list] = {}
        for arrived, name, when in user.arrivals:
            if arrived <= cutoff:
                _count(counters, name, when)
        return counters

    @staticmethod
    def _export_user(user: _User, fields: list[str], read_delay: float = 0.0) -> dict:
        out: dict[str, Any] = {}
        for f in fields:
            if f == "external_id":
                if user.external_id is not None:
                    out[f] = user.external_id
            elif f == "braze_id":
                out[f] = user.braze_id
            elif f == "user_aliases":
                if user.aliases:
                    out[f] = [{"alias_name": n, "alias_label": l} for n, l in user.aliases]
            elif f == "email":
                if user.email is not None:
                    out[f] = user.email
            elif f == "phone":
                if user.phone is not None:
                    out[f] = user.phone
            elif f == "created_at":
                out[f] = format_time(user.created_at)
            elif f == "custom_attributes":
                out[f] = json.loads(json.dumps(user.attrs))  # a copy the caller cannot alias
            elif f in ("custom_events", "purchases"):
                counters = (Store._visible_events(user, read_delay) if f == "custom_events"
                            else user.purchases)
                out[f] = [{"name": n, "first": format_time(c[0]), "last": format_time(c[1]),
                           "count": c[2]} for n, c in counters.items()]
            elif f in user.fields:
                out[f] = user.fields[f]
        return out

    # ------------------------------------------------------------------ listings
    def custom_attributes(self, cursor: str | None, base_url: str) -> tuple[int, dict, dict]:
        with self.lock:
            names = sorted(self.attr_types.items())
        start = 0
        if cursor:
            if not _CURSOR.fullmatch(cursor):
                return 400, {"message": "Invalid 'cursor' parameter"}, {}
            try:
                after = base64.urlsafe_b64decode(cursor.encode() + b"==").decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return 400, {"message": "Invalid 'cursor' parameter"}, {}
            start = sum(1 for n, _ in names if n <= after)
        page = names[start:start + 50]
        attributes = [{"array_length": self.array_length_limit if t == "array" else None,
                       "data_type": _TYPE_LABEL[t], "description": None, "name": n,
                       "status": "Active", "tag_names": []} for n, t in page]
        stats: dict[str, Any] = {"objects": len(page)}
        if start + 50 < len(names):
            token = base64.urlsafe_b64encode(page[-1][0].encode()).decode().rstrip("=")
            stats["link"] = f'<{base_url}/custom_attributes?cursor={token}>; rel="next"'
        return 200, {"message": "success", "attributes": attributes}, stats

    def events_list(self, page: str | None) -> tuple[int, dict, dict]:
        try:
            number = int(page) if page not in (None, "") else 0
        except ValueError:
            number = -1
        if number < 0:
            return 400, {"message": "'page' must be a non-negative integer"}, {}
        with self.lock:
            names = sorted(self.event_names)
        chunk = names[number * 250:(number + 1) * 250]
        return 200, {"message": "success", "events": chunk}, {"objects": len(chunk)}

    # ------------------------------------------------------------------ partner cohorts (§4)
    def create_cohort(self, body: dict) -> tuple[int, dict, dict]:
        cohort_id, name, created = body.get("cohort_id"), body.get("name"), body.get("created_at")
        if type(cohort_id) is not str or not cohort_id:
            return 400, {"message": "`cohort_id` must be a valid string"}, {}
        if type(name) is not str or not name.strip():
            return 400, {"message": "`name` must be a non-empty string"}, {}
        when = parse_time(created)
        if when is None:
            return 400, {"message": "`created_at` must be a valid time as an ISO-8601 string"}, {}
        with self.lock:
            cohort = self.cohorts.setdefault(cohort_id, {"members": {}, "created_at": when})
            cohort["name"] = name  # also called "when the name of a cohort … is changed"
        return 201, {"message": "success"}, {"objects": 1}

    def update_cohort(self, body: dict) -> tuple[int, dict, dict]:
        cohort_id, changes = body.get("cohort_id"), body.get("cohort_changes")
        if type(cohort_id) is not str or not cohort_id:
            return 400, {"message": "`cohort_id` must be a valid string"}, {}
        shape = ("`cohort_changes` must be an array of objects each with key `user_ids` and/or "
                 "`device_ids` mapping to an array of strings, or an `aliases` object")
        if type(changes) is not list:
            return 400, {"message": shape}, {}
        total = 0
        parsed = []
        for change in changes:
            if type(change) is not dict or not set(change) <= {"user_ids", "device_ids", "aliases",
                                                               "should_remove"}:
                return 400, {"message": shape}, {}
            ids = change.get("user_ids") or []
            devices = change.get("device_ids") or []
            aliases = change.get("aliases") or []
            remove = change.get("should_remove", False)
            if (type(ids) is not list or type(devices) is not list or type(aliases) is not list
                    or not all(type(x) is str for x in ids + devices)
                    or not all(type(a) is dict and type(a.get("alias_name")) is str
                               and type(a.get("alias_label")) is str for a in aliases)
                    or type(remove) is not bool):
                return 400, {"message": shape}, {}
            total += len(ids) + len(devices) + len(aliases)
            parsed.append((ids, devices, aliases, remove))
        if total > LIMITS.cohort_ids_per_request:
            return 400, {"message": "Only 1,000 `user_ids`, `device_ids`, and `aliases` are "
                                    "allowed per request"}, {"objects": total}
        matched = 0
        with self.lock:
            cohort = self.cohorts.get(cohort_id)
            if cohort is None:
                if total:
                    return 400, {"message": f"Unknown cohort_id '{cohort_id}': create it with POST "
                                            f"/partners/segment/cohorts first {STRICT}"}, {}
                return 201, {"message": "success"}, {"objects": 0}
            members = cohort["members"]
            for ids, devices, aliases, remove in parsed:
                # §4.1: users are matched, never created; unknown IDs are ignored. The sandbox has
                # no anonymous device profiles, so device_ids never match anyone.
                found = [self.by_external.get(x) for x in ids]
                found += [self.by_alias.get((a["alias_name"], a["alias_label"])) for a in aliases]
                for user in found:
                    if user is None:
                        continue
                    matched += 1
                    if remove:
                        members.pop(self._identity(user), None)
                    else:
                        members[self._identity(user)] = user
        return 201, {"message": "success"}, {"objects": total,
                                             "note": f"{total - matched} id(s) matched no user"
                                             if total - matched else ""}


class _Present:
    """A set of identifiers that answers ``dict.get`` as the user indexes do: a counted user's
    reference (the identifier itself) or the default."""

    __slots__ = ("members",)

    def __init__(self, members: set) -> None:
        self.members = members

    def get(self, key: Any, default: Any = None) -> Any:
        return key if key in self.members else default


class CountStore(Store):
    """``keep="counts"``: a workspace that validates, refuses and bills every request exactly as
    `Store` does but keeps, per user, only what those decisions depend on.

    Kept: which users exist (a set of external ids and one of aliases, so update-only objects
    are skipped and cohort ids matched exactly), each user's email and phone with its "most
    recently updated" order (email/phone addressing, §1.1), every attribute's locked type, event
    names, cohort members, data points, and counts of events and purchases per name. Not kept:
    attribute and profile-field values, event and purchase records — so ``/users/export/ids``
    and segments (which read them) answer 400 saying so, and the inspection frames are refused.
    About 120 bytes a user instead of ~1.5 KB (9M users: a 1.1 GB process). A user's braze_id
    is the digest of its place in creation order (ids are never shown in this mode).
    """

    keep = "counts"

    @staticmethod
    def _identity(user: Any) -> Any:
        return user                    # a reference is its own key (a string, tuple or int)

    def clear(self) -> None:
        super().clear()
        # A user is referred to by its external id (str), its alias (name, label) or, created by
        # email/phone, by its sequence number (int); `created` lists them in creation order.
        self.users = None              # nothing per user: code that needs users fails loudly
        self.externals: set[str] = set()
        self.alias_set: set[tuple[str, str]] = set()
        self.by_external = _Present(self.externals)
        self.by_alias = _Present(self.alias_set)
        self.created: list = []
        self._braze: dict[str, Any] | None = None     # built on the first braze_id lookup
        self.contacts: dict[Any, list] = {}           # ref -> [email, phone], for those with one
        self.touched: dict[Any, int] = {}             # ref -> update sequence, for those with one
        self.event_counts: dict[str, int] = {}
        self.purchase_counts: dict[str, int] = {}

    @property
    def user_count(self) -> int:
        return len(self.created)

    def summary(self) -> dict[str, Any]:
        return {"keep": self.keep, "users": self.user_count, "data_points": self.data_points,
                "attribute_types": dict(sorted(self.attr_types.items())),
                "events": dict(sorted(self.event_counts.items())),
                "purchases": dict(sorted(self.purchase_counts.items())),
                "cohorts": {cid: len(c["members"]) for cid, c in sorted(self.cohorts.items())}}

    def label(self, user: Any) -> str:
        if type(user) is str:
            return user
        if type(user) is tuple:
            return f"{user[0]}:{user[1]}"
        return self._braze_id(self.created.index(user))

    def _braze_id(self, place: int) -> str:
        return hashlib.blake2b(f"{self.seed}:{place + 1}".encode(), digest_size=12).hexdigest()

    def _braze_index(self) -> dict[str, Any]:
        if self._braze is None:
            self._braze = {self._braze_id(i): ref for i, ref in enumerate(self.created)}
        return self._braze

    # -- the user hooks of Store, on references
    def _find(self, key: str, value: Any) -> Any:
        if key == "external_id":
            return value if value in self.externals else None
        if key == "user_alias":
            return value if value in self.alias_set else None
        if key == "braze_id":
            return self._braze_index().get(value)
        candidates = (self.by_email if key == "email" else self.by_phone).get(value)
        if not candidates:
            return None
        identified = [r for r in candidates if type(r) is str]
        return max(identified or candidates, key=self.touched.__getitem__)

    def _create(self, key: str, value: Any) -> Any:
        n = next(self._seq)
        if key == "external_id":
            ref = value
            self.externals.add(value)
        elif key == "user_alias":
            ref = value
            self.alias_set.add(value)
        else:
            ref = n
        if self._braze is not None:
            self._braze[self._braze_id(len(self.created))] = ref
        self.created.append(ref)
        if key in ("email", "phone"):
            self._set_contact(ref, key, value)
            self.touched[ref] = n
        return ref

    def _touch(self, user: Any) -> None:
        n = next(self._seq)
        if user in self.contacts:
            self.touched[user] = n

    def _set_contact(self, user: Any, field: str, value: str | None) -> None:
        index = self.by_email if field == "email" else self.by_phone
        slot = 0 if field == "email" else 1
        entry = self.contacts.get(user) or [None, None]
        old = entry[slot]
        if old is not None:
            index[old].remove(user)
        entry[slot] = value
        if value is not None:
            index.setdefault(value, []).append(user)
        if entry[0] is None and entry[1] is None:
            self.contacts.pop(user, None)
            self.touched.pop(user, None)
        else:
            self.contacts[user] = entry

    def _write(self, user: Any, ops: list[tuple[str, str, Any]], merge: bool) -> int:
        # the billing of Store._write, without keeping the values (§7: every write is billed)
        points = 0
        for kind, name, value in ops:
            if kind == "set":
                if type(value) is dict:
                    points += _count_keys(value) - 1
                points += 1
            elif kind == "array":
                points += len(value.get("add", ())) + len(value.get("remove", ()))
            elif kind == "field":
                if name in ("email", "phone"):
                    self._set_contact(user, name, value)
                if name not in _UNBILLED_FIELDS:
                    points += 1
            else:   # null, inc
                points += 1
        return points

    def _record_event(self, user: Any, name: str, when: datetime, props: dict,
                      app_id: str | None) -> None:
        self.event_names.setdefault(name, None)
        self.event_counts[name] = self.event_counts.get(name, 0) + 1

    def _record_purchase(self, user: Any, product: str, currency: str, price: float,
                         quantity: int, when: datetime, props: dict) -> None:
        self.purchase_counts[product] = self.purchase_counts.get(product, 0) + 1

    def export_ids(self, body: Any) -> tuple[int, dict, dict]:
        return 400, {"message": f"{KEPT_COUNTS} holds no attribute values or events to export; "
                                f"start it with keep='users' (the default) to read users back"}, {}


KEEP = {"users": Store, "counts": CountStore}
KEPT_COUNTS = "this sandbox (keep='counts')"


def _count(counters: dict, name: str, when: datetime) -> None:
    c = counters.get(name)
    if c is None:
        counters[name] = [when, when, 1]
    else:
        if when < c[0]:
            c[0] = when
        if when > c[1]:
            c[1] = when
        c[2] += 1


def _deep_merge(old: dict, new: dict) -> dict:
    out = dict(old)
    for k, v in new.items():
        out[k] = _deep_merge(out[k], v) if type(v) is dict and type(out.get(k)) is dict else v
    return out


def _count_keys(value: Any) -> int:
    """§7: "Every key in the object will count as a data point" (leaf keys; at least 1)."""
    if type(value) is not dict or not value:
        return 1
    return sum(_count_keys(v) if type(v) is dict else 1 for v in value.values())

"""The bridge from Engage to Braze: how each audience or computed trait is sent and how Braze selects it.

A `Mapping` holds one `Rule` per computation key. Defaults come from the export (every
computation → custom attribute); each choice can be overridden with ``mapping.set(key, …)``,
saved to a small YAML file and loaded back so scheduled runs reuse exactly what the analyst
approved. Payload rules (names, reserved fields, standard traits, value conversion) live in
`toolkit.braze.rules`.
"""
from __future__ import annotations

import dataclasses
import re
import reprlib
from dataclasses import dataclass, fields
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np
import pandas as pd
import yaml

from toolkit.braze import rules as braze_rules
from toolkit.engage.model import EngageExport, Findings
from toolkit.errors import MappingError

if TYPE_CHECKING:
    from toolkit.braze.filters import Filter
    from toolkit.preview import Preview

__all__ = ["Rule", "Mapping", "KINDS", "SEND_AS", "DEFAULT_SEGMENT_NAMES"]

KINDS = ("audience", "trait")
SEND_AS = ("attribute", "event", "both", "cohort")
_YAML_VERSION = 1
# How the Braze segment mirroring a computation is named, unless the mapping pairs it by id:
# placeholders {key}, {attribute}, {kind}; compared without regard to case or outer spaces.
DEFAULT_SEGMENT_NAMES = "{key}"
_SEGMENT_FIELDS = ("key", "attribute", "kind")

# Value types a standard trait may have to land in each Braze profile field.
_FIELD_TYPES = {"dob": {"datetime", "string"}, "email": {"string"}, "phone": {"string", "number"}}


@dataclass(frozen=True)
class Rule:
    """How one Engage computation is represented in Braze (see TEAM.md "Mapping" contract).

    ``attribute`` defaults to the Braze profile field for Segment standard traits (firstName →
    first_name) and to the key otherwise. ``exit_value`` is what an audience attribute is set to
    when a profile leaves (False, or None to remove the attribute). Event names default to
    Engage's (`Audience Entered`, `Audience Exited`, `Trait Computed`); cohort name and id
    default to the key and the Segment computation id.
    """

    key: str
    kind: str
    send_as: str = "attribute"
    attribute: str | None = None
    exit_value: bool | None = False
    enter_event: str = "Audience Entered"
    exit_event: str = "Audience Exited"
    trait_event: str = "Trait Computed"
    cohort_name: str | None = None
    cohort_id: str | None = None

    def __post_init__(self) -> None:
        key = self.key
        if not isinstance(key, str) or not key.strip():
            raise MappingError(f"a rule needs a computation key, got {key!r}", field="key",
                               hint="use the audience or trait key as it appears in the export")
        if self.kind not in KINDS:
            raise MappingError(f"kind must be one of {KINDS}, not {self.kind!r}", rule=key,
                               field="kind", hint="use 'audience' or 'trait'")
        if self.send_as not in SEND_AS:
            raise MappingError(f"send_as must be one of {SEND_AS}, not {self.send_as!r}",
                               rule=key, field="send_as", hint="pick one of " + ", ".join(SEND_AS))
        if self.send_as == "cohort" and self.kind != "audience":
            raise MappingError("only audiences can be sent as a Braze cohort", rule=key,
                               field="send_as", hint="send the trait as 'attribute' or 'event'")
        if self.attribute is None:
            default = braze_rules.standard_field(key) if self.kind == "trait" else None
            object.__setattr__(self, "attribute", default or key)
        if self.sends_attribute:
            braze_rules.require_attribute_name(self.attribute, rule=key,
                                               allow_profile_field=self.kind == "trait")
        if self.exit_value is not False and self.exit_value is not None:
            raise MappingError(f"exit_value must be false or null, not {self.exit_value!r}",
                               rule=key, field="exit_value",
                               hint="false keeps the attribute as false; null removes it")
        if self.sends_event:
            # The computation key travels as an event property ({audience_key, <key>: value}).
            problems = braze_rules.property_name_violations(key)
            if problems:
                raise MappingError(problems[0].message, rule=key, field="key", hint=problems[0].fix)
            if self.kind == "audience":
                braze_rules.require_event_name(self.enter_event, rule=key, field="enter_event")
                braze_rules.require_event_name(self.exit_event, rule=key, field="exit_event")
                if self.enter_event == self.exit_event:
                    raise MappingError(f"enter and exit events are both {self.enter_event!r}",
                                       rule=key, field="exit_event",
                                       hint="give entering and leaving different event names")
            else:
                braze_rules.require_event_name(self.trait_event, rule=key, field="trait_event")
        if self.send_as == "cohort":
            if self.cohort_name is None:
                object.__setattr__(self, "cohort_name", key)
            if not isinstance(self.cohort_name, str) or not self.cohort_name.strip():
                raise MappingError("a cohort needs a name", rule=key, field="cohort_name",
                                   hint="set cohort_name to the name analysts pick in Braze")
            if self.cohort_id is None:
                object.__setattr__(self, "cohort_id", key)
            if not isinstance(self.cohort_id, str) or not self.cohort_id.strip():
                raise MappingError("a cohort needs an id", rule=key, field="cohort_id",
                                   hint="use the Segment computation id (aud_…)")

    @property
    def sends_attribute(self) -> bool:
        return self.send_as in ("attribute", "both")

    @property
    def sends_event(self) -> bool:
        return self.send_as in ("event", "both")

    @property
    def event_names(self) -> tuple[str, ...]:
        """The custom event names this rule sends (empty unless sent as event)."""
        if not self.sends_event:
            return ()
        return (self.enter_event, self.exit_event) if self.kind == "audience" else (self.trait_event,)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Mapping:
    """One `Rule` per Engage computation key; immutable — ``set`` returns a new Mapping.

    It also records which Braze segment mirrors each computation, for `toolkit.check_segments`:
    a name convention (``segment_names``, default ``"{key}"``) and, where an analyst named a
    segment otherwise, its id (``segment_ids``; `pair_segment`)."""

    def __init__(self, rules: Iterable[Rule], *, segment_names: str = DEFAULT_SEGMENT_NAMES,
                 segment_ids: "dict[str, str] | None" = None) -> None:
        self._rules: dict[str, Rule] = {}
        owners: dict[str, str] = {}
        for rule in rules:
            if not isinstance(rule, Rule):
                raise MappingError(f"{rule!r} is not a Rule", hint="build rules with toolkit.Rule")
            if rule.key in self._rules:
                raise MappingError(f"two rules for {rule.key!r}", rule=rule.key, field="key",
                                   hint="keep one rule per computation key")
            if rule.sends_attribute:
                other = owners.get(rule.attribute)  # type: ignore[arg-type]
                if other is not None:
                    raise MappingError(
                        f"attribute {rule.attribute!r} is already written by rule {other!r}",
                        rule=rule.key, field="attribute",
                        hint="give each computation its own Braze attribute")
                owners[rule.attribute] = rule.key  # type: ignore[index]
            self._rules[rule.key] = rule
        self._segment_names = _checked_segment_names(segment_names)
        self._segment_ids: dict[str, str] = {}
        for key, segment_id in (segment_ids or {}).items():
            if key not in self._rules:
                raise MappingError(f"segment id for unknown computation {key!r}", rule=key,
                                   field="segments.ids",
                                   hint="pair segments only with keys the mapping has: "
                                        + (", ".join(self._rules) or "none"))
            if not isinstance(segment_id, str) or not segment_id.strip():
                raise MappingError(f"the segment id of {key!r} must be text, not "
                                   f"{_short(segment_id)}", rule=key, field="segments.ids",
                                   hint="copy the Segment API identifier from Braze (Settings > "
                                        "APIs and Identifiers, or /segments/list)")
            self._segment_ids[key] = segment_id.strip()

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_export(cls, export: EngageExport) -> "Mapping":
        """Defaults: every computation → custom attribute; cohorts named after the computation."""
        rules = []
        for comp in export.computations.to_dict("records"):
            cid = comp.get("computation_id")
            try:
                rules.append(Rule(key=comp["key"], kind=comp["kind"],
                                  cohort_id=None if cid is None or pd.isna(cid) else str(cid)))
            except MappingError:
                # A key Braze cannot take as an attribute name ($…, over 255 characters,
                # control characters) is already an `invalid_key` finding of the export; it
                # gets no default rule, so the other computations can still be mapped.
                continue
        return cls(rules)

    def set(self, key: str, **changes: Any) -> "Mapping":
        """A copy with rule `key` changed, e.g. ``set("vip", send_as="event", enter_event="VIP In")``."""
        rule = self[key]
        allowed = {f.name for f in fields(Rule)} - {"key", "kind"}
        for name in changes:
            if name not in allowed:
                raise MappingError(f"unknown rule field {name!r}", rule=key, field=name,
                                   hint="change one of: " + ", ".join(sorted(allowed)))
        updated = dataclasses.replace(rule, **changes)
        return Mapping((updated if r.key == key else r for r in self._rules.values()),
                       segment_names=self._segment_names, segment_ids=self._segment_ids)

    # -- Braze segments mirroring the computations --------------------------------------------
    @property
    def segment_names(self) -> str:
        """The name convention of the Braze segments mirroring the computations."""
        return self._segment_names

    @property
    def segment_ids(self) -> dict[str, str]:
        """Computation key → Braze segment id, where the mapping pairs them explicitly."""
        return dict(self._segment_ids)

    def segment_name(self, key: str) -> str:
        """The name the Braze segment mirroring `key` has under the mapping's convention."""
        rule = self[key]
        return self._segment_names.format(key=rule.key, attribute=rule.attribute, kind=rule.kind)

    def name_segments(self, pattern: str) -> "Mapping":
        """A copy whose segments are named by `pattern` (placeholders {key}, {attribute},
        {kind}), e.g. ``name_segments("Engage · {key}")``."""
        return Mapping(self._rules.values(), segment_names=pattern, segment_ids=self._segment_ids)

    def pair_segment(self, key: str, segment_id: str | None) -> "Mapping":
        """A copy pairing computation `key` with the Braze segment `segment_id` (None: pair it
        by name again)."""
        self[key]
        ids = {k: v for k, v in self._segment_ids.items() if k != key}
        if segment_id is not None:
            ids[key] = segment_id
        return Mapping(self._rules.values(), segment_names=self._segment_names, segment_ids=ids)

    # -- access ------------------------------------------------------------------------------
    @property
    def rules(self) -> list[Rule]:
        return list(self._rules.values())

    def __getitem__(self, key: str) -> Rule:
        try:
            return self._rules[key]
        except KeyError:
            raise MappingError(f"no rule for {key!r}", rule=key,
                               hint="known keys: " + (", ".join(self._rules) or "none")) from None

    def __contains__(self, key: object) -> bool:
        return key in self._rules

    def __iter__(self) -> Iterator[Rule]:
        return iter(self._rules.values())

    def __len__(self) -> int:
        return len(self._rules)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Mapping) and self.rules == other.rules
                and self._segment_names == other._segment_names
                and self._segment_ids == other._segment_ids)

    def __hash__(self) -> int:
        return hash((tuple(self.rules), self._segment_names,
                     tuple(sorted(self._segment_ids.items()))))

    def shared_events(self) -> dict[str, list[str]]:
        """Event names sent by more than one rule → the keys that share them."""
        users: dict[str, list[str]] = {}
        for rule in self._rules.values():
            for name in dict.fromkeys(rule.event_names):
                users.setdefault(name, []).append(rule.key)
        return {name: keys for name, keys in users.items() if len(keys) > 1}

    # -- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": _YAML_VERSION,
                               "rules": [r.to_dict() for r in self._rules.values()]}
        # written only when set, so mappings saved before segments were paired stay identical
        if self._segment_names != DEFAULT_SEGMENT_NAMES or self._segment_ids:
            out["segments"] = {"names": self._segment_names, "ids": dict(self._segment_ids)}
        return out

    def save(self, path: str | Path) -> Path:
        """Write the mapping as YAML (every field spelled out, so the file is the whole truth)."""
        path = Path(path)
        text = ("# Engage → Braze mapping; load with toolkit.Mapping.load(path)\n"
                + yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True))
        path.write_text(text, encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Mapping":
        """Read a mapping saved by `save`; unknown or mistyped fields raise MappingError naming them."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            if _nesting_depth(text) > _MAX_DEPTH:
                raise _too_deep(path)
            doc = yaml.safe_load(text)
        except FileNotFoundError:
            raise MappingError("mapping file not found", file=str(path),
                               hint="save one with mapping.save(path) first") from None
        except IsADirectoryError:
            raise MappingError("expected a mapping file, found a directory", file=str(path),
                               hint="pass the YAML file itself") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = "it is not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else \
                exc.strerror or type(exc).__name__
            raise MappingError(f"cannot read the mapping file: {reason}", file=str(path),
                               hint="save the mapping with mapping.save(path) (UTF-8 YAML)") \
                from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise MappingError(f"not valid YAML: {getattr(exc, 'problem', exc)}", file=str(path),
                               line=mark.line + 1 if mark else None,
                               hint="fix the YAML syntax") from None
        except RecursionError:
            # YAML (and JSON, which YAML reads) parses nested lists and mappings recursively
            raise _too_deep(path) from None
        try:
            return cls.from_dict(doc, source=str(path))
        except RecursionError:
            raise _too_deep(path) from None

    @classmethod
    def from_dict(cls, doc: Any, *, source: str | None = None) -> "Mapping":
        if not isinstance(doc, dict):
            raise MappingError(f"a mapping document must be a mapping with 'rules', not "
                               f"{type(doc).__name__}", file=source,
                               hint="start the file with 'version: 1' and 'rules:'")
        unknown = sorted(set(doc) - {"version", "rules", "segments"})
        if unknown:
            raise MappingError(f"unknown field {unknown[0]!r}", file=source, field=unknown[0],
                               hint="a mapping file has only 'version', 'rules' and "
                                    "'segments'")
        if doc.get("version", _YAML_VERSION) != _YAML_VERSION:
            raise MappingError(f"unsupported mapping version {doc.get('version')!r}", file=source,
                               field="version", hint=f"this toolkit reads version {_YAML_VERSION}")
        items = doc.get("rules")
        if not isinstance(items, list):
            raise MappingError("'rules' must be a list of rules", file=source, field="rules",
                               hint="write each rule as '- key: …' under 'rules:'")
        names = {f.name for f in fields(Rule)}
        rules = []
        for i, item in enumerate(items, start=1):
            if not isinstance(item, dict):
                raise MappingError(f"rule {i} must be a mapping of fields", file=source,
                                   field=f"rules[{i}]", hint="write 'key: …', 'kind: …', …")
            bad = sorted(set(item) - names)
            if bad:
                raise MappingError(f"unknown field {bad[0]!r} in rule {i}", file=source,
                                   field=bad[0], rule=item.get("key"),
                                   hint="allowed fields: " + ", ".join(sorted(names)))
            for name in ("key", "kind"):
                if name not in item:
                    raise MappingError(f"rule {i} has no {name!r}", file=source, field=name,
                                       hint=f"add '{name}: …' to the rule")
            for name, value in item.items():
                if name == "exit_value" or value is None:
                    continue
                if not isinstance(value, str):
                    raise MappingError(f"{name} must be text, not {_short(value)}", file=source,
                                       field=name, rule=item.get("key"), hint="quote the value")
            try:
                rules.append(Rule(**item))
            except MappingError as exc:
                exc.context.setdefault("file", source)
                raise MappingError(exc.message, hint=exc.hint, **exc.context) from None
        segments = doc.get("segments") or {}
        if not isinstance(segments, dict) or set(segments) - {"names", "ids"}:
            raise MappingError("'segments' must be a mapping with 'names' and 'ids'",
                               file=source, field="segments",
                               hint="write 'segments:' with 'names: \"{key}\"' and 'ids:' "
                                    "(computation key: Braze segment id)")
        ids = segments.get("ids") or {}
        if not isinstance(ids, dict):
            raise MappingError("'segments.ids' must map computation keys to Braze segment ids",
                               file=source, field="segments.ids",
                               hint="write one 'key: segment-id' line per paired segment")
        try:
            return cls(rules, segment_names=segments.get("names", DEFAULT_SEGMENT_NAMES),
                       segment_ids={str(k): v for k, v in ids.items()})
        except MappingError as exc:
            exc.context.setdefault("file", source)
            raise MappingError(exc.message, hint=exc.hint, **exc.context) from None

    # -- use with an export ------------------------------------------------------------------
    def validate(self, export: EngageExport) -> "Mapping":
        """Check every rule against the export: known key, same kind, a type its target accepts."""
        comps = {c["key"]: c for c in export.computations.to_dict("records")}
        for rule in self._rules.values():
            comp = comps.get(rule.key)
            if comp is None:
                raise MappingError(f"unknown key {rule.key!r}: the export has no such computation",
                                   rule=rule.key, field="key",
                                   hint="export keys: " + (", ".join(comps) or "none"))
            if comp["kind"] != rule.kind:
                raise MappingError(f"{rule.key!r} is a {comp['kind']} in the export, not a "
                                   f"{rule.kind}", rule=rule.key, field="kind",
                                   hint=f"set kind to {comp['kind']!r}")
            if rule.key not in export.columns:
                raise MappingError(f"the export has no profile column for {rule.key!r}",
                                   rule=rule.key, field="key",
                                   hint="reload the export; every computation needs a column")
            target = rule.attribute
            if rule.sends_attribute and target in braze_rules.PROFILE_FIELDS:
                allowed = _FIELD_TYPES.get(target, {"string"})  # type: ignore[arg-type]
                if comp["value_type"] not in allowed:
                    raise MappingError(
                        f"Braze profile field {target!r} takes {' or '.join(sorted(allowed))} "
                        f"values, but {rule.key!r} is {comp['value_type']}", rule=rule.key,
                        field="attribute", hint="send it as a custom attribute with another name")
        return self

    def value_type(self, export: EngageExport, key: str) -> str:
        return str(export.computation(key)["value_type"])

    def converted(self, export: EngageExport, rule: Rule) -> braze_rules.Conversion:
        """The rule's column converted to Braze values (typed), with invalid/conflict masks."""
        return self.convert(rule, export.profiles[rule.key], self.value_type(export, rule.key))

    @staticmethod
    def convert(rule: Rule, column: pd.Series, value_type: str) -> braze_rules.Conversion:
        """`converted` for one column (or a chunk of it) of a computation of ``value_type``."""
        if rule.kind == "audience":
            b = column.astype("boolean")
            if rule.exit_value is None:
                b = b.where(b != False)  # noqa: E712 - exits remove the attribute
            no = pd.Series(False, index=column.index)
            return braze_rules.Conversion(b, "boolean", no, no.copy())
        field = rule.attribute if rule.attribute in braze_rules.PROFILE_FIELDS else None
        return braze_rules.convert(column, value_type, field=field)

    def attribute_values(self, export: EngageExport) -> pd.DataFrame:
        """Per profile, the value of every Braze attribute exactly as it goes into JSON.

        Index = ``export.profiles.index``; one column per attribute sent as attribute. Values:
        bool / int / float / str, times as ISO-8601 strings (``dob`` as YYYY-MM-DD); an audience
        exit is the rule's ``exit_value`` (``False``, or ``None`` meaning JSON null). ``pd.NA``
        means nothing is sent: no value in the export, or a value Braze would refuse (see
        `value_findings`).
        """
        self.validate(export)
        data: dict[str, np.ndarray] = {}
        for rule in self._rules.values():
            if not rule.sends_attribute:
                continue
            column = export.profiles[rule.key]
            if rule.kind == "audience":
                b = column.astype("boolean")
                known = b.notna().to_numpy(dtype=bool)
                member = b.to_numpy(dtype=bool, na_value=False)
                out = np.full(len(b), pd.NA, dtype=object)
                out[known & member] = True
                out[known & ~member] = rule.exit_value
                data[rule.attribute] = out  # type: ignore[index]
                continue
            conv = self.converted(export, rule)
            field = rule.attribute if rule.attribute in braze_rules.PROFILE_FIELDS else None
            data[rule.attribute] = braze_rules.to_json_values(conv, field=field)  # type: ignore[index]
        # Explicit object dtype: pandas would otherwise infer `str`/bool columns and turn
        # pd.NA/None into NaN, losing the "send null" vs "send nothing" distinction.
        return pd.DataFrame({name: pd.Series(values, index=export.profiles.index, dtype=object)
                             for name, values in data.items()}, index=export.profiles.index)

    def value_findings(self, export: EngageExport) -> Findings:
        """Values `attribute_values` leaves out because Braze would refuse them, one finding each."""
        found = Findings()
        ids = export.profiles.get("segment_id")
        for rule in self._rules.values():
            if not rule.sends_attribute or rule.kind != "trait":
                continue
            conv = self.converted(export, rule)
            for code, mask, what, fix in (
                ("invalid_value", conv.invalid, f"a value Braze would refuse for {rule.attribute!r}",
                 "fix the value in Engage (strings ≤255 characters; dob a date; country ISO-3166 "
                 "alpha-2; gender M/F/O/N/P)"),
                ("type_conflict", conv.conflict,
                 f"a value of another type than {rule.attribute!r} is locked to ({conv.json_type})",
                 "make the trait produce one data type"),
            ):
                for pos in np.flatnonzero(mask.to_numpy(dtype=bool)):
                    found.add("warning", code, what, column=rule.key,
                              segment_id=None if ids is None else str(ids.iloc[pos]), fix=fix)
        return found

    def preview(self, export: EngageExport, *, email_opt_in: bool = False,
                alias_label: str | None = None, as_of: Any = None) -> "Preview":
        """How each audience and trait lands in Braze, with the filters to build and their counts."""
        from toolkit.preview import Preview

        return Preview.build(self, export, email_opt_in=email_opt_in, alias_label=alias_label,
                             as_of=as_of)

    def filters_for(self, rule: Rule, value_type: str | None = None) -> list["Filter"]:
        """The Braze filter(s) an analyst builds to select rule's members (no export needed)."""
        from toolkit.preview import recommended_filters

        return [f for _, _, f in recommended_filters(rule, value_type, self.shared_events())]

    # -- display -----------------------------------------------------------------------------
    def __repr__(self) -> str:
        lines = [f"Mapping({len(self)} rules)"]
        for r in self._rules.values():
            target = {"attribute": f"attribute {r.attribute}",
                      "both": f"attribute {r.attribute} + events {'/'.join(r.event_names)}",
                      "event": "events " + "/".join(r.event_names),
                      "cohort": f"cohort {r.cohort_name}"}[r.send_as]
            lines.append(f"  {r.key} ({r.kind}) → {target}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = []
        for r in self._rules.values():
            target = {"attribute": f"custom attribute <code>{escape(str(r.attribute))}</code>",
                      "both": f"attribute <code>{escape(str(r.attribute))}</code> + events "
                              + ", ".join(f"<code>{escape(e)}</code>" for e in r.event_names),
                      "event": ", ".join(f"<code>{escape(e)}</code>" for e in r.event_names),
                      "cohort": f"cohort <code>{escape(str(r.cohort_name))}</code>"}[r.send_as]
            filters = "<br>".join(escape(str(f)) for f in self.filters_for(r))
            exit_ = "" if r.kind != "audience" or not r.sends_attribute else \
                ("false" if r.exit_value is False else "null")
            rows.append(f"<tr><td><code>{escape(r.key)}</code></td><td>{r.kind}</td>"
                        f"<td>{r.send_as}</td><td>{target}</td><td>{exit_}</td>"
                        f"<td>{filters}</td></tr>")
        shared = "".join(f"<p style='color:#b9770e'>⚠ {escape(w)}</p>"
                         for w in _shared_warnings(self.shared_events()))
        return ("<div class='braze-mapping'><table><thead><tr><th>key</th><th>kind</th>"
                "<th>sent as</th><th>Braze side</th><th>exit</th><th>Braze filter to build</th>"
                f"</tr></thead><tbody>{''.join(rows)}</tbody></table>{shared}</div>")


# A mapping is three levels deep (document, rules list, rule fields). YAML's parser recurses
# once per level and slows down quadratically with flow nesting, so anything far deeper is
# refused before parsing.
_MAX_DEPTH = 100


def _checked_segment_names(pattern: Any) -> str:
    import string

    fix = "use text with {key} (or {attribute}, {kind}), e.g. 'Engage · {key}'"
    if not isinstance(pattern, str) or not pattern.strip():
        raise MappingError(f"segment names must be a text pattern, not {_short(pattern)}",
                           field="segments.names", hint=fix)
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
    except ValueError as exc:
        raise MappingError(f"segment name pattern {pattern!r} is malformed ({exc})",
                           field="segments.names", hint=fix) from None
    bad = [f for f in names if f not in _SEGMENT_FIELDS]
    if bad or not names:
        raise MappingError(f"segment name pattern {pattern!r} "
                           + (f"uses {{{bad[0]}}}" if bad else "names no computation"),
                           field="segments.names", hint=fix)
    return pattern


def _nesting_depth(text: str) -> int:
    """An upper bound on how deeply `text` nests: open JSON/YAML flow brackets ([ {), and
    block indentation (one level per two columns) — brackets inside quoted text count too,
    which only makes the bound looser. Vectorised over the characters."""
    data = np.frombuffer(text.encode("utf-8", "replace"), dtype=np.uint8)
    steps = ((data == 0x5B) | (data == 0x7B)).astype(np.int64) - (
        (data == 0x5D) | (data == 0x7D))
    flow = int(np.cumsum(steps).max()) if len(steps) else 0
    indent = max((len(m.group(1)) for m in re.finditer(r"^([ -]+)", text, re.M)), default=0)
    return max(flow, indent // 2)


def _too_deep(path: Path) -> MappingError:
    return MappingError(
        "the mapping file is nested too deeply to read (lists or mappings inside each other, "
        "thousands of levels deep); a mapping is 'version' plus a flat list of 'rules'",
        file=str(path),
        hint="write the file with mapping.save(path), or by hand as 'version: 1' and 'rules:' "
             "holding one '- key: …' entry of plain fields per rule")


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60


def _short(value: Any) -> str:
    """A short repr of a value from a mapping file, safe on deeply nested or huge values."""
    return _REPR.repr(value)


def _shared_warnings(shared: dict[str, list[str]]) -> list[str]:
    return [f"event {name!r} is sent by {len(keys)} computations ({', '.join(keys)}): a bare "
            f"event-count filter on it counts all of them. Rename the event per computation "
            f"(mapping.set(key, enter_event=…)) or filter on the event property "
            f"audience_key/trait_key (property filters look back at most 30 days)."
            for name, keys in shared.items()]

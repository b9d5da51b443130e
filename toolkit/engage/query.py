"""Segment's audience query language: a parser giving a typed expression tree, with located errors.

The language is documented in segment-docs ``src/api/public-api/query-language.md`` (see
/work/shared/reference/segment-engage.md §2.3): chains that start with an extractor (``event``,
``trait``, ``property``, ``context``, ``literal``), go through filters (``where``, ``sources``,
``within``, ``between``) and reducers (``count``, ``sum``, ``avg``, ``max``, ``min``, ``mode``,
``first``, ``last``, ``unique``) and end in a comparator (``equals`` … ``after_next``, or the
symbols ``=``/``==``, ``!=``, ``>``, ``>=``, ``<``, ``<=``); junctions ``AND`` (binding tighter),
``OR``, ``NOT`` and the account-level ``ANY`` / ``ALL``; at most 50 primary expressions.

Why a hand-written recursive-descent parser and not lark: the grammar is a dozen rules, but
what is allowed after a ``.`` depends on the *return type* of the chain so far (the reference's
"operations allowed in call-chain" tables), and an analyst needs errors that say "``.within``
cannot follow ``trait('plan')`` (a scalar); expected a comparator". A parser that knows the
types while it reads says exactly that at the right character; a generated LALR parser reports
grammar tokens ("Expected one of: RPAR, DOT") and the types would be a second pass over its
tree. It also keeps the toolkit free of another dependency.

Deviations from the reference, all tolerant: arguments may be wrapped in ``{…}`` as the
reference's own examples write them (``where({property('price_usd') > 100})``,
``sources({exclude: 'a', 'b'})``); ``true``/``false`` are literals (to compare an audience key,
``trait('vip') = true``); both ``=`` and ``==`` mean ``equals``; junction keywords are accepted
in any case.
"""
from __future__ import annotations

import dataclasses

import difflib
import re
from dataclasses import dataclass, field
from html import escape
from typing import Any, Iterator

from toolkit.errors import DefinitionError

__all__ = [
    "parse", "Definition", "Node", "Literal", "Trait", "Property", "Context", "Stream", "Where",
    "Sources", "Within", "Between", "Duration", "Reduce", "Compare", "And", "Or", "Not",
    "Quantified", "EXTRACTORS", "FILTERS", "REDUCERS", "COMPARATORS", "JUNCTIONS", "SYMBOLS",
    "MAX_PRIMARY_EXPRESSIONS",
]

MAX_PRIMARY_EXPRESSIONS = 50  # reference: "Each definition allows a maximum of 50 primary expressions"

EXTRACTORS = ("event", "trait", "property", "context", "literal")
FILTERS = ("where", "sources", "within", "between")
REDUCERS = ("count", "sum", "avg", "max", "min", "mode", "first", "last", "unique")
COMPARATORS = ("equals", "differs", "absent", "exists", "greater_than", "at_least", "less_than",
               "at_most", "contains", "omits", "starts_with", "ends_with", "one_of",
               "before_date", "after_date", "within_last", "within_next", "before_last",
               "after_next")
JUNCTIONS = ("AND", "OR", "NOT", "ANY", "ALL")
# reference "Syntactic sugar": the symbol for each boolean comparator (``==`` as in its examples)
SYMBOLS = {"=": "equals", "==": "equals", "!=": "differs", ">": "greater_than",
           ">=": "at_least", "<": "less_than", "<=": "at_most"}
UNITS = {"hour": "hours", "hours": "hours", "day": "days", "days": "days"}
MAX_AS = {"max": ("number", "string"), "min": ("number", "string"),
          "mode": ("string", "number", "array")}

# What may follow a chain of each return type (the reference's "Return Type" tables).
_AFTER = {
    "vector": FILTERS + REDUCERS,      # VectorExtractor, StreamFilter, WindowedFilter
    "scalar": COMPARATORS,             # ScalarExtractor, Scalar
    "list": ("count",),                # ListScalar (unique)
    "comparator": (),                  # "once an expression is terminated with a Comparator, it is completed"
}
_TYPE_NAMES = {"vector": "a stream of events", "scalar": "a scalar value",
               "list": "a list of unique values", "comparator": "a complete comparison",
               "boolean": "a true/false condition"}


# ------------------------------------------------------------------------------------------
# the typed tree

@dataclass(frozen=True)
class Node:
    """A node of a parsed definition; ``span`` is its (start, end) character range in the text."""

    span: tuple[int, int] = field(compare=False, repr=False, kw_only=True)

    @property
    def type(self) -> str:
        raise NotImplementedError

    def children(self) -> tuple["Node", ...]:
        return ()

    def walk(self) -> Iterator["Node"]:
        yield self
        for child in self.children():
            yield from child.walk()


@dataclass(frozen=True)
class Literal(Node):
    """``literal(x)``, or a bare string/number/boolean where a scalar is expected."""

    value: Any
    explicit: bool = field(default=False, compare=False)  # written as literal(…)

    @property
    def type(self) -> str:
        return "scalar"


@dataclass(frozen=True)
class Trait(Node):
    """``trait('name')``: a profile trait (an audience key reads as its boolean)."""

    name: str

    @property
    def type(self) -> str:
        return "scalar"


@dataclass(frozen=True)
class Property(Node):
    """``property('name')`` (or ``property(parent: 'name')``): a property of the event in hand."""

    name: str
    parent: bool = False

    @property
    def type(self) -> str:
        return "scalar"


@dataclass(frozen=True)
class Context(Node):
    """``context('page.url')``: a dotted path into the event's context."""

    path: str

    @property
    def type(self) -> str:
        return "scalar"


@dataclass(frozen=True)
class Duration(Node):
    """``7 days`` / ``12 hours``."""

    amount: int
    unit: str  # "days" | "hours"

    @property
    def type(self) -> str:
        return "duration"

    @property
    def hours(self) -> int:
        return self.amount * (24 if self.unit == "days" else 1)

    def __str__(self) -> str:
        return f"{self.amount} {self.unit}"


@dataclass(frozen=True)
class Where(Node):
    """``.where(condition)``: keep the events for which ``condition`` holds."""

    condition: Node

    def children(self) -> tuple[Node, ...]:
        return (self.condition,)


@dataclass(frozen=True)
class Sources(Node):
    """``.sources(exclude: 'id', …)``: drop events sent by these Segment sources."""

    exclude: tuple[str, ...]


@dataclass(frozen=True)
class Within(Node):
    """``.within(7 days)``: events of the last 7 days (``parent:`` — of 7 days after the parent event)."""

    duration: Duration
    parent: bool = False


@dataclass(frozen=True)
class Between(Node):
    """``.between(7 days, 10 days)``: events from 10 days ago to 7 days ago (``parent:`` — after it)."""

    start: Duration
    end: Duration
    parent: bool = False


@dataclass(frozen=True)
class Stream(Node):
    """``event('Name')`` followed by filters: a stream of the profile's events."""

    event: str
    steps: tuple[Node, ...] = ()

    @property
    def type(self) -> str:
        return "vector"

    def children(self) -> tuple[Node, ...]:
        return self.steps

    def windows(self) -> list[Node]:
        return [s for s in self.steps if isinstance(s, (Within, Between))]

    def wheres(self) -> list[Where]:
        return [s for s in self.steps if isinstance(s, Where)]


@dataclass(frozen=True)
class Reduce(Node):
    """A reducer over a stream: ``count()``, ``sum(property('x'))``, …, ``unique(…).count()``
    (function ``count_unique``)."""

    stream: Stream
    function: str
    prop: Property | None = None
    as_type: str | None = None
    min_frequency: int | None = None

    @property
    def type(self) -> str:
        return "list" if self.function == "unique" else "scalar"

    def children(self) -> tuple[Node, ...]:
        return (self.stream,) + ((self.prop,) if self.prop else ())


@dataclass(frozen=True)
class Compare(Node):
    """A comparator applied to a scalar: ``left.function(args…)`` or ``left <symbol> right``."""

    left: Node
    function: str
    args: tuple[Node, ...] = ()

    @property
    def type(self) -> str:
        return "boolean"

    def children(self) -> tuple[Node, ...]:
        return (self.left,) + self.args


@dataclass(frozen=True)
class And(Node):
    """Conditions joined with AND (binds tighter than OR)."""

    items: tuple[Node, ...]

    @property
    def type(self) -> str:
        return "boolean"

    def children(self) -> tuple[Node, ...]:
        return self.items


@dataclass(frozen=True)
class Or(Node):
    """Conditions joined with OR."""

    items: tuple[Node, ...]

    @property
    def type(self) -> str:
        return "boolean"

    def children(self) -> tuple[Node, ...]:
        return self.items


@dataclass(frozen=True)
class Not(Node):
    """``NOT condition``."""

    item: Node

    @property
    def type(self) -> str:
        return "boolean"

    def children(self) -> tuple[Node, ...]:
        return (self.item,)


@dataclass(frozen=True)
class Quantified(Node):
    """Account level: ``ANY condition`` (some user of the account) / ``ALL condition`` (every user)."""

    quantifier: str  # "ANY" | "ALL"
    item: Node

    @property
    def type(self) -> str:
        return "boolean"

    def children(self) -> tuple[Node, ...]:
        return (self.item,)


@dataclass(frozen=True)
class Definition:
    """A parsed audience (or computed-trait) definition: the text, its tree and its level."""

    text: str
    root: Node
    kind: str = "audience"     # "audience" (boolean) | "trait" (scalar)
    level: str = "USERS"       # "USERS" | "ACCOUNTS" (the Public API's definition.type)

    def source(self, node: Node) -> str:
        """The text a node was parsed from."""
        return self.text[node.span[0]:node.span[1]].strip()

    @property
    def events(self) -> list[str]:
        """Event names the definition reads, in order of appearance."""
        return list(dict.fromkeys(n.event for n in self.root.walk() if isinstance(n, Stream)))

    @property
    def traits(self) -> list[str]:
        return list(dict.fromkeys(n.name for n in self.root.walk() if isinstance(n, Trait)))

    @property
    def functions(self) -> list[str]:
        """Every function of the language the definition uses (symbols as comparator names)."""
        names: list[str] = []
        for n in self.root.walk():
            names += _functions_of(n)
        return list(dict.fromkeys(names))

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Definition({self.text!r})"

    def _repr_html_(self) -> str:
        return f"<code>{escape(self.text)}</code>"


def _functions_of(n: Node) -> list[str]:
    if isinstance(n, Stream):
        return ["event"] + [type(s).__name__.lower() for s in n.steps]
    if isinstance(n, Reduce):
        return ["unique", "count"] if n.function == "count_unique" else [n.function]
    if isinstance(n, (Trait, Property, Context)):
        return [type(n).__name__.lower()]
    if isinstance(n, Literal) and n.explicit:
        return ["literal"]
    if isinstance(n, Compare):
        return [n.function]
    if isinstance(n, (And, Or, Not)):
        return [type(n).__name__.upper()]
    if isinstance(n, Quantified):
        return [n.quantifier]
    return []


# ------------------------------------------------------------------------------------------
# tokens

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<number>-?\d+(?:\.\d+)?(?![A-Za-z_]))
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>>=|<=|!=|==|=|>|<)
  | (?P<punct>[(){}.,:])
""", re.VERBOSE)
_UNCLOSED = re.compile(r"""'(?:[^'\\]|\\.)*$|"(?:[^"\\]|\\.)*$""")


@dataclass(frozen=True)
class _Tok:
    kind: str   # string | number | name | op | punct | end
    text: str
    start: int
    end: int

    @property
    def value(self) -> Any:
        if self.kind == "string":
            return re.sub(r"\\(.)", r"\1", self.text[1:-1])
        if self.kind == "number":
            return float(self.text) if "." in self.text else int(self.text)
        return self.text

    def shown(self) -> str:
        return "the end of the definition" if self.kind == "end" else repr(self.text)


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            if _UNCLOSED.match(text, pos):
                raise _error(text, pos, "this string is never closed",
                             f"add the closing {text[pos]} quote")
            raise _error(text, pos, f"unexpected character {text[pos]!r}",
                         "expected a function call, a quoted string, a number, a comparison "
                         "(= != > >= < <=), AND, OR, NOT or parentheses")
        if m.lastgroup != "ws":
            out.append(_Tok(m.lastgroup, m.group(), m.start(), m.end()))  # type: ignore[arg-type]
        pos = m.end()
    out.append(_Tok("end", "", len(text), len(text)))
    return out


def _error(text: str, pos: int, message: str, hint: str) -> DefinitionError:
    """A DefinitionError that shows the definition with a caret under character ``pos``."""
    line = text.count("\n", 0, pos) + 1
    start = text.rfind("\n", 0, pos) + 1
    stop = text.find("\n", pos)
    stop = len(text) if stop < 0 else stop
    column = pos - start + 1
    snippet = text[start:stop]
    caret = " " * (column - 1) + "^"
    return DefinitionError(f"{message}\n    {snippet}\n    {caret}",
                           hint=hint, column=column, line=line if "\n" in text else None,
                           field="definition")


def _suggest(name: str, options: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


# ------------------------------------------------------------------------------------------
# the parser


def parse(text: str, *, kind: str = "audience", level: str = "USERS") -> Definition:
    """Parse a definition; `DefinitionError` points at the character and says what was expected.

    ``kind`` is "audience" (the definition must be a true/false condition) or "trait" (a
    computed trait: a scalar). ``level`` is the Public API's ``definition.type``: "USERS" or
    "ACCOUNTS" (``ANY`` / ``ALL`` are only meaningful for accounts).
    """
    if not isinstance(text, str):
        raise DefinitionError(f"a definition is text, not {type(text).__name__}",
                              field="definition",
                              hint="pass the query string, e.g. \"event('Order Completed')"
                                   ".count() >= 1\"")
    if kind not in ("audience", "trait"):
        raise DefinitionError(f"kind must be 'audience' or 'trait', not {kind!r}", field="kind",
                              hint="kind='audience' for audiences, 'trait' for computed traits")
    level = str(level or "USERS").upper()
    if level not in ("USERS", "ACCOUNTS"):
        raise DefinitionError(f"definition type must be USERS or ACCOUNTS, not {level!r}",
                              field="type", hint="use the Public API's definition.type")
    if not text.strip():
        raise DefinitionError("the definition is empty", field="definition",
                              hint="write a condition such as event('Order Completed')"
                                   ".count() >= 1")
    parser = _Parser(text)
    root = parser.expression()
    end = parser.peek()
    if end.kind != "end":
        what = "AND, OR or the end of the definition"
        if end.text == ")":
            raise _error(text, end.start, "this ')' closes nothing", "remove it or add the "
                         "matching '(' before")
        raise _error(text, end.start, f"unexpected {end.shown()} after a complete expression",
                     f"expected {what}")
    if kind == "audience" and root.type != "boolean":
        raise _error(text, root.span[0],
                     f"an audience definition must be a true/false condition, but this is "
                     f"{_TYPE_NAMES.get(root.type, root.type)}",
                     "end it with a comparison, e.g. … .count() >= 1 or trait('plan') = 'pro'")
    if kind == "trait" and root.type not in ("scalar", "list"):
        raise _error(text, root.span[0], "a computed-trait definition must give a value, "
                     f"but this is {_TYPE_NAMES.get(root.type, root.type)}",
                     "end it with a reducer, e.g. event('Order Completed').count()")
    primaries = [n for n in root.walk() if isinstance(n, Compare)]
    if len(primaries) > MAX_PRIMARY_EXPRESSIONS:
        extra = primaries[MAX_PRIMARY_EXPRESSIONS]
        raise _error(text, extra.span[0], f"the definition has {len(primaries)} primary "
                     f"expressions; Segment allows at most {MAX_PRIMARY_EXPRESSIONS}",
                     "split it into several audiences and reference them with trait('key')")
    if level == "USERS":
        q = next((n for n in root.walk() if isinstance(n, Quantified)), None)
        if q is not None:
            raise _error(text, q.span[0], f"{q.quantifier} is only for account-level audiences",
                         "set the definition type to ACCOUNTS, or remove "
                         f"{q.quantifier}")
    return Definition(text, root, kind, level)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        # where we are: inside a where(...) / a reducer argument (property, context allowed),
        # and how many event streams enclose us (parent: needs an enclosing stream's where)
        self.in_where = 0
        self.streams: list[int] = []
        self.braces: list[bool] = []

    # -- token helpers --------------------------------------------------------------------------
    def peek(self, ahead: int = 0) -> _Tok:
        return self.toks[min(self.i + ahead, len(self.toks) - 1)]

    def take(self) -> _Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def is_(self, text: str, ahead: int = 0) -> bool:
        tok = self.peek(ahead)
        return tok.kind in ("punct", "op") and tok.text == text

    def keyword(self, ahead: int = 0) -> str | None:
        tok = self.peek(ahead)
        if tok.kind == "name" and tok.text.upper() in JUNCTIONS:
            return tok.text.upper()
        return None

    def expect(self, text: str, what: str) -> _Tok:
        tok = self.peek()
        if tok.kind in ("punct", "op") and tok.text == text:
            return self.take()
        raise self.fail(tok, f"expected {what}, found {tok.shown()}",
                        f"add {text!r} here" if tok.kind == "end" else f"expected {what}")

    def fail(self, tok: _Tok, message: str, hint: str) -> DefinitionError:
        return _error(self.text, tok.start, message, hint)

    def span(self, start: int) -> tuple[int, int]:
        return (start, self.toks[self.i - 1].end)

    # -- junctions ------------------------------------------------------------------------------
    def expression(self) -> Node:
        start = self.peek().start
        items = [self.conjunction()]
        while self.keyword() == "OR":
            self.take()
            items.append(self.conjunction())
        if len(items) == 1:
            return items[0]
        self._booleans(items, "OR")
        return Or(tuple(items), span=self.span(start))

    def conjunction(self) -> Node:
        start = self.peek().start
        items = [self.negation()]
        while self.keyword() == "AND":
            self.take()
            items.append(self.negation())
        if len(items) == 1:
            return items[0]
        self._booleans(items, "AND")
        return And(tuple(items), span=self.span(start))

    def _booleans(self, items: list[Node], junction: str) -> None:
        for item in items:
            if item.type != "boolean":
                raise _error(self.text, item.span[0], f"{junction} joins conditions, but this is "
                             f"{_TYPE_NAMES.get(item.type, item.type)}",
                             "compare it first, e.g. … .count() >= 1")

    def negation(self) -> Node:
        tok = self.peek()
        word = self.keyword()
        if word in ("NOT", "ANY", "ALL"):
            self.take()
            if self.peek().kind == "end":
                raise self.fail(self.peek(), f"{word} needs a condition after it",
                                f"write {word} (condition)")
            item = self.negation()
            if item.type != "boolean":
                raise _error(self.text, item.span[0], f"{word} applies to a condition, but this "
                             f"is {_TYPE_NAMES.get(item.type, item.type)}",
                             "compare it first, e.g. … .count() >= 1")
            span = (tok.start, item.span[1])
            return Not(item, span=span) if word == "NOT" else Quantified(word, item, span=span)
        if word in ("AND", "OR"):
            raise self.fail(tok, f"{word} needs a condition before it",
                            "expected a condition such as event('…').count() >= 1")
        return self.comparison()

    # -- comparisons ----------------------------------------------------------------------------
    def comparison(self) -> Node:
        start = self.peek().start
        left = self.operand()
        tok = self.peek()
        if tok.kind == "op":
            self.take()
            function = SYMBOLS[tok.text]
            self._comparable(left, tok)
            if self.peek().kind == "end":
                raise self.fail(self.peek(), f"{tok.text!r} needs a value on its right",
                                "expected a number, a quoted string, true/false or a "
                                "scalar such as trait('…')")
            right = self.operand()
            if right.type != "scalar":
                raise _error(self.text, right.span[0], f"the right side of {tok.text!r} must be "
                             f"a scalar value, but this is "
                             f"{_TYPE_NAMES.get(right.type, right.type)}",
                             "compare with a number, a quoted string or a scalar such as "
                             "trait('…') or event('…').count()")
            return Compare(left, function, (right,), span=self.span(start))
        return left

    def _comparable(self, left: Node, tok: _Tok) -> None:
        if left.type == "scalar":
            return
        if left.type == "vector":
            hint = "reduce the stream first, e.g. " + self.text[left.span[0]:left.span[1]] + \
                ".count() " + tok.text + " …"
        elif left.type == "list":
            hint = "count the unique values first: … .unique(property('…')).count() " + tok.text
        else:
            hint = "a comparison already ends here; join conditions with AND / OR"
        raise self.fail(tok, f"{tok.text!r} compares a scalar value, but its left side is "
                        f"{_TYPE_NAMES.get(left.type, left.type)}", hint)

    def operand(self) -> Node:
        tok = self.peek()
        if self.is_("("):
            self.take()
            inner = self.expression()
            self.expect(")", "')' to close the '(' at column "
                        f"{tok.start - self.text.rfind(chr(10), 0, tok.start)}")
            node = _respan(inner, (tok.start, self.toks[self.i - 1].end))
            return self.chain_rest(node)
        if self.is_("{"):
            raise self.fail(tok, "'{' is only allowed around a function's arguments",
                            "use parentheses to group conditions")
        if tok.kind in ("string", "number"):
            self.take()
            return Literal(tok.value, span=(tok.start, tok.end))
        if tok.kind == "name":
            if tok.text in ("true", "false"):
                self.take()
                return Literal(tok.text == "true", span=(tok.start, tok.end))
            if self.keyword():
                raise self.fail(tok, f"{tok.text} cannot stand here",
                                "expected a condition such as event('…').count() >= 1")
            return self.chain()
        if tok.kind == "end":
            raise self.fail(tok, "the definition ends too early",
                            "expected a condition such as event('…').count() >= 1")
        raise self.fail(tok, f"unexpected {tok.shown()}",
                        "expected a function call such as event('…'), trait('…'), a quoted "
                        "string, a number or '('")

    # -- chains ---------------------------------------------------------------------------------
    def chain(self) -> Node:
        tok = self.peek()
        name = tok.text
        if name not in EXTRACTORS:
            known = EXTRACTORS + FILTERS + REDUCERS + COMPARATORS
            if name in known:
                raise self.fail(tok, f"{name}() cannot start an expression",
                                "an expression starts with an extractor: "
                                + ", ".join(f"{e}(…)" for e in EXTRACTORS)
                                + f"; {name} comes after one, e.g. event('…').{name}(…)")
            raise self.fail(tok, f"unknown function {name!r}",
                            _suggest(name, known) + "an expression starts with one of: "
                            + ", ".join(EXTRACTORS))
        node = self.extractor()
        return self.chain_rest(node)

    def chain_rest(self, node: Node) -> Node:
        while self.is_("."):
            dot = self.take()
            tok = self.peek()
            if tok.kind != "name":
                raise self.fail(tok, "expected a function name after '.'",
                                "e.g. .count(), .within(7 days), .equals('…')")
            allowed = _AFTER.get(node.type, ())
            if tok.text not in allowed:
                here = self.text[node.span[0]:node.span[1]].strip()
                if tok.text not in EXTRACTORS + FILTERS + REDUCERS + COMPARATORS:
                    raise self.fail(tok, f"unknown function {tok.text!r}",
                                    _suggest(tok.text, allowed or COMPARATORS)
                                    + (f"after {_TYPE_NAMES[node.type]} expected one of: "
                                       + ", ".join(allowed) if allowed else
                                       "nothing can follow a complete comparison"))
                if not allowed:
                    raise self.fail(dot, f"nothing can follow the comparison {here!r}",
                                    "join conditions with AND / OR instead")
                raise self.fail(tok, f".{tok.text}() cannot follow {here} "
                                f"({_TYPE_NAMES[node.type]})",
                                "expected one of: " + ", ".join(allowed))
            node = self.link(node, tok)
        return node

    def extractor(self) -> Node:
        tok = self.take()
        start = tok.start
        name = tok.text
        self.open(name)
        if name == "literal":
            val = self.peek()
            if val.kind in ("string", "number") or (val.kind == "name" and
                                                    val.text in ("true", "false")):
                self.take()
                value = val.value if val.kind != "name" else val.text == "true"
            else:
                raise self.fail(val, "literal() takes a quoted string, a number or true/false",
                                "e.g. literal(100)")
            self.close(name)
            return Literal(value, True, span=self.span(start))
        parent = False
        if name in ("property",) and self.peek().text == "parent" and self.is_(":", 1):
            if len(self.streams) < 2:
                raise self.fail(self.peek(), "property(parent: …) refers to the event of an "
                                "enclosing stream, and there is none here",
                                "use it inside a where(…) of a stream nested in another "
                                "stream's where (a funnel)")
            self.take()
            self.take()
            parent = True
        text = self.string_arg(name)
        self.close(name)
        span = self.span(start)
        if name == "event":
            return Stream(text, (), span=span)
        if name == "trait":
            return Trait(text, span=span)
        if name in ("property", "context") and not self.in_where:
            raise _error(self.text, start, f"{name}() is only valid inside where(…) or a "
                         "reducer", f"e.g. event('Order Completed').where({name}('…') = …)"
                         if name == "property" else "e.g. event('Page Viewed').where("
                         "context('page.url') contains '…')")
        if name == "property":
            return Property(text, parent, span=span)
        return Context(text, span=span)

    def open(self, name: str) -> None:
        self.expect("(", f"'(' after {name}")
        if self.is_("{"):
            self.take()
            self.braces.append(True)
        else:
            self.braces.append(False)

    def close(self, name: str) -> None:
        if self.braces.pop():
            self.expect("}", f"'}}' to close {name}'s arguments")
        tok = self.peek()
        if not self.is_(")"):
            if self.is_(","):
                raise self.fail(tok, f"{name}() takes fewer arguments",
                                f"remove the extra argument, or check {name}'s syntax")
            raise self.fail(tok, f"expected ')' to close {name}(…), found {tok.shown()}",
                            f"close {name}( with ')'")
        self.take()

    def string_arg(self, name: str) -> str:
        tok = self.peek()
        if tok.kind != "string":
            raise self.fail(tok, f"{name}() takes a quoted name, found {tok.shown()}",
                            f"e.g. {name}('{ {'event': 'Order Completed', 'trait': 'plan'}.get(name, 'total')}')")
        self.take()
        if not tok.value.strip():
            raise self.fail(tok, f"{name}() needs a non-empty name", "type the name")
        return tok.value

    def duration(self, name: str) -> Duration:
        tok = self.peek()
        if tok.kind != "number" or not isinstance(tok.value, int) or tok.value < 0:
            raise self.fail(tok, f"{name}() takes a whole number and a unit, found {tok.shown()}",
                            "e.g. 7 days or 12 hours")
        self.take()
        unit = self.peek()
        if unit.kind != "name" or unit.text.lower() not in UNITS:
            raise self.fail(unit, f"expected a time unit after {tok.text}, found {unit.shown()}",
                            "units are hour(s) and day(s)" + (
                                f" (for {unit.text}, convert to days)" if unit.kind == "name"
                                and unit.text.lower().rstrip("s") in ("week", "month", "year",
                                                                      "minute") else ""))
        self.take()
        return Duration(tok.value, UNITS[unit.text.lower()], span=(tok.start, unit.end))

    def parent_prefix(self) -> bool:
        if self.peek().text == "parent" and self.is_(":", 1):
            tok = self.peek()
            if len(self.streams) < 2:
                raise self.fail(tok, "parent: refers to an enclosing event, and there is none "
                                "here", "use it in a stream nested in another stream's where "
                                "(a funnel), e.g. event('A').where(event('B').within(parent: "
                                "5 days).count() >= 1)")
            self.take()
            self.take()
            return True
        return False

    def scalar_value(self, name: str) -> Node:
        node = self.operand()
        if node.type != "scalar":
            raise _error(self.text, node.span[0], f"{name}() compares with a scalar value, but "
                         f"this is {_TYPE_NAMES.get(node.type, node.type)}",
                         "pass a number, a quoted string or a scalar such as trait('…')")
        return node

    def literal_values(self, name: str, *, one: bool = False) -> tuple[Node, ...]:
        values = []
        while True:
            tok = self.peek()
            if tok.kind not in ("string", "number") and not (
                    tok.kind == "name" and tok.text in ("true", "false")):
                raise self.fail(tok, f"{name}() takes quoted strings or numbers, found "
                                f"{tok.shown()}", f"e.g. {name}('shoes'"
                                + ("" if one else ", 'shirts'") + ")")
            self.take()
            value = tok.value if tok.kind != "name" else tok.text == "true"
            values.append(Literal(value, span=(tok.start, tok.end)))
            if one or not self.is_(","):
                break
            self.take()
        return tuple(values)

    def property_arg(self, name: str) -> Property:
        tok = self.peek()
        if tok.kind != "name" or tok.text != "property":
            raise self.fail(tok, f"{name}() takes an event property, found {tok.shown()}",
                            f"e.g. {name}(property('revenue'))")
        self.in_where += 1
        try:
            node = self.extractor()
        finally:
            self.in_where -= 1
        assert isinstance(node, Property)
        return node

    def link(self, node: Node, tok: _Tok) -> Node:
        """Apply ``.name(args)`` to ``node`` (already checked to be allowed)."""
        self.take()
        name = tok.text
        start = node.span[0]
        self.open(name)
        if name in FILTERS:
            assert isinstance(node, Stream)
            if name == "where":
                self.in_where += 1
                self.streams.append(start)
                try:
                    if self.is_(")") or self.is_("}"):
                        raise self.fail(self.peek(), "where() needs a condition",
                                        "e.g. where(property('price') > 100)")
                    cond = self.expression()
                finally:
                    self.in_where -= 1
                    self.streams.pop()
                if cond.type != "boolean":
                    raise _error(self.text, cond.span[0], "where() takes a condition, but this "
                                 f"is {_TYPE_NAMES.get(cond.type, cond.type)}",
                                 "compare it, e.g. where(property('price') > 100)")
                step: Node = Where(cond, span=(tok.start, 0))
            elif name == "sources":
                label = self.peek()
                if label.text != "exclude" or not self.is_(":", 1):
                    raise self.fail(label, "sources() takes exclude: and source ids",
                                    "e.g. sources(exclude: 'QgRHeujRJBM9j18yChyC')")
                self.take()
                self.take()
                ids = self.literal_values(name)
                step = Sources(tuple(str(v.value) for v in ids), span=(tok.start, 0))  # type: ignore[attr-defined]
            elif name == "within":
                self.streams.append(start)
                parent = self.parent_prefix()
                self.streams.pop()
                step = Within(self.duration(name), parent, span=(tok.start, 0))
            else:
                self.streams.append(start)
                parent = self.parent_prefix()
                self.streams.pop()
                first = self.duration(name)
                self.expect(",", "',' between between()'s start and end")
                second = self.duration(name)
                if second.hours < first.hours:
                    raise _error(self.text, first.span[0], f"between({first}, {second}) ends "
                                 "before it starts", "write the nearer time first, e.g. "
                                 "between(7 days, 10 days)")
                step = Between(first, second, parent, span=(tok.start, 0))
            self.close(name)
            step = _respan(step, (tok.start, self.toks[self.i - 1].end))
            return Stream(node.event, node.steps + (step,), span=self.span(start))
        if name in REDUCERS:
            if node.type == "list":
                assert isinstance(node, Reduce)
                self.close(name)
                return Reduce(node.stream, "count_unique", node.prop,
                              span=self.span(start))
            assert isinstance(node, Stream)
            if name == "count":
                self.close(name)
                return Reduce(node, "count", span=self.span(start))
            prop = self.property_arg(name)
            as_type = None
            if self.peek().text == "as" and self.peek().kind == "name":
                as_tok = self.take()
                kind_tok = self.peek()
                allowed = MAX_AS.get(name)
                if not allowed:
                    raise self.fail(as_tok, f"{name}() takes no 'as' type",
                                    "only max, min and mode take 'as number|string'")
                if kind_tok.kind != "name" or kind_tok.text not in allowed:
                    raise self.fail(kind_tok, f"{name}(… as ?) takes one of: "
                                    f"{', '.join(allowed)}, found {kind_tok.shown()}",
                                    f"e.g. {name}(property('spend') as {allowed[0]})")
                self.take()
                as_type = kind_tok.text
            min_frequency = None
            if name == "mode":
                self.expect(",", "',' and the minimum frequency, e.g. mode(property('x'), 2)")
                freq = self.peek()
                if freq.kind != "number" or not isinstance(freq.value, int) or freq.value < 1:
                    raise self.fail(freq, "mode()'s minimum frequency is a whole number ≥ 1",
                                    "e.g. mode(property('spend'), 2)")
                self.take()
                min_frequency = freq.value
            self.close(name)
            return Reduce(node, name, prop, as_type, min_frequency, span=self.span(start))
        # comparators
        args: tuple[Node, ...]
        if name in ("absent", "exists"):
            args = ()
        elif name in ("equals", "differs", "greater_than", "at_least", "less_than", "at_most"):
            args = (self.scalar_value(name),)
        elif name in ("contains", "one_of"):
            args = self.literal_values(name)
        elif name in ("omits", "starts_with", "ends_with"):
            args = self.literal_values(name, one=True)
            if not isinstance(args[0].value, str):  # type: ignore[attr-defined]
                raise _error(self.text, args[0].span[0], f"{name}() takes a quoted string",
                             f"e.g. {name}('shoes')")
        elif name in ("before_date", "after_date"):
            args = self.literal_values(name, one=True)
            value = args[0].value  # type: ignore[attr-defined]
            if not isinstance(value, str) or not _ISO.match(value):
                raise _error(self.text, args[0].span[0], f"{name}() takes an ISO 8601 "
                             f"timestamp, found {value!r}",
                             f"e.g. {name}('2023-12-07T18:50:00Z')")
        else:  # within_last, within_next, before_last, after_next
            args = (self.duration(name),)
        self.close(name)
        return Compare(node, name, args, span=self.span(start))


_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$")


def _respan(node: Node, span: tuple[int, int]) -> Node:
    """The same node with another source range (parentheses widen a node's text)."""
    return dataclasses.replace(node, span=span)

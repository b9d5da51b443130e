"""Profiles Sync read from a database by URL: PostgreSQL (``postgresql://user:pw@host/db``, read
with psycopg) or a DuckDB file (``duckdb:///path/file.duckdb``), in the schema Segment writes to.

Two table layouts are understood (`LAYOUTS`), in this order: the tables the
``segmentio/profiles-sync-dbt`` package materialises (``profile_traits`` with ``merged_to``, and
``external_id_mapping``), read as they are; or, when those are absent, the tables Segment itself
writes (``user_traits``, ``user_identifiers`` and, when present, ``id_graph``), materialised into
the same two shapes by SQL run in the database (latest value per trait, one column per trait,
``merged_to`` from ``id_graph``). Either way the frames go through the same
`toolkit.engage.profiles_sync.materialise` as CSV/parquet dumps, so both give the same export.

Rows leave the database in bounded batches: PostgreSQL streams ``COPY … TO STDOUT`` into
Arrow's incremental CSV reader with the column types taken from the catalogue; DuckDB hands over
Arrow record batches. A URL's password never appears in an error, a log line or
``export.source`` (`redact`).
"""
from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from toolkit import dialects
from toolkit.engage.profiles_sync import arrow_frame, materialise
from toolkit.errors import WarehouseError

__all__ = ["LAYOUTS", "SCHEMES", "copy_in", "copy_out", "explain_connect_error",
           "is_database_url", "read_database", "redact", "write_tables"]

# URL scheme -> dialect
SCHEMES = {"postgresql": "postgresql", "postgres": "postgresql",
           "postgresql+psycopg": "postgresql", "duckdb": "duckdb"}
# Each layout: table -> required columns ("a|b": either). The first layout whose tables are all
# in the schema is read; `id_graph` is optional in the Segment layout.
LAYOUTS = {
    "materialised": {"profile_traits": ("canonical_segment_id|segment_id",),
                     "external_id_mapping": ("canonical_segment_id|segment_id",
                                             "external_id_type", "external_id_value")},
    "segment": {"user_traits": ("canonical_segment_id", "name", "value"),
                "user_identifiers": ("canonical_segment_id", "type", "value")},
}
OPTIONAL = {"id_graph": ("segment_id", "canonical_segment_id")}
_BATCH_ROWS = 65_536            # DuckDB: rows per Arrow batch
_COPY_BLOCK = 1 << 22           # PostgreSQL: bytes of COPY output parsed per Arrow batch
_SHOW_PROGRESS_FROM = 200_000   # rows: below this a load takes well under a second
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_FIX_LAYOUT = ("Profiles Sync needs profile_traits + external_id_mapping (materialised by "
               "segmentio/profiles-sync-dbt) or user_traits + user_identifiers (written by "
               "Segment); pass schema= the Profiles Sync schema (named after the space)")


def is_database_url(value: Any) -> bool:
    """True for a string that looks like ``scheme://…`` (a database URL, not a path)."""
    return isinstance(value, str) and bool(_URL.match(value))


def redact(url: str) -> str:
    """`url` with its password replaced by ``***`` (user, host, port and database kept)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    if not _secrets(url):
        return url
    query = "&".join(f"{k}={'***' if k.lower() in ('password', 'passfile') else v}"
                     for k, v in parse_qsl(parts.query, keep_blank_values=True))
    netloc = parts.netloc
    if password is not None:
        netloc = netloc.rsplit("@", 1)[1]
        netloc = f"{parts.username or ''}:***@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _secrets(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
        found = [parts.password] if parts.password else []
    except ValueError:
        return []
    found += [v for k, v in parse_qsl(parts.query) if k.lower() == "password" and v]
    return [s for p in found for s in {p, unquote(p)} if s]


def _scrub(text: str, url: str) -> str:
    for secret in _secrets(url):
        text = text.replace(secret, "***")
    return text.strip().splitlines()[0] if text.strip() else ""


def explain_connect_error(exc: BaseException, url: str) -> tuple[str, str]:
    """(message, fix) for a failed PostgreSQL connection to ``url``, the password scrubbed."""
    text = str(exc)
    parts = urlsplit(url)
    database = (parts.path or "/").lstrip("/") or "(default)"
    rules = (  # what the server said -> what the user should do
        ("password authentication failed", "the server refused the login",
         "check the user name and password in the URL (or PGPASSWORD / ~/.pgpass)"),
        ("no password supplied", "the server wants a password",
         "put it in the URL (postgresql://user:password@host/db) or in PGPASSWORD"),
        ("permission denied for database", f"the user may not connect to database {database!r}",
         f"ask the database owner to run: GRANT CONNECT ON DATABASE {database} TO <this user>"),
        ("does not exist", f"database {database!r} or the user does not exist",
         "check the database name at the end of the URL and the user name"),
        ("invalid", "the URL is not a valid PostgreSQL connection string",
         "write it as postgresql://user:password@host:5432/database"),
    )
    for needle, message, hint in rules:
        if needle in text:
            return f"{message} ({_scrub(text, url)})", hint
    return (f"cannot reach the PostgreSQL server ({_scrub(text, url)})",
            "check the host and port in the URL, that the server is running and that it "
            "accepts TCP connections")


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# -- dialects ---------------------------------------------------------------------------------

class _Database:
    """One open connection; subclasses say how to connect, list columns and stream rows."""

    default_schema = "public"

    def __init__(self, url: str) -> None:
        self.url, self.shown = url, redact(url)

    def fail(self, message: str, exc: BaseException | None = None, **context) -> WarehouseError:
        detail = f" ({_scrub(str(exc), self.url)})" if exc is not None else ""
        context.setdefault("hint", "check the table in the database")
        return WarehouseError(message + detail, url=self.shown, **context)

    def columns(self, schema: str) -> dict[str, list[tuple[str, str]]]:
        rows = self.rows("SELECT table_name, column_name, data_type FROM "
                         "information_schema.columns WHERE table_schema = " + _lit(schema) +
                         " ORDER BY table_name, ordinal_position")
        out: dict[str, list[tuple[str, str]]] = {}
        self.names = {}   # lower-case table name -> its name in the database, for quoting
        for table, column, dtype in rows:
            out.setdefault(table.lower(), []).append((column, str(dtype).lower()))
            self.names[table.lower()] = table
        return out

    def table(self, schema: str, name: str) -> str:
        """The quoted ``schema.table`` of a table found by `columns`."""
        return f"{_q(schema)}.{_q(self.names.get(name, name))}"

    def schemas(self) -> list[str]:
        return [r[0] for r in self.rows(
            "SELECT DISTINCT table_schema FROM information_schema.tables WHERE table_schema "
            "NOT IN ('information_schema', 'pg_catalog', 'pg_toast') ORDER BY 1")]


class _Postgres(_Database):
    """PostgreSQL through psycopg: rows streamed with COPY into Arrow's CSV reader."""

    engine = "postgresql"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        try:
            import psycopg  # lazy: the PostgreSQL driver only for postgresql:// URLs
        except ImportError:
            raise WarehouseError("reading PostgreSQL needs psycopg", url=self.shown,
                                 hint="pip install 'psycopg[binary]'") from None
        self.psycopg = self.driver = psycopg
        conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
        params = dict(parse_qsl(urlsplit(url).query))
        try:
            self.con = psycopg.connect(conninfo, autocommit=True, **(
                {} if "connect_timeout" in params else {"connect_timeout": 10}))
        except psycopg.Error as exc:
            raise self._connect_error(exc) from None
        self.con.read_only = True

    def _connect_error(self, exc: BaseException) -> WarehouseError:
        message, hint = explain_connect_error(exc, self.url)
        return WarehouseError(message, url=self.shown, hint=hint)

    def rows(self, sql: str) -> list[tuple]:
        try:
            return self.con.execute(sql).fetchall()
        except self.psycopg.Error as exc:
            raise self.fail("the query failed", exc) from None

    def select(self, column: str, dtype: str) -> tuple[str, pa.DataType]:
        """The SELECT expression and Arrow type that carry `column` through CSV unchanged."""
        c = _q(column)
        if dtype == "boolean":
            return c, pa.bool_()
        if dtype in ("smallint", "integer", "bigint"):
            return c, pa.int64()
        if dtype in ("real", "double precision", "numeric"):
            return f"{c}::double precision", pa.float64()
        if dtype == "timestamp with time zone":
            return (f"to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
                    pa.timestamp("us", tz="UTC"))
        if dtype == "timestamp without time zone":
            return f"to_char({c}, 'YYYY-MM-DD\"T\"HH24:MI:SS.US')", pa.timestamp("us")
        if dtype == "date":
            return f"{c}::text", pa.date32()
        return f"{c}::text", pa.string()

    def stream(self, sql: str, types: list[tuple[str, pa.DataType]]) -> Iterator[pa.RecordBatch]:
        yield from copy_out(self.con, sql, types)

    def close(self) -> None:
        self.con.close()


def copy_out(conn, sql: str, types: list[tuple[str, pa.DataType]], *,
             counter: list | None = None) -> Iterator[pa.RecordBatch]:
    """Rows of a PostgreSQL query as Arrow record batches, streamed with ``COPY … TO STDOUT``
    through Arrow's incremental CSV reader (``types``: each column's name and Arrow type;
    ``counter[0]`` grows by the bytes received)."""
    names = [n for n, _ in types]
    options = {
        "read_options": pacsv.ReadOptions(column_names=names, block_size=_COPY_BLOCK,
                                          use_threads=False),
        "convert_options": pacsv.ConvertOptions(
            column_types=dict(types), true_values=["t"], false_values=["f"],
            # PostgreSQL's CSV: NULL is an empty unquoted field, '' is ""
            strings_can_be_null=True, quoted_strings_can_be_null=False),
        "parse_options": pacsv.ParseOptions(newlines_in_values=True)}
    with conn.cursor() as cur, cur.copy(f"COPY ({sql}) TO STDOUT (FORMAT csv)") as copy:
        reader = io.BufferedReader(_CopyStream(copy, counter), 1 << 20)
        if not reader.peek(1):
            return
        yield from pacsv.open_csv(reader, **options)


def copy_in(conn, target: str, batches: Iterable[pa.RecordBatch]) -> int:
    """Append Arrow record batches to the PostgreSQL table ``target`` (quoted, columns in the
    batches' order) with ``COPY … FROM STDIN``; returns the bytes sent. NULL travels as an
    empty unquoted field and '' as a quoted one, as PostgreSQL's CSV format reads them."""
    sent = 0
    with conn.cursor().copy(f"COPY {target} FROM STDIN (FORMAT csv)") as copy:
        for batch in batches:
            if not batch.num_rows:
                continue
            buf = io.BytesIO()
            pacsv.write_csv(batch, buf, pacsv.WriteOptions(include_header=False))
            data = buf.getvalue()
            copy.write(data)
            sent += len(data)
    return sent


class _CopyStream(io.RawIOBase):
    """psycopg's COPY blocks as a readable byte stream (what Arrow's CSV reader consumes)."""

    def __init__(self, copy, counter: list | None = None) -> None:
        self.copy, self.pending, self.counter = copy, b"", counter

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self.pending:
            block = self.copy.read()
            if not block:
                return 0
            self.pending = bytes(block)
            if self.counter is not None:
                self.counter[0] += len(self.pending)
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


class _DuckDB(_Database):
    """A DuckDB database file, opened read-only: rows arrive as Arrow record batches."""

    default_schema = "main"
    engine = "duckdb"

    def __init__(self, url: str) -> None:
        super().__init__(url)


        self.duckdb = self.driver = duckdb
        path = unquote(url.split("://", 1)[1].split("?", 1)[0])
        if not path or not Path(path).is_file():
            raise WarehouseError("no DuckDB database file at this path", url=self.shown,
                                 hint="write duckdb:///absolute/path/file.duckdb (three "
                                      "slashes before an absolute path)")
        try:
            self.con = duckdb.connect(path, read_only=True)
        except duckdb.Error as exc:
            raise WarehouseError(f"cannot open the DuckDB file ({_scrub(str(exc), url)})",
                                 url=self.shown, hint="check that it is a DuckDB database "
                                 "and that no other process writes to it") from None

    def schemas(self) -> list[str]:
        return [s for s in super().schemas() if s not in ("pg_catalog",)]

    def rows(self, sql: str) -> list[tuple]:
        try:
            return self.con.execute(sql).fetchall()
        except self.duckdb.Error as exc:
            raise self.fail("the query failed", exc) from None

    def select(self, column: str, dtype: str) -> tuple[str, pa.DataType | None]:
        c = _q(column)
        if dtype.startswith(("decimal", "numeric")):
            return f"CAST({c} AS DOUBLE)", None
        if dtype.endswith("]") or dtype.startswith(("struct", "map", "union", "json")):
            return f"CAST({c} AS VARCHAR)", None
        return c, None

    def stream(self, sql: str, types) -> Iterator[pa.RecordBatch]:
        yield from self.con.sql(sql).to_arrow_reader(_BATCH_ROWS)

    def close(self) -> None:
        self.con.close()


_DIALECTS: dict[str, Callable[[str], _Database]] = {"postgresql": _Postgres, "duckdb": _DuckDB}


def connect(url: str) -> _Database:
    """An open connection for a database URL (`SCHEMES`), or a `WarehouseError` saying why not."""
    scheme = url.split("://", 1)[0].lower()
    dialect = SCHEMES.get(scheme)
    if dialect is None:
        raise WarehouseError(f"unknown database URL scheme {scheme + '://'!r}", url=redact(url),
                             hint="use postgresql://user:password@host:5432/database or "
                                  "duckdb:///path/to/file.duckdb")
    return _DIALECTS[dialect](url)


# -- reading ----------------------------------------------------------------------------------

def _read(db: _Database, sql: str, types: list[tuple[str, pa.DataType | None]], what: str,
          errors: tuple) -> pa.Table:
    batches, rows, bar = [], 0, None
    try:
        for batch in db.stream(sql, types):
            batches.append(batch)
            rows += batch.num_rows
            if bar is None and rows >= _SHOW_PROGRESS_FROM:
                from tqdm.auto import tqdm  # lazy: tqdm and its notebook detection only for large tables
                bar = tqdm(unit="row", desc=f"load: {what}", leave=False)
            if bar is not None:
                bar.update(batch.num_rows if bar.n else rows)
    except errors as exc:
        raise db.fail(f"reading {what} failed", exc, table=what) from None
    finally:
        if bar is not None:
            bar.close()
    if batches:
        return pa.Table.from_batches(batches)
    return pa.table({n: pa.array([], type=t or pa.string()) for n, t in types})


def _missing(tables: dict, layout: dict) -> list[str]:
    return [t for t in layout if t not in tables]


def _column(tables: dict, schema: str, table: str, wanted: str) -> str:
    """The column's real name (case-insensitive match), or a WarehouseError naming it."""
    have = {c.lower(): c for c, _ in tables[table]}
    for option in wanted.split("|"):
        if option in have:
            return have[option]
    raise WarehouseError(f"table {schema}.{table} has no column {wanted.split('|')[0]}",
                         table=f"{schema}.{table}", column=wanted.replace("|", " or "),
                         hint=f"its columns are {', '.join(c for c, _ in tables[table][:12])}; "
                              "materialise the table again with segmentio/profiles-sync-dbt "
                              "or point schema= at the Profiles Sync schema")


def read_database(url: str, *, schema: str | None = None,
                  audiences: Iterable[str] | None = None) -> EngageExport:  # noqa: F821
    """Read the Profiles Sync tables of `schema` in the database at `url` (see module doc)."""

    db = connect(url)
    errors = (db.driver.Error, pa.ArrowException)   # what a read may raise, to be reworded
    try:
        schema = schema or db.default_schema
        tables = db.columns(schema)
        if not tables:
            found = db.schemas()
            raise WarehouseError(
                f"schema {schema!r} does not exist or holds no tables you may read",
                url=db.shown, hint=f"pass schema= one of: {', '.join(found[:20]) or '(none)'}; "
                "the user needs USAGE on the schema and SELECT on its tables")
        layout = next((name for name, need in LAYOUTS.items() if not _missing(tables, need)),
                      None)
        if layout is None:
            lacking = min((_missing(tables, need) for need in LAYOUTS.values()), key=len)
            raise WarehouseError(
                f"schema {schema!r} has no table {' or '.join(lacking)}", url=db.shown,
                table=f"{schema}.{lacking[0]}",
                hint=f"{_FIX_LAYOUT}. Tables there: {', '.join(sorted(tables)[:20])}")
        for table, needed in {**LAYOUTS[layout], **{t: c for t, c in OPTIONAL.items()
                                                     if t in tables}}.items():
            for col in needed:
                _column(tables, schema, table, col)
        read = _materialised if layout == "materialised" else _segment
        traits, mapping, text, snapshot = read(db, schema, tables, errors)
    finally:
        db.close()
    name = "profile_traits" if layout == "materialised" else "user_traits"
    mname = "external_id_mapping" if layout == "materialised" else "user_identifiers"
    return materialise(
        arrow_frame(traits), arrow_frame(mapping), traits_text=text, audiences=audiences,
        traits_at={"table": f"{schema}.{name}"}, mapping_at={"table": f"{schema}.{mname}"},
        snapshot_at=snapshot, source=f"{db.shown} schema {schema} (profiles_sync)")


def _snapshot(db: _Database, sql: str) -> pd.Timestamp:
    value = db.rows(sql)[0][0]
    if value is None:
        return pd.Timestamp.now(tz="UTC")
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _materialised(db: _Database, schema: str, tables: dict, errors: tuple):
    """profile_traits and external_id_mapping, read as they are (every column, typed)."""
    out = []
    for table in ("profile_traits", "external_id_mapping"):
        cols = tables[table]
        if table == "external_id_mapping":   # only the columns the mapping is read for
            keep = {"canonical_segment_id", "segment_id", "external_id_type",
                    "external_id_value", "timestamp"}
            cols = [(c, t) for c, t in cols if c.lower() in keep]
        exprs = [(db.select(c, t), c) for c, t in cols]
        sql = (f"SELECT {', '.join(f'{e} AS {_q(c)}' for (e, _), c in exprs)} "
               f"FROM {db.table(schema, table)}")
        out.append(_read(db, sql, [(c, t) for (_, t), c in exprs], f"{schema}.{table}", errors))
    ts = {c.lower(): c for c, _ in tables["external_id_mapping"]}.get("timestamp")
    snapshot = _snapshot(db, f"SELECT max({_q(ts)}) FROM "
                         f"{db.table(schema, 'external_id_mapping')}") \
        if ts else pd.Timestamp.now(tz="UTC")
    return out[0], out[1], False, snapshot


def _segment(db: _Database, schema: str, tables: dict, errors: tuple):
    """profile_traits / external_id_mapping built in the database from Segment's own tables,
    by statements generated for its dialect (`toolkit.dialects`)."""
    def col(table, name):
        return {c.lower(): c for c, _ in tables[table]}.get(name)

    def run(sql: str) -> str:
        return dialects.render(sql, db.engine)

    ut = db.names.get("user_traits", "user_traits")
    name = col("user_traits", "name")
    names = [r[0] for r in db.rows(run(dialects.trait_names_sql(schema, table=ut, name=name)))
             if r[0].lower() not in ("canonical_segment_id", "segment_id", "merged_to")]
    graph = None
    if "id_graph" in tables:
        graph = {"table": db.names.get("id_graph", "id_graph"),
                 "segment_id": col("id_graph", "segment_id"),
                 "canonical": col("id_graph", "canonical_segment_id")}
    traits_sql = dialects.latest_traits_sql(
        schema, table=ut, segment_id=col("user_traits", "canonical_segment_id"), name=name,
        value=col("user_traits", "value"), traits=names,
        order=[col("user_traits", c) for c in ("seq", "timestamp") if col("user_traits", c)],
        graph=graph)
    text = [("canonical_segment_id", pa.string()), *((n, pa.string()) for n in names),
            ("merged_to", pa.string())]
    traits = _read(db, run(traits_sql), text, f"{schema}.user_traits", errors)

    its = col("user_identifiers", "timestamp")
    order = [col("user_identifiers", c) for c in ("timestamp", "seq")
             if col("user_identifiers", c)]
    mapping_sql = run(dialects.identifier_mapping_sql(
        schema, table=db.names.get("user_identifiers", "user_identifiers"),
        segment_id=col("user_identifiers", "canonical_segment_id"),
        type_=col("user_identifiers", "type"), value=col("user_identifiers", "value"),
        timestamp=its, order=order, graph=graph))
    ts_expr, ts_type = db.select("timestamp", dict(tables["user_identifiers"])[its]) if its else \
        (_q("timestamp"), pa.string())
    # the driver converts the time for its wire, around the generated statement (which also
    # hands out the order columns, o0, o1…, for the outer query to order by)
    keys = ", ".join(f"q.o{k}" for k in range(len(order)))
    mapping_sql = (f"SELECT q.canonical_segment_id, q.external_id_type, q.external_id_value, "
                   f"{ts_expr.replace(_q('timestamp'), 'q.' + _q('timestamp'))} AS "
                   f"{_q('timestamp')} FROM ({mapping_sql}) q"
                   + (f" ORDER BY {keys}" if keys else ""))
    mapping = _read(db, mapping_sql, [("canonical_segment_id", pa.string()),
                                      ("external_id_type", pa.string()),
                                      ("external_id_value", pa.string()),
                                      ("timestamp", ts_type)], f"{schema}.user_identifiers",
                    errors)
    ts = col("user_traits", "timestamp") or col("user_traits", "received_at")
    snapshot = _snapshot(db, run(dialects.snapshot_time_sql(schema, table=ut, column=ts))) \
        if ts else pd.Timestamp.now(tz="UTC")
    return traits, mapping, True, snapshot


# -- writing (the sample generator, tests) ---------------------------------------------------

_PG_TYPES = ((pa.types.is_boolean, "boolean"), (pa.types.is_integer, "bigint"),
             (pa.types.is_floating, "double precision"), (pa.types.is_date, "date"))


def _pg_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "timestamp with time zone" if t.tz else "timestamp without time zone"
    return next((name for test, name in _PG_TYPES if test(t)), "text")


def write_tables(url: str, schema: str, tables: dict[str, pa.Table]) -> None:
    """Create `schema` if needed and (re)write each Arrow table in it, replacing any table of
    that name (the sample generator writes Profiles Sync tables this way)."""
    db = connect(url) if SCHEMES.get(url.split("://", 1)[0].lower()) != "duckdb" else None
    if db is None:
        return _write_duckdb(url, schema, tables)
    try:
        db.con.read_only = False
        with db.con.transaction():
            db.con.execute(f"CREATE SCHEMA IF NOT EXISTS {_q(schema)}")
            for name, table in tables.items():
                target = f"{_q(schema)}.{_q(name)}"
                cols = ", ".join(f"{_q(f.name)} {_pg_type(f.type)}" for f in table.schema)
                db.con.execute(f"DROP TABLE IF EXISTS {target}")
                db.con.execute(f"CREATE TABLE {target} ({cols})")
                copy_in(db.con, target, table.to_batches(_BATCH_ROWS))
    except db.psycopg.Error as exc:
        raise db.fail(f"writing the tables into schema {schema!r} failed", exc,
                      hint="the user needs CREATE on the database (or on the schema)") from None
    finally:
        db.close()


def _write_duckdb(url: str, schema: str, tables: dict[str, pa.Table]) -> None:

    path = unquote(url.split("://", 1)[1].split("?", 1)[0])
    if not path:
        raise WarehouseError("a DuckDB URL needs a file path", url=redact(url),
                             hint="write duckdb:///absolute/path/file.duckdb")
    with duckdb.connect(path) as con:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {_q(schema)}")
        for name, table in tables.items():
            con.register("_incoming", table)
            con.execute(f"CREATE OR REPLACE TABLE {_q(schema)}.{_q(name)} AS "
                        "SELECT * FROM _incoming")
            con.unregister("_incoming")

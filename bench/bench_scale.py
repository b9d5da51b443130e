"""Benchmark the sync engine at 1M–10M profiles: per stage time, peak RSS, sizes; bare baselines.

    python bench/bench_scale.py [--profiles 1000000] [--stages S,…] [--skip S,…] [--keep]
                                [--sandbox-keep users|counts]

Input: ``data/samples/generate.py --profiles N --change 0.1`` written once into
bench/out/scale-<N>/ (gitignored) and reused: ``all_shoppers.csv`` (every profile; the default
mapping sends 1 audience + 5 traits as attributes) and ``all_shoppers_changed.csv`` (the same
profiles, ~10% with two changed traits).

Stages, in one process, in this order (``--stages``/``--skip`` pick them by name):

  read     baselines: bare ``pyarrow.csv.read_csv`` and DuckDB ``read_csv`` into a table
  diff     baselines (a DuckDB file, memory_limit 1.5GB): long (uid, field, value) tables of
           both files (the audience flag and the 5 traits as text); a full outer join
           field-level diff written to Parquet, first sync (previous empty) and after the change
           (previous = the unchanged file); a per-user checksum anti-join, unchanged and after
           the change
  load     ``toolkit.load(all_shoppers.csv)``
  preview  ``Mapping.from_export(export).preview(export).to_frame()``
  plan     first ``toolkit.plan(…, create_users=True)`` against an empty ledger of a sandbox
           subprocess's workspace, and its ``cost()``
  save     ``plan.save(path)``: the size of everything it writes
  apply    ``plan.approve`` + ``toolkit.apply`` to that sandbox; then the baseline: the same
           payloads (the first ``--push-batches``) POSTed by bench_push's bare loop, in a
           process of its own, to a fresh sandbox. Both sandboxes keep what ``--sandbox-keep`` says: ``users`` (the default:
           every user's state, ~1.5 KB a user, too much for 10M on 24 GiB) or ``counts``
           (`BrazeSandbox(keep="counts")`: every request validated, refused and billed exactly
           as with ``users`` but no attribute values or events kept, ~120 bytes a user), so a
           10M apply is measured for real; the rows and the JSON line say which
  replan   the same export planned again: must be 0 operations
  change   ``toolkit.load(all_shoppers_changed.csv, audience="all_shoppers")``, then its plan

Per stage: seconds (for load and the bare reads, which take seconds and meet a tight ratio, the
best of ``--repeat`` runs), the process's peak RSS during the stage (VmHWM after resetting it
through /proc/self/clear_refs; ru_maxrss since start where that is not possible) and artefact
sizes: the plan's folder, Parquet files, and the ledger's folder both while open (journal files
included) and after ``ledger.close()`` at the end, which the size target uses. A stage that
raises shows its error and the run goes on; stages that need it are skipped. Then the ratios
against the issue's targets (PASS/FAIL) and, last, one JSON line with every figure. The other
figures come from one run on a shared machine: repeat a run before trusting a ratio near its
target.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import traceback
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_push import API_KEY, WORKERS, sandbox  # noqa: E402

STAGES = ["read", "diff", "load", "preview", "plan", "save", "apply", "replan", "change"]
NEEDS = {"preview": "load", "plan": "load", "save": "plan", "apply": "plan", "replan": "apply",
         "change": "apply"}
CHANGE = 0.1
DUCKDB_MEMORY = "1.5GB"
GIB = 1 << 30
MB = 1e6
# The 5 traits of all_shoppers.csv besides identifiers; with the audience flag, 6 fields a user.
TRAITS = ["first_name", "last_name", "last_product_viewed_item", "total_revenue_180_days",
          "last_order_at"]
# The toolkit stages whose peak RSS the 2 GiB target covers (the baselines are not the product).
PRODUCT = ["load", "preview", "plan", "save", "apply", "replan", "load changed", "change",
           "close ledger"]


# -- measuring --------------------------------------------------------------------------------

def _reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss(reset_worked: bool) -> int:
    if reset_worked:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _release_memory() -> None:
    """Hand freed memory back to the OS so one stage's leftovers do not count in the next."""
    gc.collect()
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except ImportError:
        pass
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass
class Row:
    """One measured stage or baseline."""
    name: str
    what: str
    seconds: float | None = None
    peak_rss: int | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    error: str | None = None
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return self.seconds is not None and self.error is None and self.skipped is None


class Bench:
    """Runs the stages, keeps what passes between them and every row measured."""

    def __init__(self, files: dict[str, Path], run_dir: Path, selected: list[str],
                 push_batches: int, repeat: int, sandbox_keep: str = "users") -> None:
        self.files, self.run_dir = files, run_dir
        self.sandbox_keep = sandbox_keep
        self.sandbox_pids: list[int] = []
        self.selected, self.push_batches, self.repeat = selected, push_batches, repeat
        self.rows: list[Row] = []
        self.done: set[str] = set()
        self.state: dict[str, Any] = {}
        self.resources = ExitStack()
        self.ledger_url: str | None = None   # a PostgreSQL ledger (--ledger) instead of SQLite
        self.diff_at = "auto"                 # toolkit.plan's diff_at (--diff-at)

    def measure(self, name: str, what: str, fn: Callable[[Row], Any], repeat: int = 1) -> Row:
        """Time ``fn(row)`` (the best of ``repeat`` runs) and record the peak RSS during it; an
        exception becomes the row's error (traceback on stderr)."""
        row = Row(name, what)
        self.rows.append(row)
        _release_memory()
        reset = _reset_peak()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            try:
                fn(row)
            except Exception as exc:                  # the bench goes on; the row says why
                row.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}" \
                    if str(exc).strip() else type(exc).__name__
                traceback.print_exc(file=sys.stderr)
            times.append(time.perf_counter() - start)
            if row.error:
                break
        row.seconds = min(times)
        if repeat > 1:
            row.figures["runs_seconds"] = times
        row.peak_rss = _peak_rss(reset)
        if row.error is None:
            self.done.add(name)
        print(f"  {name:<14} {row.seconds:8.2f} s  {_mb(row.peak_rss):>8} MB peak"
              + (f"  {row.error}" if row.error else ""), file=sys.stderr, flush=True)
        return row

    def stage(self, name: str, what: str, fn: Callable[[Row], Any], repeat: int = 1) -> Row | None:
        """Measure a selected stage whose prerequisite succeeded; else record why it did not run."""
        if name not in self.selected:
            return None
        need = NEEDS.get(name)
        if need and need not in self.done:
            row = Row(name, what, skipped=f"needs {need}")
            self.rows.append(row)
            return row
        return self.measure(name, what, fn, repeat)

    # -- shared objects -------------------------------------------------------------------
    def start_sandbox(self) -> None:
        """A sandbox subprocess and its BrazeClient, until the end of the run (the ledger
        belongs to its workspace); a failure to start is the plan stage's error."""
        import toolkit

        try:
            url = self.resources.enter_context(sandbox(*self.sandbox_args(),
                                                       pids=self.sandbox_pids))
            self.state["client"] = self.resources.enter_context(toolkit.BrazeClient(
                url, API_KEY, env_file=None, interactive=False, max_workers=WORKERS))
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            self.rows.append(Row("plan", "first toolkit.plan", error=f"sandbox: {exc}"))
            self.selected = [s for s in self.selected if s != "plan"]

    def sandbox_args(self) -> tuple[str, ...]:
        return ("--keep", self.sandbox_keep)

    def mapping(self):
        if "mapping" not in self.state:
            import toolkit

            self.state["mapping"] = toolkit.Mapping.from_export(self.state["export"])
        return self.state["mapping"]

    def ledger_size(self) -> int:
        """Bytes of the ledger: its folder (SQLite), or its schema's tables on the server
        (PostgreSQL; the local cache of its files is not counted)."""
        if not self.ledger_url:
            return _size(self.run_dir / "ledger")
        import psycopg

        from toolkit.sync.journal import _split_url

        url, schema = _split_url(self.ledger_url, None)
        with psycopg.connect(url, autocommit=True) as con:
            return int(con.execute(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c JOIN "
                "pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND "
                "c.relkind = 'r'", (schema,)).fetchone()[0])

    def open_ledger(self):
        import toolkit

        if self.ledger_url:
            return toolkit.Ledger(self.ledger_url, workspace=self.state["client"].workspace,
                                  directory=self.run_dir / "ledger")
        return toolkit.Ledger(path=self.run_dir / "ledger" / "ledger.sqlite",
                              workspace=self.state["client"].workspace)

    def plan(self, export, row: Row):
        import toolkit

        plan = toolkit.plan(export, self.mapping(), self.state["ledger"],
                            workspace=self.state["client"], create_users=True,
                            diff_at=self.diff_at)
        cost = plan.cost()
        site = plan.manifest.get("diff") or {}
        row.figures.update(operations=cost["operations"], users=cost["users"],
                           requests=cost["requests"], data_points=cost["data_points"],
                           diff_where=site.get("where"), diff_moves=site.get("moves"),
                           diff_sent_bytes=site.get("sent_bytes"),
                           diff_received_bytes=site.get("received_bytes"))
        row.note = (f"{cost['operations']:,} operations, {cost['users']:,} users, "
                    f"{cost['requests']:,} requests"
                    + ("; diff in the server" if site.get("where") == "server" else ""))
        return plan

    # -- stages ---------------------------------------------------------------------------
    def run(self) -> None:
        with self.resources:
            if "read" in self.selected:
                self.bare_reads()
            if "diff" in self.selected:
                self.bare_diffs()
            self.toolkit_stages()

    def bare_reads(self) -> None:
        import duckdb
        import pyarrow.csv as pacsv

        path = self.files["all_shoppers"]

        def arrow(row: Row) -> None:
            table = pacsv.read_csv(path)
            row.note = f"{table.num_rows:,} rows"

        def duck(row: Row) -> None:
            with duckdb.connect() as con:
                con.execute(f"CREATE TABLE shoppers AS SELECT * FROM read_csv({_sql(path)})")
                n = con.execute("SELECT count(*) FROM shoppers").fetchone()[0]
            row.note = f"{n:,} rows"
        self.measure("bare pyarrow", "pyarrow.csv.read_csv (baseline)", arrow, self.repeat)
        self.measure("bare duckdb", "DuckDB read_csv → table (baseline)", duck, self.repeat)

    def bare_diffs(self) -> None:
        import duckdb

        work = self.run_dir / "bare"
        work.mkdir(parents=True, exist_ok=True)
        with duckdb.connect(str(work / "bare.duckdb")) as con:
            self._bare_diffs(con, work)

    def _bare_diffs(self, con, work: Path) -> None:
        con.execute(f"SET memory_limit='{DUCKDB_MEMORY}'")
        con.execute(f"SET temp_directory={_sql(work / 'spill')}")
        fields = ", ".join(["'true' AS all_shoppers", *TRAITS])

        def build(row: Row) -> None:
            for name in ("all_shoppers", "changed"):
                con.execute(f"CREATE TABLE wide_{name} AS SELECT key AS uid, {fields} "
                            f"FROM read_csv({_sql(self.files[name])}, all_varchar=true)")
                con.execute(f"CREATE TABLE long_{name} AS SELECT uid, field, value FROM "
                            f"wide_{name} UNPIVOT (value FOR field IN "
                            f"(all_shoppers, {', '.join(TRAITS)}))")
            con.execute("CREATE TABLE long_empty AS SELECT * FROM long_all_shoppers LIMIT 0")
            con.execute("CREATE TABLE hash_all_shoppers AS SELECT uid, "
                        f"hash(all_shoppers, {', '.join(TRAITS)}) AS h FROM wide_all_shoppers")
            n = con.execute("SELECT count(*) FROM long_all_shoppers").fetchone()[0]
            row.figures["long_rows"] = n
            row.note = f"{n:,} (uid, field, value) rows a file; previous checksums"

        def diff(desired: str, previous: str) -> Callable[[Row], None]:
            def run(row: Row) -> None:
                out = work / f"diff-{desired}-{previous}.parquet"
                n = con.execute(f"""
                    COPY (SELECT coalesce(d.uid, p.uid) AS uid, coalesce(d.field, p.field) AS field,
                                 d.value AS value,
                                 CASE WHEN p.uid IS NULL THEN 'set' WHEN d.uid IS NULL THEN 'unset'
                                      ELSE 'change' END AS change
                          FROM long_{desired} d FULL OUTER JOIN long_{previous} p
                            ON d.uid = p.uid AND d.field = p.field
                          WHERE d.value IS DISTINCT FROM p.value)
                    TO {_sql(out)} (FORMAT parquet, COMPRESSION zstd)""").fetchone()[0]
                row.figures["rows"] = n
                row.sizes["parquet"] = _size(out)
                row.note = f"{n:,} changed fields → Parquet"
            return run

        def anti_join(desired: str) -> Callable[[Row], None]:
            def run(row: Row) -> None:
                n = con.execute(f"""
                    SELECT count(*) FROM (SELECT uid, hash(all_shoppers, {', '.join(TRAITS)}) AS h
                                          FROM wide_{desired}) d
                    ANTI JOIN hash_all_shoppers p ON d.uid = p.uid AND d.h = p.h""").fetchone()[0]
                row.figures["rows"] = n
                row.note = f"{n:,} users whose checksum differs"
            return run

        if self.measure("bare build", "long tables + checksums of both files (setup)",
                        build).error:
            return
        self.measure("bare diff", "DuckDB field diff, first sync (previous empty)",
                     diff("all_shoppers", "empty"))
        self.measure("bare diff 10%", "DuckDB field diff after the change",
                     diff("changed", "all_shoppers"))
        self.measure("bare checksum", "DuckDB checksum anti-join, unchanged", anti_join(
            "all_shoppers"))
        self.measure("bare checksum 10%", "DuckDB checksum anti-join after the change",
                     anti_join("changed"))

    def toolkit_stages(self) -> None:
        import toolkit

        for name in ("load", "Mapping", "plan", "Ledger", "apply", "BrazeClient"):
            getattr(toolkit, name)                    # import the modules outside the timings
        st = self.state

        def load(row: Row) -> None:
            st["export"] = toolkit.load(self.files["all_shoppers"])
            if isinstance(st["export"], toolkit.StoredExport):
                row.note = "kept on disk (StoredExport, read in chunks)"

        def preview(row: Row) -> None:
            mapping = toolkit.Mapping.from_export(st["export"])
            st["mapping"] = mapping
            frame = mapping.preview(st["export"]).to_frame()
            row.note = f"{len(mapping.rules)} rules, {len(frame)} preview rows"

        def first_plan(row: Row) -> None:
            st["ledger"] = self.open_ledger()
            st["plan"] = self.plan(st["export"], row)
            row.sizes["ledger"] = self.ledger_size()

        def save(row: Row) -> None:
            folder = self.run_dir / "plan"
            folder.mkdir(parents=True, exist_ok=True)
            st["plan"].save(folder / "plan.json")
            row.sizes["plan"] = _size(folder)
            row.note = ", ".join(sorted(p.name for p in folder.iterdir()))

        def apply(row: Row) -> None:
            start = time.perf_counter()
            st["plan"].approve(by="bench")
            approve_s = time.perf_counter() - start
            start = time.perf_counter()
            report = toolkit.apply(st["plan"], st["client"], st["ledger"], progress=False)
            apply_s = time.perf_counter() - start
            objects = report.counts["objects_acknowledged"]
            row.figures.update(approve_seconds=approve_s, apply_seconds=apply_s, objects=objects,
                               objects_per_second=objects / apply_s, status=report.status,
                               sandbox_keep=self.sandbox_keep,
                               sandbox_peak_rss=_process_peak(self.sandbox_pids[-1]),
                               data_points=report.data_points, timings=report.timings)
            row.sizes["ledger"] = self.ledger_size()
            row.note = (f"{report.status}: {objects:,} objects in {apply_s:.1f} s "
                        f"({objects / apply_s:,.0f}/s); approve {approve_s:.2f} s; sandbox "
                        f"keep={self.sandbox_keep}, its peak RSS "
                        f"{_mb(row.figures['sandbox_peak_rss'])} MB")
            if report.status != "complete":
                raise RuntimeError(f"apply ended {report.status}: {report.counts}")

        def acknowledge(row: Row) -> None:
            """apply's ledger side without Braze: every batch acknowledged, folded, converged"""
            from toolkit.sync.ledger import Rows

            plan, ledger = st["plan"], st["ledger"]
            plan.approve(by="bench")
            plan.check_approval(st["client"].workspace)
            ledger.record_plan(plan)
            batches = plan.batches()
            ledger.record_batches(plan.id, [(b.id, b.kind, b.objects, None, b.index)
                                            for b in batches])
            for start in range(0, len(batches), 1000):
                ledger.finish_many(plan.id, [(b.id, "acknowledged", Rows(b.index, b.stop - b.start),
                                              None) for b in batches[start:start + 1000]])
            ledger.materialize()
            ledger.record_converged(plan)
            row.sizes["ledger"] = self.ledger_size()
            row.note = (f"ledger only (no sandbox): {len(batches):,} batches acknowledged and "
                        "folded")

        def replan(row: Row) -> None:
            self.plan(st["export"], row)
            row.sizes["ledger"] = self.ledger_size()

        def load_changed(row: Row) -> None:
            st["changed"] = toolkit.load(self.files["changed"], audience="all_shoppers")

        def change(row: Row) -> None:
            self.plan(st["changed"], row)

        def close_ledger(row: Row) -> None:
            st.pop("ledger").close()
            row.sizes["ledger"] = self.ledger_size()

        self.stage("load", "toolkit.load(all_shoppers.csv)", load, self.repeat)
        self.stage("preview", "Mapping.from_export → preview → to_frame", preview, self.repeat)
        if "plan" in self.selected and "load" in self.done:
            self.start_sandbox()                      # outside the plan's timing
        self.stage("plan", "first toolkit.plan, empty ledger (+ cost)", first_plan)
        self.stage("save", "plan.save", save)
        if getattr(self, "acknowledge", False):
            self.stage("apply", "approve + acknowledge every batch in the ledger", acknowledge)
        elif self.stage("apply", f"approve + toolkit.apply → sandbox process "
                                 f"(keep={self.sandbox_keep})", apply) and \
                "apply" in self.done:
            self.bare_push()
        st.pop("plan", None)
        self.stage("replan", "toolkit.plan again, same export", replan)
        if "change" in self.selected and "apply" in self.done:
            self.measure("load changed", "toolkit.load(all_shoppers_changed.csv)", load_changed)
        self.stage("change", "toolkit.plan after the 10% change", change)
        if "ledger" in st:
            self.measure("close ledger", "ledger.close(): what stays on disk", close_ledger)

    def bare_push(self) -> None:
        """bench_push's bare loop, on the same payloads (the first --push-batches requests), in
        a process of its own: its payloads are decoded there before it is timed, so the ~1 GB
        of Python objects they make at 10M never weigh on this process's later stages."""
        plan = self.state["plan"]
        path = self.run_dir / "bare-payloads.jsonl"
        objects = requests = 0
        with path.open("w", encoding="utf-8") as out:
            for b in plan.batches()[:self.push_batches]:
                payload = plan.payload(b)
                objects += sum(len(v) for v in payload.values() if isinstance(v, list))
                requests += 1
                out.write(json.dumps(payload) + "\n")

        def push(row: Row) -> None:
            with sandbox(*self.sandbox_args()) as url:
                done = subprocess.run([sys.executable, "-c", _BARE_PUSH, str(ROOT / "bench"),
                                       str(path), url], capture_output=True, text=True,
                                      cwd=ROOT, check=False)
            if done.returncode:
                raise RuntimeError(f"bare loop failed: {done.stderr.strip()[-300:]}")
            seconds = float(done.stdout.split()[-1])
            row.figures.update(objects=objects, requests=requests, push_seconds=seconds,
                               objects_per_second=objects / seconds,
                               sandbox_keep=self.sandbox_keep)
            row.note = (f"{objects:,} objects, {requests:,} requests in {seconds:.1f} s "
                        f"({objects / seconds:,.0f}/s, own process); sandbox "
                        f"keep={self.sandbox_keep}")
        self.measure("bare push", f"bare POST loop, {WORKERS} threads (baseline, "
                                  f"keep={self.sandbox_keep})", push)
        path.unlink(missing_ok=True)


# The bare loop's process: bench_push.push_bare on payloads read from a JSON-lines file.
_BARE_PUSH = """
import json, sys
sys.path.insert(0, sys.argv[1])
from bench_push import push_bare
with open(sys.argv[2], encoding="utf-8") as f:
    payloads = [json.loads(line) for line in f]
print(push_bare(payloads, sys.argv[3]))
"""


def _process_peak(pid: int) -> int | None:
    """Another process's peak RSS (VmHWM), while it runs."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _sql(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _mb(n: int | None) -> str:
    return "" if n is None else f"{n / MB:,.0f}" if n >= 10 * MB else f"{n / MB:,.1f}"


# -- inputs -----------------------------------------------------------------------------------

def ensure_files(profiles: int) -> tuple[dict[str, Path], dict[str, float]]:
    """Generate the two CSVs once per N (a marker says the generator finished); with the
    generator's seconds and peak RSS when it ran now."""
    out = ROOT / "bench" / "out" / f"scale-{profiles}"
    marker = out / f".complete-change-{CHANGE}"
    generated = {}
    if not marker.exists():
        print(f"generating {profiles:,} profiles into {out.relative_to(ROOT)} …", file=sys.stderr,
              flush=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "data" / "samples" / "generate.py"),
                        "--profiles", str(profiles), "--out", str(out), "--change", str(CHANGE)],
                       check=True, cwd=ROOT)
        marker.touch()
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        generated = {"seconds": time.perf_counter() - start, "peak_rss_bytes": peak}
        print(f"generated in {generated['seconds']:.1f} s, peak RSS "
              f"{_mb(generated['peak_rss_bytes'])} MB", file=sys.stderr)
    return {"all_shoppers": out / "all_shoppers.csv",
            "changed": out / "all_shoppers_changed.csv"}, generated


# -- targets and report -----------------------------------------------------------------------

def targets(rows: dict[str, Row], profiles: int) -> list[dict[str, Any]]:
    """The issue's targets that this run's figures decide; size targets are per 1M profiles."""
    def seconds(name: str) -> float | None:
        row = rows.get(name)
        return row.seconds if row is not None and row.ok else None

    def ratio(a: str, b: str | list[str]) -> float | None:
        bs = [seconds(x) for x in ([b] if isinstance(b, str) else b)]
        bs = [x for x in bs if x]
        top = seconds(a)
        return top / min(bs) if top is not None and bs else None

    scale = profiles / 1e6
    out = []

    def add(name: str, value: float | None, op: str, limit: float, unit: str = "×") -> None:
        verdict = "n/a" if value is None else \
            "PASS" if (value <= limit if op == "≤" else value >= limit) else "FAIL"
        out.append({"target": name, "value": value, "op": op, "limit": limit, "unit": unit,
                    "verdict": verdict})

    add("preview / load", ratio("preview", "load"), "≤", 1.0)
    add("first plan / bare DuckDB diff", ratio("plan", "bare diff"), "≤", 1.5)
    add("first plan / load", ratio("plan", "load"), "≤", 2.0)
    add("unchanged re-plan / load", ratio("replan", "load"), "≤", 0.5)
    ops = rows["replan"].figures.get("operations") if "replan" in rows else None
    add("unchanged re-plan operations", None if ops is None else float(ops), "≤", 0, "")
    add("10%-change re-plan / load", ratio("change", "load"), "≤", 1.0)
    add("load / faster bare reader", ratio("load", ["bare pyarrow", "bare duckdb"]), "≤", 1.3)
    apply_rate = rows["apply"].figures.get("objects_per_second") if "apply" in rows else None
    bare_rate = rows["bare push"].figures.get("objects_per_second") if "bare push" in rows \
        else None
    add("apply throughput / bare loop",
        apply_rate / bare_rate if apply_rate and bare_rate else None, "≥", 0.8)
    plan_size = rows["save"].sizes.get("plan") if "save" in rows else None
    add("plan artefact", None if plan_size is None else plan_size / MB, "≤", 80 * scale, " MB")
    ledger = rows["close ledger"].sizes.get("ledger") if "close ledger" in rows else None
    add("ledger (closed)", None if ledger is None else ledger / MB, "≤", 160 * scale, " MB")
    peaks = [r.peak_rss for n, r in rows.items() if n in PRODUCT and r.peak_rss is not None]
    add("peak RSS, toolkit stages", max(peaks) / MB if peaks else None, "≤", 2 * GIB / MB, " MB")
    return out


def print_report(profiles: int, rows: list[Row], verdicts: list[dict[str, Any]],
                 load_average: list[float], ledger: str = "SQLite file",
                 sandbox_keep: str = "users") -> None:
    print(f"\nbench_scale: {profiles:,} profiles, ledger: {ledger}, sandbox keeps "
          f"{sandbox_keep}, default mapping of all_shoppers.csv "
          f"(1 audience + 5 traits as attributes); change file: {CHANGE:.0%} of profiles\n"
          f"1-min load average {load_average[0]:.1f} at the start, {load_average[1]:.1f} at "
          f"the end ({os.cpu_count()} CPUs)")
    head = f"{'stage':<18}{'seconds':>9}{'peak RSS MB':>13}  {'artefacts MB':<22}result"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        sizes = ", ".join(f"{k} {_mb(v)}" for k, v in r.sizes.items())
        result = (f"SKIPPED ({r.skipped})" if r.skipped else f"ERROR {r.error}" if r.error
                  else r.note)
        secs = "" if r.seconds is None else f"{r.seconds:.2f}"
        print(f"{r.name:<18}{secs:>9}{_mb(r.peak_rss):>13}  {sizes:<22}{result}")
    print(f"\n{'target':<34}{'value':>12}  {'target':<16}verdict")
    print("-" * 70)
    for t in verdicts:
        digits = 2 if t["unit"] else 0
        value = "—" if t["value"] is None else f"{t['value']:,.{digits}f}{t['unit']}"
        limit = f"{t['op']} {t['limit']:,.{digits}f}{t['unit']}"
        print(f"{t['target']:<34}{value:>12}  {limit:<16}{t['verdict']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated, from {','.join(STAGES)} (default: all)")
    parser.add_argument("--skip", default="", help="comma-separated stages to leave out")
    parser.add_argument("--push-batches", type=int, default=10_000,
                        help="requests in the bare push loop baseline (default 10,000)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of load, of the preview and of the bare reads, best taken (default 3)")
    parser.add_argument("--acknowledge", action="store_true",
                        help="instead of applying to a sandbox subprocess, record every "
                             "batch of the plan as acknowledged in the ledger, as apply does, "
                             "and fold it; replan and change then run (no HTTP: for a real "
                             "apply at 10M use --sandbox-keep counts)")
    parser.add_argument("--sandbox-keep", choices=("users", "counts"), default="users",
                        help="what the sandbox subprocesses of apply and the bare loop keep: "
                             "every user (default; ~1.5 KB a user, too much for 10M on 24 GiB) "
                             "or 'counts' (requests validated, refused and billed exactly as "
                             "with 'users', ~120 bytes a user: applies 10M for real)")
    parser.add_argument("--ledger", default=None, metavar="URL",
                        help="keep the ledger on PostgreSQL (a fresh schema at this URL; "
                             "'local-postgresql' starts a throwaway server as the tests do) "
                             "instead of the embedded SQLite file")
    parser.add_argument("--diff-at", choices=("auto", "local", "server"), default="auto",
                        help="where the plans' diff runs with a --ledger on PostgreSQL "
                             "(toolkit.plan's diff_at; default: auto, the smaller side moves)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the plan, ledger and Parquet files under bench/out/scale-N/run-PID")
    args = parser.parse_args(argv)
    if args.profiles <= 10_000:
        parser.error("--profiles must be above 10,000 (the generator's large mode)")
    chosen = [s.strip() for s in args.stages.split(",") if s.strip()]
    skipped = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = (set(chosen) | skipped) - set(STAGES)
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(sorted(unknown))}; use {', '.join(STAGES)}")
    selected = [s for s in STAGES if s in chosen and s not in skipped]

    files, generated = ensure_files(args.profiles)
    # a folder of its own per run: two benchmarks at once (several worktrees share bench/out)
    # must not delete each other's files
    run_dir = files["all_shoppers"].parent / f"run-{os.getpid()}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    # exports kept on disk (from TOOLKIT_STORE_FROM bytes: the 10M file) go with the run
    os.environ.setdefault("TOOLKIT_CACHE", str(run_dir / "exports"))
    load_average = [os.getloadavg()[0]]
    bench = Bench(files, run_dir, selected, args.push_batches, max(args.repeat, 1),
                  args.sandbox_keep)
    bench.acknowledge = args.acknowledge
    bench.diff_at = args.diff_at
    server = None
    try:
        if args.ledger:
            url = args.ledger
            if url == "local-postgresql":
                from tests.pgserver import PostgresServer

                server = PostgresServer().start()
                url = server.url
            bench.ledger_url = f"{url}{'&' if '?' in url else '?'}schema=bench_{os.getpid()}"
        bench.run()
    finally:
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    load_average.append(os.getloadavg()[0])
    rows = {r.name: r for r in bench.rows}
    verdicts = targets(rows, args.profiles)
    from toolkit.sync.journal import ledger_location

    shown = ledger_location(bench.ledger_url) if bench.ledger_url else "SQLite file"
    print_report(args.profiles, bench.rows, verdicts, load_average, shown, args.sandbox_keep)
    print(json.dumps({
        "bench": "bench_scale", "profiles": args.profiles, "change_fraction": CHANGE,
        "ledger": shown, "sandbox_keep": None if args.acknowledge else args.sandbox_keep,
        "load_average": load_average, "cpus": os.cpu_count(), "generator": generated,
        "stages": {r.name: {"what": r.what, "seconds": r.seconds, "peak_rss_bytes": r.peak_rss,
                            "sizes_bytes": r.sizes, **r.figures, "error": r.error,
                            "skipped": r.skipped} for r in bench.rows},
        "targets": verdicts,
    }, ensure_ascii=False, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

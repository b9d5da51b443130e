"""`LocalPostgres`: a throwaway PostgreSQL server on loopback, for trying the team's shared ledger.

``with LocalPostgres() as pg: toolkit.Ledger(pg.url, workspace=client)`` — `initdb` into a temp
dir, `pg_ctl` on a free loopback port, one database with a password-protected owner, stopped and
deleted afterwards. Notebook 05 runs two analysts' ledgers on it, and the tests' `postgres_url`
fixture (tests/conftest.py) wraps it. It uses Debian's ``postgresql`` server programs
(``scripts/install-postgresql.sh`` installs them). PostgreSQL refuses to run as root, so as root
the server runs as ``nobody``. A team uses its own server instead: see README, "Team set-up".
"""
from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from html import escape
from pathlib import Path

from toolkit.errors import SandboxError

__all__ = ["LocalPostgres", "INSTALL_HINT", "find_bin"]

USER = "toolkit"
DATABASE = "engage"
INSTALL_HINT = ("install Debian's PostgreSQL server: `sudo apt-get install -y postgresql` "
                "(or run `bash scripts/install-postgresql.sh` as root)")


def find_bin(name: str) -> str | None:
    """`name` (initdb, pg_ctl) on PATH, else in the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found

    def version(path):
        try:
            return int(Path(path).parts[-3])
        except ValueError:
            return 0
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=version)
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPostgres:
    """``with LocalPostgres() as pg: pg.url`` — a running server and one empty database.

    ``password`` defaults to a new random one per server; ``pg.url`` carries it, so keep the URL
    out of outputs (show a `Ledger`'s ``location`` instead, which hides it)."""

    def __init__(self, *, password: str | None = None, user: str = USER,
                 database: str = DATABASE) -> None:
        self.initdb, self.pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        self.user, self.database = user, database
        self._password = password or secrets.token_urlsafe(18)
        self.root: Path | None = None
        self.port: int | None = None
        self._as: dict = {}

    def unavailable(self) -> str | None:
        """Why no server can be started here (with how to fix it), or None."""
        if not (self.initdb and self.pg_ctl):
            return f"PostgreSQL (initdb, pg_ctl) not found; {INSTALL_HINT}"
        try:
            import psycopg  # noqa: F401  # lazy: the driver only when a server is wanted
        except ImportError:
            return "psycopg is not installed; pip install 'psycopg[binary]'"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("nobody")
            except KeyError:
                return "running as root and there is no 'nobody' user to run PostgreSQL as"
        return None

    @property
    def running(self) -> bool:
        return self.root is not None and self.port is not None

    @property
    def url(self) -> str:
        """``postgresql://user:password@127.0.0.1:PORT/database`` (carries the password)."""
        return self.url_for()

    def url_for(self, *, user: str | None = None, password: str | None = None,
                database: str | None = None) -> str:
        """The URL of another database or login on this server."""
        return (f"postgresql://{user or self.user}:{password or self._password}@127.0.0.1:"
                f"{self.port}/{database or self.database}")

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False,
                              cwd=self.root, **self._as)

    def start(self) -> LocalPostgres:
        """initdb, start on a free loopback port and create the database; raises
        `SandboxError` saying how to install PostgreSQL when it cannot."""
        why = self.unavailable()
        if why:
            raise SandboxError(f"no local PostgreSQL server can be started: {why.split(';')[0]}",
                               hint=why.split("; ", 1)[-1])
        self.root = Path(tempfile.mkdtemp(prefix="toolkit-pg-"))
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            # drop root entirely (supplementary groups too): postgres checks the real uid
            self._as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": [],
                        "env": {**os.environ, "HOME": str(self.root)}}
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
        data, sock = self.root / "data", self.root / "sock"
        pwfile = self.root / "pwfile"
        pwfile.write_text(self._password + "\n")
        sock.mkdir()
        if self._as:
            for p in (pwfile, sock):
                os.chown(p, self._as["user"], self._as["group"])
        done = self._run(self.initdb, "-D", str(data), "-U", self.user, f"--pwfile={pwfile}",
                         "-A", "scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
        pwfile.unlink()
        if done.returncode:
            raise SandboxError(f"initdb failed: {done.stderr.strip()[-600:]}", hint=INSTALL_HINT)
        for _attempt in range(3):   # another process may take the free port before we bind it
            self.port = _free_port()
            opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {sock} -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off -c max_connections=40")
            done = self._run(self.pg_ctl, "-D", str(data), "-o", opts, "-l",
                             str(self.root / "server.log"), "-w", "-t", "30", "start")
            if done.returncode == 0:
                break
        else:
            log = (self.root / "server.log").read_text(errors="replace")[-600:]
            raise SandboxError(f"pg_ctl start failed: {done.stderr.strip()[-300:]} {log}",
                               hint="see the server log above; " + INSTALL_HINT)
        import psycopg  # lazy: the driver only when a server is wanted
        with psycopg.connect(self.url_for(database="postgres"), autocommit=True,
                             connect_timeout=10) as con:
            con.execute(f'CREATE DATABASE "{self.database}"')
        return self

    def stop(self) -> None:
        """Stop the server and delete its data directory."""
        if self.root is None:
            return
        if (self.root / "data" / "postmaster.pid").exists():
            self._run(self.pg_ctl, "-D", str(self.root / "data"), "-m", "immediate", "-w",
                      "stop")
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None
        self.port = None

    close = stop

    def __enter__(self) -> LocalPostgres:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"127.0.0.1:{self.port}/{self.database}" if self.running else "stopped"
        return f"LocalPostgres({where}, user {self.user!r}, password hidden)"

    def _repr_html_(self) -> str:
        return f"<code>{escape(repr(self))}</code>"

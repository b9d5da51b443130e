"""A throwaway PostgreSQL server for tests: `initdb` into a temp dir, `pg_ctl` on a free loopback
port, a database with a password-protected owner, stopped and deleted afterwards.

Reusable by any test that needs a real server (the `postgres_url` fixture in tests/conftest.py
wraps it). PostgreSQL refuses to run as root, so when the tests run as root the server runs as
``nobody`` (the data directory is handed to that user); `unavailable()` says why a server cannot
be had, and the fixture skips with that message.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "toolkit"
PASSWORD = "pg-test-Secret-7f3a"   # a distinctive string: tests search outputs for it
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


class PostgresServer:
    """``with PostgresServer() as pg: pg.url`` — a running server and one empty database."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        self.root: Path | None = None
        self.port: int | None = None
        self._as: dict = {}

    def unavailable(self) -> str | None:
        """Why no server can be started here, or None."""
        if not (self.initdb and self.pg_ctl):
            return f"PostgreSQL (initdb, pg_ctl) not found; {INSTALL_HINT}"
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "psycopg is not installed; pip install 'psycopg[binary]'"
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("nobody")
            except KeyError:
                return "running as root and there is no 'nobody' user to run PostgreSQL as"
        return None

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    def url_for(self, *, user: str = USER, password: str = PASSWORD,
                database: str = DATABASE) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False,
                              cwd=self.root, **self._as)

    def start(self) -> PostgresServer:
        why = self.unavailable()
        if why:
            raise RuntimeError(why)
        self.root = Path(tempfile.mkdtemp(prefix="toolkit-pg-"))
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            # drop root entirely (supplementary groups too): postgres checks the real uid
            self._as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": [],
                        "env": {**os.environ, "HOME": str(self.root)}}
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
        data, sock = self.root / "data", self.root / "sock"
        pwfile = self.root / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        sock.mkdir()
        if self._as:
            for p in (pwfile, sock):
                os.chown(p, self._as["user"], self._as["group"])
        done = self._run(self.initdb, "-D", str(data), "-U", USER, f"--pwfile={pwfile}",
                         "-A", "scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()[-600:]}")
        for attempt in range(3):   # another process may take the free port before we bind it
            self.port = _free_port()
            opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {sock} -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off -c max_connections=40")
            done = self._run(self.pg_ctl, "-D", str(data), "-o", opts, "-l",
                             str(self.root / "server.log"), "-w", "-t", "30", "start")
            if done.returncode == 0:
                break
        else:
            log = (self.root / "server.log").read_text(errors="replace")[-600:]
            raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()[-300:]} {log}")
        import psycopg
        with psycopg.connect(self.url_for(database="postgres"), autocommit=True,
                             connect_timeout=10) as con:
            con.execute(f"CREATE DATABASE {DATABASE}")
        return self

    def stop(self) -> None:
        if self.root is None:
            return
        if (self.root / "data" / "postmaster.pid").exists():
            self._run(self.pg_ctl, "-D", str(self.root / "data"), "-m", "immediate", "-w",
                      "stop")
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> PostgresServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


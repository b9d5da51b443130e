"""`toolkit.sandbox.LocalPostgres`: the throwaway PostgreSQL a notebook starts to try the team
ledger — a password of its own that no repr shows, the install hint when it cannot start, and
nothing left behind after stop."""
from __future__ import annotations

import pytest

from toolkit.errors import SandboxError
from toolkit.sandbox import LocalPostgres


def test_without_postgresql_it_fails_saying_how_to_install_it():
    server = LocalPostgres()
    server.initdb = None
    with pytest.raises(SandboxError) as err:
        server.start()
    assert "PostgreSQL (initdb, pg_ctl) not found" in str(err.value)
    assert "apt-get install -y postgresql" in err.value.hint
    assert "scripts/install-postgresql.sh" in err.value.hint
    assert server.root is None


def test_a_server_runs_with_a_password_of_its_own_that_no_repr_shows(postgres_server):
    import psycopg

    with LocalPostgres() as server:
        other = LocalPostgres()
        password = server.url.split(":")[2].split("@")[0]
        assert len(password) >= 20 and password not in other.url_for()
        for text in (repr(server), str(server), server._repr_html_()):
            assert password not in text and "password hidden" in text
        with psycopg.connect(server.url, connect_timeout=10) as con:
            assert con.execute("SELECT current_database()").fetchone()[0] == "engage"
        root = server.root
        assert not (root / "pwfile").exists(), "the password file is removed after initdb"
    assert not root.exists() and not server.running
    assert "stopped" in repr(server)

"""A local Braze-compatible REST server: the embedded default target of notebooks, demo and tests
(and `LocalPostgres`, a throwaway PostgreSQL for trying the team's shared ledger)."""
from toolkit.sandbox.faults import Faults
from toolkit.sandbox.postgres import LocalPostgres
from toolkit.sandbox.server import BrazeSandbox

__all__ = ["BrazeSandbox", "Faults", "LocalPostgres"]

"""Tests of the sync engine: plan, ledger, apply, verify, CLI, crash and resume."""

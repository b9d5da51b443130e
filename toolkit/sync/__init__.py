"""Sync: plan (diff, cost, fingerprint, approval), ledger (SQLite), apply and verify."""

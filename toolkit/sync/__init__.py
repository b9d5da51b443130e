"""Sync: plan (diff, cost, fingerprint, approval), ledger (SQLite), apply, verify and settle."""

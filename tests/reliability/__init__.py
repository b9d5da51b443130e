"""Reliability and security suite: bad inputs, approval properties, faults, crashes, secrets."""

"""A local Braze-compatible REST server: the embedded default target of notebooks, demo and tests."""

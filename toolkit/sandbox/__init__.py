"""A local Braze-compatible REST server: the embedded default target of notebooks, demo and tests."""
from toolkit.sandbox.faults import Faults
from toolkit.sandbox.server import BrazeSandbox

__all__ = ["BrazeSandbox", "Faults"]

"""Braze's limits live in one `BrazeLimits` object, each with its source, and every stage reads it."""
from __future__ import annotations

import dataclasses

import pytest

from toolkit.braze.limits import LIMITS, SOURCES, BrazeLimits
from toolkit.braze.ratelimit import RateLimiter
from toolkit.errors import ConfigError


def test_every_limit_names_its_source():
    names = [f.name for f in dataclasses.fields(BrazeLimits)]
    assert sorted(names) == sorted(SOURCES)
    for name in names:
        assert BrazeLimits.source(name).startswith("§")
    assert "75" in LIMITS.source("objects_per_array") and LIMITS.objects_per_array == 75
    assert LIMITS.string_length == LIMITS.name_length == 255


def test_limits_are_checked_and_can_differ_per_contract():
    mau = LIMITS.with_(combined_objects=50)
    assert mau.combined_objects == 50 and LIMITS.combined_objects is None
    with pytest.raises(ConfigError):
        BrazeLimits(objects_per_array=0)
    with pytest.raises(ConfigError):
        LIMITS.source("speed_of_light")
    with pytest.raises(TypeError):
        LIMITS.rate_limits["/users/track"] = (1, 1.0)
    assert "§1.6" in LIMITS._repr_html_()


def test_validation_plan_client_and_sandbox_read_the_same_limits(tmp_path):
    from toolkit.sandbox import BrazeSandbox
    from toolkit.sync import plan as plan_module

    assert RateLimiter().limit_for("/users/track") == LIMITS.rate_limits["/users/track"]
    with BrazeSandbox() as sb:
        assert sb._store.max_objects_per_array == LIMITS.objects_per_array
    import inspect

    default = inspect.signature(plan_module.plan).parameters["batch_size"].default
    assert default == LIMITS.objects_per_array

"""The client's segment reads against the sandbox: every page of /segments/list, estimates,
and an export that is not ready in time."""
from __future__ import annotations

import pytest

import toolkit
from toolkit.braze.filters import BooleanAttribute
from toolkit.errors import BrazeConnectionError, ConfigError
from toolkit.sandbox import BrazeSandbox


@pytest.fixture
def pair():
    with BrazeSandbox(seed=9, export_delay=5) as sb, \
            toolkit.BrazeClient.for_sandbox(sb, backoff=(0.01, 0.05)) as client:
        yield sb, client


def test_every_page_of_the_segment_list(pair):
    sb, client = pair
    ids = [sb.create_segment(f"s{i}", BooleanAttribute("vip", "is_true")) for i in range(230)]
    assert [s["id"] for s in client.segments()] == ids
    assert [s["id"] for s in client.segments(sort_direction="desc")] == ids[::-1]
    log = sb.request_log()
    assert (log["endpoint"] == "/segments/list").sum() == 6      # 3 pages, twice
    with pytest.raises(ConfigError, match="sort_direction"):
        client.segments(sort_direction="newest")


def test_estimates_and_their_arguments(pair):
    sb, client = pair
    sid = sb.create_segment("vip", BooleanAttribute("vip", "is_true"))
    assert client.segment_data_series(sid) == []
    sb.estimate_segments()
    assert [p["size"] for p in client.segment_data_series(sid, length=1)] == [0]
    for bad in (0, 101, 1.5, True):
        with pytest.raises(ConfigError, match="length"):
            client.segment_data_series(sid, length=bad)
    with pytest.raises(ConfigError, match="segment id"):
        client.segment_details(" ")


def test_an_export_not_ready_in_time_says_so(pair):
    sb, client = pair
    sid = sb.create_segment("vip", BooleanAttribute("vip", "is_true"))
    with pytest.raises(BrazeConnectionError, match="not ready after 0.3 s") as info:
        client.export_segment(sid, timeout=0.3, poll=(0.05, 0.1))
    assert "HTTP 404" in str(info.value) and "longer timeout" in str(info.value)
    with pytest.raises(ConfigError, match="fields_to_export"):
        client.export_segment(sid, fields_to_export=[])

"""Endpoint resolution: Braze instance names, REST URLs, dashboard URLs and the http:// rule."""
from __future__ import annotations

import pytest

from toolkit.braze.client import BrazeClient
from toolkit.braze.instances import INSTANCES, instance_of, is_loopback, resolve_endpoint
from toolkit.errors import ConfigError

EXPECTED = {
    "US-01": "https://rest.iad-01.braze.com", "US-02": "https://rest.iad-02.braze.com",
    "US-03": "https://rest.iad-03.braze.com", "US-04": "https://rest.iad-04.braze.com",
    "US-05": "https://rest.iad-05.braze.com", "US-06": "https://rest.iad-06.braze.com",
    "US-07": "https://rest.iad-07.braze.com", "US-08": "https://rest.iad-08.braze.com",
    "US-10": "https://rest.us-10.braze.com", "EU-01": "https://rest.fra-01.braze.eu",
    "EU-02": "https://rest.fra-02.braze.eu", "AU-01": "https://rest.au-01.braze.com",
    "ID-01": "https://rest.id-01.braze.com", "JP-01": "https://rest.jp-01.braze.com",
    "KR-01": "https://rest.kr-01.braze.com",
}


@pytest.mark.parametrize("name,url", sorted(EXPECTED.items()))
def test_every_instance_name_resolves_to_its_rest_endpoint(name, url):
    assert resolve_endpoint(name) == url
    assert resolve_endpoint(name.lower()) == url
    assert resolve_endpoint(name.replace("-", "")) == url
    assert instance_of(url) == name


def test_the_table_holds_exactly_the_documented_instances():
    assert INSTANCES == EXPECTED


@pytest.mark.parametrize("text,url", [
    ("https://rest.iad-03.braze.com/", "https://rest.iad-03.braze.com"),
    ("rest.fra-01.braze.eu", "https://rest.fra-01.braze.eu"),
    ("HTTPS://REST.IAD-01.BRAZE.COM", "https://rest.iad-01.braze.com"),
    ("https://braze-proxy.example.com:8443/braze/", "https://braze-proxy.example.com:8443/braze"),
    ("http://127.0.0.1:8123", "http://127.0.0.1:8123"),
    ("http://localhost:9000/", "http://localhost:9000"),
    ("http://[::1]:9000", "http://[::1]:9000"),
])
def test_urls_are_normalised(text, url):
    assert resolve_endpoint(text) == url


@pytest.mark.parametrize("text", ["http://rest.iad-01.braze.com", "http://10.0.0.5:8080",
                                  "http://example.com"])
def test_plain_http_to_a_remote_host_is_refused(text):
    with pytest.raises(ConfigError, match="refusing plain http://") as info:
        resolve_endpoint(text)
    assert "https://" in info.value.hint


def test_plain_http_refusal_also_applies_to_the_client():
    with pytest.raises(ConfigError, match="refusing plain http://"):
        BrazeClient("http://rest.iad-01.braze.com", "k", env_file=None)


def test_unknown_instance_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown Braze instance 'US-09'") as info:
        resolve_endpoint("US-09")
    assert "US-10" in info.value.hint and "EU-01" in info.value.hint


def test_a_dashboard_url_points_to_the_rest_endpoint():
    with pytest.raises(ConfigError, match="dashboard") as info:
        resolve_endpoint("https://dashboard-01.braze.eu/")
    assert "https://rest.fra-01.braze.eu" in info.value.hint


@pytest.mark.parametrize("text", ["", "   ", "ftp://rest.iad-01.braze.com",
                                  "https://rest.iad-01.braze.com?x=1", "https://user:pw@host.com"])
def test_garbage_endpoints_are_config_errors(text):
    with pytest.raises(ConfigError):
        resolve_endpoint(text)


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("127.8.9.10") and is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("10.0.0.1") and not is_loopback("braze.com") and not is_loopback(None)


def test_endpoint_defaults_to_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BRAZE_REST_ENDPOINT", "EU-02")
    with BrazeClient(api_key="k", env_file=None) as client:
        assert client.endpoint == "https://rest.fra-02.braze.eu"
        assert client.instance == "EU-02"


def test_endpoint_defaults_to_the_env_file(monkeypatch, tmp_path):
    monkeypatch.delenv("BRAZE_REST_ENDPOINT", raising=False)
    env = tmp_path / ".env"
    env.write_text("BRAZE_REST_ENDPOINT=AU-01\n")
    with BrazeClient(api_key="k", env_file=str(env)) as client:
        assert client.endpoint == "https://rest.au-01.braze.com"


def test_a_missing_endpoint_says_how_to_set_it(monkeypatch):
    monkeypatch.delenv("BRAZE_REST_ENDPOINT", raising=False)
    with pytest.raises(ConfigError, match="no Braze REST endpoint") as info:
        BrazeClient(api_key="k", env_file=None)
    assert "BRAZE_REST_ENDPOINT" in info.value.hint

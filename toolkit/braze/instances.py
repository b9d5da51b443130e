"""Braze instances (US-01 … KR-01) and their REST endpoints; turns what a user types into a base URL.

Accepts an instance name ("US-03", "eu-01", "US03"), a REST URL ("https://rest.iad-03.braze.com"),
a bare REST host, or a loopback URL (the sandbox). Refuses plain ``http://`` to any other host, and
recognises a pasted dashboard URL so the user is told which REST endpoint to use instead.
"""
from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from toolkit.errors import ConfigError

__all__ = ["INSTANCES", "resolve_endpoint", "instance_of", "is_loopback"]

# Braze's data-centre table (reference/braze-api.md §3): instance -> (REST endpoint, dashboard host)
_TABLE: dict[str, tuple[str, str]] = {
    "US-01": ("https://rest.iad-01.braze.com", "dashboard-01.braze.com"),
    "US-02": ("https://rest.iad-02.braze.com", "dashboard-02.braze.com"),
    "US-03": ("https://rest.iad-03.braze.com", "dashboard-03.braze.com"),
    "US-04": ("https://rest.iad-04.braze.com", "dashboard-04.braze.com"),
    "US-05": ("https://rest.iad-05.braze.com", "dashboard-05.braze.com"),
    "US-06": ("https://rest.iad-06.braze.com", "dashboard-06.braze.com"),
    "US-07": ("https://rest.iad-07.braze.com", "dashboard-07.braze.com"),
    "US-08": ("https://rest.iad-08.braze.com", "dashboard-08.braze.com"),
    "US-10": ("https://rest.us-10.braze.com", "dashboard.us-10.braze.com"),
    "EU-01": ("https://rest.fra-01.braze.eu", "dashboard-01.braze.eu"),
    "EU-02": ("https://rest.fra-02.braze.eu", "dashboard-02.braze.eu"),
    "AU-01": ("https://rest.au-01.braze.com", "dashboard.au-01.braze.com"),
    "ID-01": ("https://rest.id-01.braze.com", "dashboard.id-01.braze.com"),
    "JP-01": ("https://rest.jp-01.braze.com", "dashboard.jp-01.braze.com"),
    "KR-01": ("https://rest.kr-01.braze.com", "dashboard.kr-01.braze.com"),
}

INSTANCES: dict[str, str] = {name: rest for name, (rest, _) in _TABLE.items()}
_BY_REST_HOST = {urlsplit(rest).hostname: name for name, rest in INSTANCES.items()}
_BY_DASHBOARD_HOST = {dash: name for name, (_, dash) in _TABLE.items()}
_NAME = re.compile(r"^([A-Za-z]{2})-?(\d{1,2})$")


def is_loopback(host: str | None) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 — the only hosts plain http:// may reach."""
    if not host:
        return False
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def instance_of(url: str) -> str | None:
    """The instance name of a Braze REST URL ("US-03"), or None for a sandbox/proxy URL."""
    return _BY_REST_HOST.get(urlsplit(url).hostname or "")


def resolve_endpoint(value: str) -> str:
    """An instance name or URL → the REST base URL, without a trailing slash.

    Raises `ConfigError` for unknown instances, dashboard URLs, and http:// to non-loopback hosts."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("no Braze REST endpoint given", field="endpoint",
                          hint="pass an instance name such as 'US-03' or 'EU-01', or set "
                               "BRAZE_REST_ENDPOINT")
    text = value.strip()
    match = _NAME.match(text)
    if match:
        name = f"{match.group(1).upper()}-{int(match.group(2)):02d}"
        if name in INSTANCES:
            return INSTANCES[name]
        raise ConfigError(f"unknown Braze instance {text!r}", field="endpoint",
                          hint="use one of " + ", ".join(INSTANCES) + ", or the REST URL shown "
                               "under Settings > APIs and Identifiers")
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(f"not a Braze instance name or REST URL: {value!r}", field="endpoint",
                          hint="use an instance name such as 'US-03' or a URL such as "
                               "https://rest.iad-03.braze.com")
    if host in _BY_DASHBOARD_HOST:
        name = _BY_DASHBOARD_HOST[host]
        raise ConfigError(f"{host} is the {name} dashboard, not its REST endpoint", field="endpoint",
                          hint=f"use {name!r} or {INSTANCES[name]}")
    if "." not in host and ":" not in host and not is_loopback(host):
        # Not echoed: a bare name here is most often an API key passed as the endpoint
        # (arguments swapped), and it would otherwise become a host name sent to DNS.
        raise ConfigError("the endpoint is neither an instance name nor a REST host name (it has "
                          "no domain) — are the endpoint and the API key swapped?",
                          field="endpoint", hint="pass the endpoint first, e.g. "
                          "BrazeClient('US-03', key), or a URL such as https://rest.iad-03.braze.com")
    if parts.scheme == "http" and not is_loopback(host):
        raise ConfigError(f"refusing plain http:// to {host}: the API key would travel unencrypted",
                          field="endpoint", hint="use https:// (plain http is allowed only for "
                                                 "127.0.0.1/localhost, e.g. the sandbox)")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError("the endpoint URL must not carry a query, fragment or credentials",
                          field="endpoint", hint="give only scheme, host, optional port and path prefix")
    netloc = host if ":" not in host else f"[{host}]"
    if parts.port:
        netloc += f":{parts.port}"
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"

"""The transport seam: the real HTTP transport's failures classified by what Braze may have done,
the in-process sandbox transport answering exactly as the sandbox does over HTTP (faults
included), the mock transport, and reprs that never show a key."""
from __future__ import annotations

import socket

import pytest

from toolkit.braze.client import BrazeClient
from toolkit.braze.transport import (MockTransport, Request, RequestsTransport, Response,
                                     SandboxTransport)
from toolkit.errors import BrazeConnectionError, Outcome, TransportError
from toolkit.sandbox import BrazeSandbox

KEY = "transport-key-0d9e8f7a6b5c4d3e"
ATTRS = {"attributes": [{"external_id": "u1", "vip": True}]}


def _track(sb: BrazeSandbox, body: bytes = b'{"attributes":[{"external_id":"u1","vip":true}]}',
           timeout: float = 5) -> Request:
    return Request("POST", sb.url + "/users/track",
                   {"Authorization": f"Bearer {sb.api_key}", "Content-Type": "application/json"},
                   body, timeout)


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture
def sb():
    with BrazeSandbox(KEY, seed=3) as sandbox:
        yield sandbox


@pytest.fixture(params=["http", "in-process"])
def transport(request, sb):
    made = RequestsTransport(sb.url) if request.param == "http" else SandboxTransport(sb)
    yield made
    made.close()


def test_both_transports_get_the_same_answer(transport, sb):
    response = transport.send(_track(sb))
    assert response.status == 201 and response.json()["message"] == "success"
    assert int(response.headers["X-RateLimit-Remaining"]) == 2999   # headers case-insensitive
    assert sb.profiles()["vip"].tolist() == [True]
    bad = transport.send(Request("POST", sb.url + "/users/track",
                                 {"Authorization": "Bearer wrong"}, b"{}", 5))
    assert bad.status == 401 and bad.json() == {"message": "Invalid API key"}


@pytest.mark.parametrize("fault,applied", [("rate_drop_before", False),
                                           ("rate_drop_after", True)])
def test_a_dropped_connection_is_unknown_whether_or_not_it_was_applied(transport, sb, fault,
                                                                        applied):
    sb.set_faults(**{fault: 1.0})
    with pytest.raises(TransportError) as info:
        transport.send(_track(sb))
    assert info.value.outcome is Outcome.UNKNOWN and info.value.kind == "connection"
    assert (len(sb.profiles()) == 1) is applied


def test_an_answer_slower_than_the_read_timeout_is_an_unknown_timeout(transport, sb):
    sb.set_faults(rate_slow=1.0, slow_seconds=0.6)
    with pytest.raises(TransportError) as info:
        transport.send(_track(sb, timeout=0.2))
    assert info.value.outcome is Outcome.UNKNOWN and info.value.kind == "timeout"


def test_nothing_listening_is_not_applied():
    with pytest.raises(TransportError) as info:
        RequestsTransport("http://127.0.0.1").send(
            Request("POST", f"http://127.0.0.1:{_closed_port()}/users/track", {}, b"{}", 2))
    assert info.value.outcome is Outcome.NOT_APPLIED and info.value.kind == "connection"
    sandbox = BrazeSandbox()
    sandbox.close()
    with pytest.raises(TransportError) as info:
        SandboxTransport(sandbox).send(_track(sandbox))
    assert info.value.outcome is Outcome.NOT_APPLIED


def test_for_sandbox_is_in_process_unless_asked_for_http(sb):
    with BrazeClient.for_sandbox(sb) as inproc, BrazeClient.for_sandbox(sb, http=True) as http:
        assert isinstance(inproc.transport, SandboxTransport)
        assert isinstance(http.transport, RequestsTransport)
        for client in (inproc, http):
            assert client.track(**ATTRS).status == 201
    assert len(sb.request_log()) == 2


def test_a_client_over_the_sandbox_transport_sees_faults_as_over_http(sb):
    sb.set_faults(rate_drop_after=1.0)
    with BrazeClient.for_sandbox(sb, backoff=(0.001, 0.002)) as client:
        with pytest.raises(BrazeConnectionError) as info:
            client.track(events=[{"external_id": "u", "name": "e", "time": "2026-01-01"}])
    assert info.value.outcome is Outcome.UNKNOWN and info.value.attempts == 1


def test_mock_transport_answers_with_its_handler():
    seen = []

    def handler(request: Request) -> Response:
        seen.append(request.json())
        return Response.of(201, {"message": "success"}, {"X-Trace": 1})

    with BrazeClient("http://127.0.0.1:9", KEY, env_file=None,
                     transport=MockTransport(handler)) as client:
        assert client.track(**ATTRS).status == 201
    assert seen == [ATTRS]
    with pytest.raises(TypeError, match="must return a Response"):
        MockTransport(lambda request: 201).send(Request("GET", "http://x/"))


def test_no_repr_shows_the_key(sb):
    request = _track(sb)
    texts = [repr(request), repr(Response.of(201, {})), repr(SandboxTransport(sb)),
             repr(RequestsTransport(sb.url)), repr(MockTransport(lambda r: None))]
    with BrazeClient.for_sandbox(sb) as client:
        texts += [repr(client), repr(client.transport), repr(client.retry)]
    assert all(KEY not in text for text in texts), texts

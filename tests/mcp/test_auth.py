"""Authentication and session ownership in the reference server (issue 13).

In-process (the app and a real engine behind httpx's ASGI transport) for the rules one by one;
a real ``serve`` process for restarts (SIGTERM and SIGKILL), the official ``mcp`` client with a
bearer token, and the two-command local trial (``python -m engine token``, then ``serve``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import trio

from engine import ConfigError, Engine, EngineConfig, McpApp, McpSession, ServerConfig, open_engine
from engine.mcp._auth import Authenticator

from .auth_support import AUDIENCE, ISSUER, Keys, bearer, other_ec_key, public_pem, rsa_key
from .support import (
    HEADERS,
    PROTOCOL,
    ServerProcess,
    has_session,
    initialize_body,
    metric_value,
)

RPC = {**HEADERS, "mcp-protocol-version": PROTOCOL}


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path / "auth")


@contextlib.asynccontextmanager
async def app_client(
    folder: Path, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Engine[McpSession]]]:
    """The reference app over a real engine and directory store, with *settings*."""
    config = ServerConfig(
        auth_resource=AUDIENCE, engine=EngineConfig(storage_dir=folder / "sessions"), **settings
    )
    async with open_engine(config.engine, payload_type=McpSession) as engine:
        app = McpApp(
            engine,
            config,
            live_sessions=lambda: engine.statistics().live_sessions,
            stats=engine.statistics,
            owners=engine.sessions_by_owner,
        )
        transport = httpx.ASGITransport(app=cast(Any, app))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield client, engine


async def initialize(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    r = await client.post("/mcp", json=initialize_body(), headers={**HEADERS, **headers})
    assert r.status_code == 200, r.text
    return r.headers["mcp-session-id"]


async def ping(client: httpx.AsyncClient, sid: str, headers: dict[str, str]) -> int:
    r = await client.post(
        "/mcp",
        json={"jsonrpc": "2.0", "id": 7, "method": "ping"},
        headers={**RPC, "mcp-session-id": sid, **headers},
    )
    return r.status_code


async def count(client: httpx.AsyncClient, sid: str, headers: dict[str, str]) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "count"}}
    return await client.post("/mcp", json=body, headers={**RPC, "mcp-session-id": sid, **headers})


# -- off by default -----------------------------------------------------------------------------


async def test_authentication_is_off_by_default(tmp_path: Path) -> None:
    async with app_client(tmp_path) as (client, engine):
        sid = await initialize(client, {})
        assert await ping(client, sid, {}) == 200
        # A token is not looked at: every request is anonymous, as before.
        assert await ping(client, sid, bearer("anything")) == 200
        r = await client.get("/.well-known/oauth-protected-resource")
        assert r.status_code == 404
        info = await engine.info(sid)
        assert info is not None and info.owner is None


# -- 401, 403 and the metadata document ---------------------------------------------------------


async def test_no_token_gets_401_pointing_at_the_resource_metadata(
    tmp_path: Path, keys: Keys
) -> None:
    async with app_client(tmp_path, auth_jwt_keys=keys.jwks, auth_issuer=ISSUER) as (client, _):
        r = await client.post("/mcp", json=initialize_body(), headers=HEADERS)
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == (
            'Bearer resource_metadata="https://mcp.test/.well-known/oauth-protected-resource"'
        )
        assert "mcp-session-id" not in r.headers
        assert (await client.delete("/mcp", headers={"mcp-session-id": "x"})).status_code == 401
        for path in (
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resource/mcp",
        ):
            r = await client.get(path)
            assert r.status_code == 200
            assert r.json() == {
                "resource": AUDIENCE,
                "authorization_servers": [ISSUER],
                "bearer_methods_supported": ["header"],
                "resource_name": "engine reference MCP server",
            }
        assert (await client.get("/healthz")).status_code == 200  # operators' routes: no token
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "engine_auth_failures_total", ['reason="missing"']) == 2


def _raw_jwt(
    header: dict[str, object], claims: dict[str, object], sign: Callable[[bytes], bytes]
) -> str:
    """A JWT put together by hand (PyJWT refuses to make the malicious ones)."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = part(json.dumps(header).encode()) + "." + part(json.dumps(claims).encode())
    return head + "." + part(sign(head.encode()))


def _invalid_tokens(keys: Keys) -> dict[str, str]:
    rsa = rsa_key()
    claims: dict[str, object] = {"iss": ISSUER, "aud": AUDIENCE, "sub": "a", "exp": 2**40}
    return {
        "expired": keys.token(lifetime=-60),
        "not yet valid": keys.token(nbf=int(time.time()) + 300),
        "another issuer": keys.token(issuer="https://evil.test"),
        "another audience": keys.token(audience="https://other.test/mcp"),
        "no audience": keys.token(audience=[]),
        "no expiry": keys.token(lifetime=None),  # type: ignore[arg-type]
        "signed by another key": keys.token(key=other_ec_key()),
        "unknown kid": keys.token(headers={"kid": "nope"}),
        "alg none": _raw_jwt({"alg": "none", "kid": keys.kid}, claims, lambda _: b""),
        "HS256 keyed with the public key": _raw_jwt(
            {"alg": "HS256", "kid": keys.kid},
            claims,
            lambda data: hmac.digest(keys.jwks.read_bytes(), data, "sha256"),
        ),
        "RS256 by a stranger": keys.token(key=rsa, algorithm="RS256"),
        "no subject or client": keys.token(subject=None, client_id=None),
        "not a JWT": "garbage",
        "tampered": keys.token()[:-4] + "AAAA",
    }


async def test_invalid_tokens_get_401_invalid_token(tmp_path: Path, keys: Keys) -> None:
    async with app_client(tmp_path, auth_jwt_keys=keys.jwks, auth_issuer=ISSUER) as (client, _):
        for why, token in _invalid_tokens(keys).items():
            r = await client.post(
                "/mcp", json=initialize_body(), headers={**HEADERS, **bearer(token)}
            )
            assert r.status_code == 401, why
            challenge = r.headers["www-authenticate"]
            assert challenge.startswith('Bearer error="invalid_token", error_description="'), why
            assert 'resource_metadata="https://mcp.test/' in challenge, why
        for header in ("Basic YWxpY2U6cGFzcw==", "Bearer", "Bearer  ", "Token abc"):
            r = await client.post(
                "/mcp", json=initialize_body(), headers={**HEADERS, "authorization": header}
            )
            assert r.status_code == 401, header
        # Within the leeway (10 s by default) a just-expired token still passes.
        assert await initialize(client, bearer(keys.token(lifetime=-3)))
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "engine_auth_failures_total", ['reason="expired"']) == 1
        assert metric_value(metrics, "engine_sessions_created_total") == 1


async def test_a_token_without_the_required_scope_gets_403(tmp_path: Path, keys: Keys) -> None:
    settings = {"auth_jwt_keys": keys.jwks, "auth_issuer": ISSUER, "auth_scopes": ("mcp:tools",)}
    async with app_client(tmp_path, **settings) as (client, _):
        for scope in (None, "read", "mcp:tool"):
            r = await client.post(
                "/mcp",
                json=initialize_body(),
                headers={**HEADERS, **bearer(keys.token(scope=scope))},
            )
            assert r.status_code == 403, scope
            assert r.headers["www-authenticate"].startswith(
                'Bearer error="insufficient_scope", error_description="'
            )
            assert 'scope="mcp:tools"' in r.headers["www-authenticate"]
        r = await client.post("/mcp", json=initialize_body(), headers=HEADERS)
        assert r.status_code == 401 and 'scope="mcp:tools"' in r.headers["www-authenticate"]
        assert await initialize(client, bearer(keys.token(scope="read mcp:tools")))
        assert await initialize(client, bearer(keys.token(scp=["mcp:tools"])))
        assert (await client.get("/.well-known/oauth-protected-resource")).json()[
            "scopes_supported"
        ] == ["mcp:tools"]


# -- sessions bound to their principal ----------------------------------------------------------


async def test_a_session_answers_only_its_principal(tmp_path: Path, keys: Keys) -> None:
    alice, alice_again = bearer(keys.token()), bearer(keys.token(jti="refreshed", lifetime=900))
    strangers = {
        "bob": bearer(keys.token("bob")),
        "alice on another client": bearer(keys.token(client_id="other")),
        "alice via azp": bearer(keys.token(client_id=None, azp="other")),
    }
    settings = {"auth_jwt_keys": keys.jwks, "auth_issuer": ISSUER, "auth_anonymous": True}
    async with app_client(tmp_path, **settings) as (client, engine):
        sid = await initialize(client, alice)
        assert (await count(client, sid, alice)).json()["result"]["structuredContent"] == {
            "count": 1
        }
        for who, headers in {**strangers, "anonymous": {}}.items():
            assert await ping(client, sid, headers) == 404, who
            r = await count(client, sid, headers)
            assert r.status_code == 404 and r.json()["error"]["message"] == "Session not found"
            r = await client.delete("/mcp", headers={**RPC, "mcp-session-id": sid, **headers})
            assert r.status_code == 404, who  # DELETE by another principal does nothing
        # A refreshed token of the same identity (new jti, new expiry) keeps the session.
        assert (await count(client, sid, alice_again)).json()["result"]["structuredContent"] == {
            "count": 2
        }
        anonymous = await initialize(client, {})  # anonymous sessions are their own
        assert await ping(client, anonymous, {}) == 200
        assert await ping(client, anonymous, alice) == 404
        stats = engine.statistics()
        assert stats.owner_mismatches == 4 * 3 + 1
        assert stats.owners == 1 and stats.live_sessions == 2
        metrics = (await client.get("/metrics")).text
        principal = engine.sessions_by_owner()[0][0]
        assert principal.subject == "alice" and principal.issuer == ISSUER
        assert principal.client_id == "app"
        fingerprint = principal.fingerprint()
        assert metric_value(metrics, "engine_owner_live_sessions", [fingerprint]) == 1
        assert metric_value(metrics, "engine_owner_mismatches_total") == 13
        assert "alice" not in metrics  # fingerprints only
        r = await client.delete("/mcp", headers={**RPC, "mcp-session-id": sid, **alice_again})
        assert r.status_code == 204
        assert not has_session(tmp_path / "sessions", sid)


async def test_static_tokens(tmp_path: Path) -> None:
    tokens = {"alice-token": ("alice", "mcp"), "bob-token": ("bob", None)}
    lines = []
    for token, (subject, scope) in tokens.items():
        lines += ["[[token]]", f'sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"']
        lines += [f'subject = "{subject}"', 'client_id = "cli"']
        if scope:
            lines.append(f'scopes = ["{scope}"]')
    path = tmp_path / "tokens.toml"
    path.write_text("\n".join(lines) + "\n")
    async with app_client(tmp_path, auth_token_file=path) as (client, engine):
        sid = await initialize(client, bearer("alice-token"))
        assert await ping(client, sid, bearer("alice-token")) == 200
        assert await ping(client, sid, bearer("bob-token")) == 404
        r = await client.post("/mcp", json=initialize_body(), headers={**HEADERS, **bearer("x")})
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith('Bearer error="invalid_token"')
        assert (
            "authorization_servers"
            not in (await client.get("/.well-known/oauth-protected-resource")).json()
        )
        info = await engine.info(sid, owner=engine.sessions_by_owner()[0][0])
        assert info is not None and info.owner is not None
        assert (info.owner.issuer, info.owner.subject, info.owner.client_id) == (
            None,
            "alice",
            "cli",
        )
    async with app_client(tmp_path, auth_token_file=path, auth_scopes=("mcp",)) as (client, _):
        assert await ping(client, sid, bearer("alice-token")) == 200  # after a restart too
        r = await client.post(
            "/mcp", json=initialize_body(), headers={**HEADERS, **bearer("bob-token")}
        )
        assert r.status_code == 403


async def test_max_sessions_per_owner_answers_429(tmp_path: Path, keys: Keys) -> None:
    settings = ServerConfig(
        auth_resource=AUDIENCE,
        auth_jwt_keys=keys.jwks,
        auth_issuer=ISSUER,
        engine=EngineConfig(storage_dir=tmp_path / "s2", max_sessions_per_owner=2),
    )
    async with open_engine(settings.engine, payload_type=McpSession) as engine:
        app = McpApp(engine, settings, live_sessions=lambda: 0, stats=engine.statistics)
        transport = httpx.ASGITransport(app=cast(Any, app))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            alice = bearer(keys.token())
            first = await initialize(client, alice)
            await initialize(client, alice)
            r = await client.post("/mcp", json=initialize_body(), headers={**HEADERS, **alice})
            assert r.status_code == 429
            assert "max_sessions_per_owner" in r.json()["error"]["message"]
            assert await initialize(client, bearer(keys.token("bob")))  # others are not held up
            r = await client.delete("/mcp", headers={**RPC, "mcp-session-id": first, **alice})
            assert r.status_code == 204
            assert await initialize(client, alice)  # room again
            assert engine.statistics().owner_refusals == 1


# -- credentials files the server cannot trust --------------------------------------------------


def test_unusable_credentials_are_configuration_errors(tmp_path: Path, keys: Keys) -> None:
    def config(**settings: Any) -> Authenticator:
        return Authenticator(ServerConfig(auth_resource=AUDIENCE, **settings))

    with pytest.raises(ConfigError, match=r"^auth_issuer: required"):
        config(auth_jwt_keys=keys.jwks)
    writable = tmp_path / "writable.json"
    writable.write_bytes(keys.jwks.read_bytes())
    writable.chmod(0o666)
    with pytest.raises(ConfigError, match="chmod go-w"):
        config(auth_jwt_keys=writable, auth_issuer=ISSUER)
    private = tmp_path / "private.pem"
    private.write_bytes((keys.folder / "private.pem").read_bytes())
    with pytest.raises(ConfigError, match="private key"):
        config(auth_jwt_keys=private, auth_issuer=ISSUER)
    symmetric = tmp_path / "oct.json"
    symmetric.write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    with pytest.raises(ConfigError, match="symmetric"):
        config(auth_jwt_keys=symmetric, auth_issuer=ISSUER)
    for bad in ("{}", "[]", "not json", '{"keys": []}'):
        path = tmp_path / "bad.json"
        path.write_text(bad)
        with pytest.raises(ConfigError, match=r"^auth_jwt_keys: "):
            config(auth_jwt_keys=path, auth_issuer=ISSUER)
    with pytest.raises(ConfigError, match="cannot read"):
        config(auth_token_file=tmp_path / "missing.toml")
    tokens = tmp_path / "tokens.toml"
    for bad in ('[[token]]\nsha256 = "abc"\nsubject = "a"\n', "[[token]]\nsubject = 'a'\n", "x ="):
        tokens.write_text(bad)
        with pytest.raises(ConfigError, match=r"^auth_token_file: "):
            config(auth_token_file=tokens)
    # A PEM public key (RSA here) and a PEM certificate-less EC key both work.
    for key in (rsa_key(), other_ec_key()):
        pem = tmp_path / "key.pem"
        pem.write_bytes(public_pem(key))
        assert config(auth_jwt_keys=pem, auth_issuer=ISSUER).enabled


async def test_a_pem_public_key_verifies_tokens(tmp_path: Path, keys: Keys) -> None:
    key = rsa_key()
    pem = tmp_path / "rsa.pem"
    pem.write_bytes(public_pem(key))
    async with app_client(tmp_path, auth_jwt_keys=pem, auth_issuer=ISSUER) as (client, _):
        token = keys.token(key=key, algorithm="PS256", kid=False)
        sid = await initialize(client, bearer(token))
        rs256 = keys.token(key=key, algorithm="RS256", kid=False)
        assert await ping(client, sid, bearer(rs256)) == 200
        assert await ping(client, sid, bearer(keys.token())) == 401  # the EC key is not trusted


# -- a real server: restarts, the official client, the local trial ------------------------------


def _auth_server(tmp_path: Path, keys: Keys, *extra: str) -> ServerProcess:
    return ServerProcess(
        tmp_path / "sessions",
        "--auth-jwt-keys",
        str(keys.jwks),
        "--auth-issuer",
        ISSUER,
        "--auth-audience",
        AUDIENCE,
        *extra,
    )


@pytest.fixture
def auth_server(tmp_path: Path, keys: Keys) -> Iterator[ServerProcess]:
    server = _auth_server(tmp_path, keys, "--auth-anonymous", "true")
    server.start()
    try:
        yield server
    finally:
        server.close()


def test_ownership_holds_across_sigterm_and_sigkill_restarts(
    auth_server: ServerProcess, keys: Keys
) -> None:
    alice, bob = bearer(keys.token()), bearer(keys.token("bob"))
    with httpx.Client(timeout=10) as client:
        r = client.post(auth_server.url, json=initialize_body(), headers={**HEADERS, **alice})
        assert r.status_code == 200
        sid = r.headers["mcp-session-id"]

        def status(headers: dict[str, str]) -> int:
            body = {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}
            r = client.post(
                auth_server.url, json=body, headers={**RPC, "mcp-session-id": sid, **headers}
            )
            return r.status_code

        for restart in (None, signal.SIGTERM, signal.SIGKILL):
            if restart is not None:
                auth_server.restart(restart)
            assert status(bob) == 404, restart
            assert status({}) == 404, restart  # anonymous
            r = client.delete(auth_server.url, headers={**RPC, "mcp-session-id": sid, **bob})
            assert r.status_code == 404, restart
            assert status(bearer(keys.token(jti=str(restart)))) == 200, restart  # refreshed
        assert has_session(auth_server.storage_dir, sid)
        r = client.get(auth_server.base + "/metrics")
        assert metric_value(r.text, "engine_owner_mismatches_total") == 3  # since the restart


def test_official_mcp_client_with_a_bearer_token_keeps_its_session(
    tmp_path: Path, keys: Keys
) -> None:
    """The official ``mcp`` client (the 2.x ``Client`` the test extra installs, in legacy
    mode: the initialize handshake, where session ids live) with a bearer token: its session
    survives a SIGTERM and a SIGKILL restart, and meanwhile the same session id with another
    principal's token gets 404. Leaving the client ends the session (DELETE with the owner's
    token)."""
    server = _auth_server(tmp_path, keys)
    server.start()
    try:
        sid = trio.run(_mcp_client_session, server, keys)
        assert not has_session(server.storage_dir, sid)  # its owner's DELETE worked
    finally:
        code, _, err = server.stop()
    assert code == 0, err


async def _mcp_client_session(server: ServerProcess, keys: Keys) -> str:
    """Connect the official client with Alice's token, call a tool across two restarts, and
    check Bob's token against the same id in between; return the session id."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    sent: list[str | None] = []

    async def record(request: httpx2.Request) -> None:
        if request.method == "POST":
            sent.append(request.headers.get("mcp-session-id"))

    async def bob_gets_404() -> None:
        async with httpx.AsyncClient(timeout=10) as raw:
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
            headers = {**RPC, "mcp-session-id": str(sent[-1]), **bearer(keys.token("bob"))}
            assert (await raw.post(server.url, json=body, headers=headers)).status_code == 404

    async with (
        httpx2.AsyncClient(
            headers=bearer(keys.token()), timeout=30, event_hooks={"request": [record]}
        ) as http,
        Client(streamable_http_client(server.url, http_client=http), mode="legacy") as client,
    ):

        async def count(args: dict[str, Any] | None = None) -> Any:
            return (await client.call_tool("count", args)).structured_content

        assert await count({"by": 2}) == {"count": 2}
        session_id = sent[-1]
        assert session_id is not None
        await bob_gets_404()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            await trio.to_thread.run_sync(server.restart, sig)
            await bob_gets_404()
            await count()
        assert await count() == {"count": 5}  # the same session all along
        assert sent[0] is None and set(sent[1:]) == {session_id}
    return session_id


def test_token_command_and_serve_are_the_two_command_trial(tmp_path: Path) -> None:
    """``python -m engine token`` prints a token on stdout and the serve command on stderr;
    the server that command starts accepts the token (and another of the same key pair for
    another subject, which does not reach the first one's session), and nothing else. (The
    default audience is port 8080; the test names a free port instead.)"""
    port = _free_port()
    audience = f"http://127.0.0.1:{port}/mcp"

    def token(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "engine", "token", "--audience", audience, *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

    made = token()
    alice = made.stdout.strip()
    command = next(
        line.split("python -m engine serve", 1)[1].split()
        for line in made.stderr.splitlines()
        if "python -m engine serve" in line
    )
    assert command == [
        "--auth-jwt-keys",
        "engine-auth/jwks.json",
        "--auth-issuer",
        "engine-local",
        "--auth-audience",
        audience,
    ]
    assert (tmp_path / "engine-auth").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "engine-auth" / "private.pem").stat().st_mode & 0o777 == 0o600
    server = ServerProcess(tmp_path / "sessions", *command, cwd=tmp_path)
    server.port = port
    server.start()
    try:
        bob = token("--subject", "bob").stdout.strip()
        with httpx.Client(timeout=10) as client:
            r = client.post(
                server.url, json=initialize_body(), headers={**HEADERS, **bearer(alice)}
            )
            assert r.status_code == 200, r.text
            headers = {**RPC, "mcp-session-id": r.headers["mcp-session-id"]}
            ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}

            def status(extra: dict[str, str]) -> int:
                return client.post(server.url, json=ping, headers={**headers, **extra}).status_code

            assert (status(bearer(alice)), status(bearer(bob)), status({})) == (200, 404, 401)
    finally:
        server.close()


def test_static_token_command(tmp_path: Path) -> None:
    made = subprocess.run(
        [sys.executable, "-m", "engine", "token", "--static", "--subject", "carol"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = made.stdout.strip()
    path = tmp_path / "engine-auth" / "tokens.toml"
    assert token not in path.read_text()
    assert hashlib.sha256(token.encode()).hexdigest() in path.read_text()
    auth = Authenticator(ServerConfig(auth_token_file=path, auth_resource=AUDIENCE))
    principal = auth.authenticate(f"Bearer {token}".encode())
    assert principal is not None and principal.subject == "carol"
    assert "--auth-token-file engine-auth/tokens.toml" in made.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_the_debug_log_names_principals_by_fingerprint_only(tmp_path: Path, keys: Keys) -> None:
    server = _auth_server(tmp_path, keys, "--log-level", "debug")
    server.start()
    try:
        with httpx.Client(timeout=10) as client:
            r = client.post(
                server.url, json=initialize_body(), headers={**HEADERS, **bearer(keys.token())}
            )
            assert r.status_code == 200
    finally:
        code, _, err = server.stop()
    assert code == 0, err
    lines = [line for line in err.splitlines() if "POST /mcp initialize -> 200" in line]
    authenticator = Authenticator(
        ServerConfig(auth_jwt_keys=keys.jwks, auth_issuer=ISSUER, auth_resource=AUDIENCE)
    )
    principal = authenticator.authenticate(f"Bearer {keys.token()}".encode())
    assert principal is not None
    assert len(lines) == 1 and lines[0].endswith(f" owner {principal.fingerprint()}")
    assert "alice" not in err and ISSUER not in err


async def test_anonymous_initialize_stays_rate_limited_per_address(
    tmp_path: Path, keys: Keys
) -> None:
    """With authentication on and anonymous access allowed, anonymous ``initialize`` requests
    from one address are still limited to the burst (then 429 with Retry-After), and nothing
    is stored for the refused ones."""
    settings = {
        "auth_jwt_keys": keys.jwks,
        "auth_issuer": ISSUER,
        "auth_anonymous": True,
        "new_session_burst": 3,
        "new_session_rate": 0.001,
    }
    async with app_client(tmp_path, **settings) as (client, engine):
        statuses = []
        for _ in range(6):
            r = await client.post("/mcp", json=initialize_body(), headers=HEADERS)
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
                assert "mcp-session-id" not in r.headers
        assert statuses == [200, 200, 200, 429, 429, 429]
        assert engine.statistics().live_sessions == 3

"""Tests of the agentkeys HTTP API against the real server, using only docs/api.md."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from agentkeys_client import (  # noqa: E402
    ApiError, Client, VerifyError, audit_row_hash, b64d, b64e, otp, shielding_signed_bytes,
    verify_sig,
)

SERVER_BIN = os.environ.get(
    "AGENTKEYS_SERVER_BIN",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../target/debug/agentkeys-server"),
)
CANARY = "zqx-canary-7f3e"


@contextlib.contextmanager
def server(tmp_path, *flags):
    """The real binary, `--dev` on a free loopback port, its throwaway data dir under tmp_path."""
    for _ in range(12):  # the binary may be mid-rebuild: wait for it
        if os.access(SERVER_BIN, os.X_OK):
            break
        time.sleep(10)
    env = dict(os.environ, TMPDIR=str(tmp_path), XDG_DATA_HOME=str(tmp_path), HOME=str(tmp_path))
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([SERVER_BIN, "--dev", "--listen", "127.0.0.1:0", *flags], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=log, text=True)
    while True:
        line = proc.stdout.readline()
        if line.startswith("export AGENTKEYS_SERVER="):
            break
        if not line and proc.poll() is not None:
            raise RuntimeError("server did not start: " + (tmp_path / "server.log").read_text())
    try:
        yield line.strip().split("=", 1)[1]
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def url(tmp_path):
    with server(tmp_path) as base:
        yield base


def master(url, token="enrol-token-a"):
    c = Client(url)
    c.server_info()
    c.enrol(token)
    return c


def pair_agent(url, m: Client, services=("openai",), read_only=True) -> Client:
    req = Client(url, signing_key=b64e(m.signing_key))
    pending = req.open_request("pair", parent=m.wallet, description="test agent")
    m.approve_by_code(pending.pair_code, pending.otp, {"services": list(services), "read_only": read_only})
    return req.await_session(pending, wait=5)


def expect_error(code, fn, *a, **kw) -> ApiError:
    with pytest.raises(ApiError) as ei:
        fn(*a, **kw)
    e = ei.value
    assert e.code == code, e
    assert isinstance(e.message, str) and e.message and isinstance(e.hint, str) and e.hint, e.body
    return e


# --- pure computations -----------------------------------------------------------------

def test_otp_worked_examples():
    nonce = bytes(range(0xA0, 0xB0))
    key = bytes(range(0x01, 0x21))
    assert nonce == b64d("oKGio6SlpqeoqaqrrK2urw==") and key == b64d("AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=")
    w = "0x" + "1" * 40
    assert otp("pair", nonce, key, "") == "765779"
    assert otp("recover", nonce, key, f"{w}/research-bot") == "183202"
    assert otp("high_value", nonce, b"", f"{w}/openai") == "248696"


# --- server info and enrolment ---------------------------------------------------------

def test_server_info_pin_and_signature(url):
    info = Client(url).server_info()
    assert info["hpke_suite"] and len(b64d(info["shielding_public_key"])) == 32
    Client(url, signing_key=info["signing_public_key"]).server_info()  # pinned out of band: accepted
    with pytest.raises(VerifyError):
        Client(url, signing_key=b64e(bytes(32 * [9]))).server_info()
    sig = bytearray(b64d(info["shielding_key_signature"]))
    sig[0] ^= 1  # a shielding key whose signature does not verify is refused
    with pytest.raises(VerifyError):
        verify_sig(b64d(info["signing_public_key"]), bytes(sig), shielding_signed_bytes(b64d(info["shielding_public_key"])), "")
    assert Client(url).health()["status"] == "ok"


def test_enrolment_is_stable(url):
    a, a2, b = master(url, "tok-a"), master(url, "tok-a"), master(url, "tok-b")
    assert a.wallet == a2.wallet != b.wallet
    assert a.token.startswith("akm_") and len(a.token) == 4 + 43
    s = a.session()
    assert s["kind"] == "master" and s["scope"] == {"services": ["*"], "read_only": False}
    assert a.token not in json.dumps(s)
    expect_error("UNAUTHORIZED", Client(url, token="akm_" + "A" * 43).session)
    expect_error("UNAUTHORIZED", Client(url).session)


# --- pair flow --------------------------------------------------------------------------

def test_pair_flow_end_to_end(url):
    m = master(url)
    req = Client(url, signing_key=b64e(m.signing_key))
    pending = req.open_request("pair", parent=m.wallet, description="laptop")
    assert len(pending.pair_code.replace("-", "")) == 8
    assert req.decision(pending.id, 0)["status"] == "pending"
    result = {}
    t = threading.Thread(target=lambda: result.update(agent=req.await_session(pending, wait=30)))
    t.start()  # long-poll while the master decides
    time.sleep(0.3)
    view = m.by_code(pending.pair_code.replace("-", "").lower())  # case-insensitive, dash optional
    assert view["kind"] == "pair" and view["status"] == "pending" and view["otp"] == pending.otp
    assert view.get("requested_by") == m.wallet and view.get("description") == "laptop"
    ans = m.approve(view["id"], {"services": ["openai"], "read_only": True})
    assert ans["status"] == "approved" and ans["agent"].startswith("0x")
    t.join(40)
    agent = result["agent"]
    assert agent.token.startswith("aka_")
    s = agent.session()
    assert s["wallet"] == ans["agent"] and s["kind"] == "agent" and s["parent"] == m.wallet
    assert s["scope"] == {"services": ["openai"], "read_only": True}
    # an approved pair decision is served again, signed, to every poll
    again = req.decision(pending.id, 0)
    assert again["status"] == "approved"
    req.verify_decision(again)
    expect_error("ALREADY_CONSUMED", m.approve, view["id"])
    assert [a["wallet"] for a in m.agents()] == [s["wallet"]]


def test_pair_deny_is_signed(url):
    m = master(url)
    req = Client(url, signing_key=b64e(m.signing_key))
    pending = req.open_request("pair")  # addressed to no master: every master sees it
    assert m.deny(m.by_code(pending.pair_code)["id"]) == {"id": pending.id, "status": "denied", "agent": None}
    dec = req.decision(pending.id, 5)
    assert dec["status"] == "denied" and not dec.get("sealed_session")
    assert req.verify_decision(dec) == b""
    with pytest.raises(VerifyError):
        req.await_session(pending, wait=1)
    with pytest.raises(VerifyError):
        req.verify_decision(dict(dec, status="approved"))
    # addressed to a wallet that is no master: answered alike, and shows to no other master
    other = req.open_request("pair", parent="0x" + "4" * 40)
    assert set(other.ticket) == {"id", "pair_code", "otp", "nonce", "expires_at"}
    expect_error("NOT_FOUND", m.by_code, other.pair_code)


def test_pair_expires(tmp_path):
    with server(tmp_path, "--pair-ttl", "1s") as url:
        m = master(url)
        req = Client(url, signing_key=b64e(m.signing_key))
        pending = req.open_request("pair")
        assert req.decision(pending.id, 5)["status"] == "expired"  # the long-poll ends at the deadline
        assert m.by_code(pending.pair_code)["status"] == "expired"
        assert expect_error("EXPIRED", m.approve, pending.id).status == 410


# --- credentials ------------------------------------------------------------------------

def test_store_read_round_trip_and_tamper(url):
    m = master(url)
    status, meta = m.store("openai", b"sk-live-123")
    assert status == 201 and meta["agent"] == m.wallet and meta["service"] == "openai"
    assert m.store("openai", b"sk-live-456")[0] == 200  # replaced
    assert m.read("openai") == b"sk-live-456"
    assert [c["service"] for c in m.list()] == ["openai"] and "sealed_value" not in m.list()[0]
    for field in ("sealed_value", "signature"):
        ans, sk = m.read_raw("openai")
        raw = bytearray(b64d(ans[field]))
        raw[len(raw) // 2] ^= 0x01
        with pytest.raises(VerifyError):
            m.open_read(dict(ans, **{field: b64e(bytes(raw))}), sk, "openai")
    ans, sk = m.read_raw("openai")
    with pytest.raises(VerifyError):  # a different owner changes the aad, so the signature
        m.open_read(dict(ans, agent="0x" + "2" * 40), sk, "openai")
    with pytest.raises(VerifyError):  # a policy flipped in transit is caught too
        m.open_read(dict(ans, policy={"high_value": True}), sk, "openai")
    assert m.open_read(ans, sk, "openai") == b"sk-live-456"
    expect_error("NOT_FOUND", m.read, "stripe")


def test_a_binding_is_signed_with_the_value(url):
    m = master(url)
    binding = {"hosts": ["api.example.com"], "paths": ["/v1/"], "inject": {"kind": "header", "name": "x-api-key"}}
    status, meta = m.store("bound", b"sk-bound-1", binding=binding)
    assert status == 201 and meta["binding"] == binding
    ans, sk = m.read_raw("bound")
    assert json.loads(ans["binding"]) == binding  # a string: the exact signed text
    assert m.open_read(ans, sk, "bound") == b"sk-bound-1"
    wider = json.dumps(dict(binding, hosts=["api.example.com", "evil.example.org"]), separators=(",", ":"))
    for tampered in (dict(ans, binding=wider), {k: v for k, v in ans.items() if k != "binding"}):
        with pytest.raises(VerifyError):
            m.open_read(tampered, sk, "bound")
    assert "binding" not in m.set_binding(m.wallet, "bound", None)
    ans, sk = m.read_raw("bound")
    assert "binding" not in ans and m.open_read(ans, sk, "bound") == b"sk-bound-1"
    expect_error("BAD_REQUEST", m.set_binding, m.wallet, "bound", {"hosts": ["*"], "inject": {"kind": "bearer"}})


def test_a_substitute_binding_names_its_places_and_retired_forms_are_refused(url):
    m = master(url)
    m.store("sub", b"sk-sub-1")
    named = {"hosts": ["api.example.com"], "methods": ["POST"],
             "inject": {"kind": "substitute", "headers": ["x-api-key"],
                        "body_fields": [{"json": "/auth/api_key"}, {"form": "api_key"}]},
             "tunnel_unbound": True}
    assert m.set_binding(m.wallet, "sub", named)["binding"] == named
    ans, sk = m.read_raw("sub")
    # The canonical text: fields in the documented order, empty and false ones left out.
    assert ans["binding"] == json.dumps(named, separators=(",", ":"))
    assert m.open_read(ans, sk, "sub") == b"sk-sub-1"
    for retired in ({"kind": "substitute"}, {"kind": "substitute", "query": True},
                    {"kind": "substitute", "headers": ["x-api-key"], "body": True},
                    {"kind": "substitute", "headers": []}):
        e = expect_error("BAD_REQUEST", m.set_binding, m.wallet, "sub",
                         {"hosts": ["api.example.com"], "inject": retired})
        assert "binding" in e.message
    expect_error("BAD_REQUEST", m.set_binding, m.wallet, "sub",
                 {"hosts": ["api.example.com"], "inject": {"kind": "bearer"}, "tunnel_unbound": True})
    expect_error("BAD_REQUEST", m.set_binding, m.wallet, "sub",
                 {"hosts": ["api.example.com"], "inject": {"kind": "substitute", "body_fields": [{"json": "key"}],
                                                          "headers": []}})


def test_agent_scope_enforced(url):
    m = master(url)
    m.store("openai", b"o")
    m.store("stripe", b"s")
    agent = pair_agent(url, m, ["openai"], read_only=True)
    assert agent.read("openai") == b"o"  # the master's credential, seen under the agent's own
    assert [c["service"] for c in agent.list()] == ["openai"]
    assert expect_error("DENIED", agent.read, "stripe").status == 403
    expect_error("DENIED", agent.store, "openai", b"x")  # read-only
    assert m.scope(agent.wallet) == {"services": ["openai"], "read_only": True}
    m.set_scope(agent.wallet, ["openai", "stripe"], False)  # applies to live sessions at once
    assert agent.read("stripe") == b"s"
    assert agent.store("stripe", b"mine")[0] == 201  # its own now shadows the master's
    assert agent.read("stripe") == b"mine" and m.read("stripe") == b"s"
    m.store("stripe", b"from-master", agent=agent.wallet)  # the aad names the agent as owner
    assert agent.read("stripe") == b"from-master" == m.read("stripe", agent=agent.wallet)
    assert agent.list(agent=agent.wallet)[0]["agent"] == agent.wallet
    expect_error("DENIED", agent.read, "openai", agent=m.wallet)  # an agent names only itself
    expect_error("DENIED", agent.agents)  # not a master
    m.set_policy(agent.wallet, "stripe", True)
    assert m.list(agent=agent.wallet)[0]["policy"] == {"high_value": True}
    assert m.delete_agent(agent.wallet) == {"revoked_sessions": 1, "deleted_credentials": 1}
    expect_error("UNAUTHORIZED", agent.session)


def test_high_value_one_release_per_approval(url):
    m = master(url)
    m.store("openai", b"hv-secret", high_value=True)
    agent = pair_agent(url, m, ["openai"])
    for _ in range(2):
        ar = expect_error("APPROVAL_REQUIRED", agent.read, "openai").error["auth_request"]
        assert set(ar) >= {"id", "pair_code", "otp", "nonce", "expires_at"}
        assert otp("high_value", b64d(ar["nonce"]), b"", f"{m.wallet}/openai") == ar["otp"]
        again = expect_error("APPROVAL_REQUIRED", agent.read, "openai").error["auth_request"]
        assert again["id"] == ar["id"]  # pending: the same request
        view = m.by_code(ar["pair_code"])
        assert view["kind"] == "high_value" and view["otp"] == ar["otp"] and view["service"] == "openai"
        assert view["agent"] == m.wallet and view["requested_by"] == agent.wallet
        assert m.approve(view["id"])["status"] == "approved"
        dec = agent.decision(ar["id"], 0)
        assert dec["status"] == "approved" and agent.verify_decision(dec) == b""
        expect_error("BAD_REQUEST", agent.request, "POST", "/v1/credentials/read",
                     {"service": "openai", "recipient_public_key": b64e(bytes(32))})  # not a usable key
        assert agent.read("openai") == b"hv-secret"  # ...did not spend the grant: exactly one release
        assert m.by_code(ar["pair_code"])["status"] == "consumed"
    # the master's own read needs an approval too; it may open the request ahead of time
    ahead = m.open_high_value("openai")
    assert otp("high_value", b64d(ahead["nonce"]), b"", f"{m.wallet}/openai") == ahead["otp"]
    assert expect_error("APPROVAL_REQUIRED", m.read, "openai").error["auth_request"]["id"] == ahead["id"]


# --- audit ------------------------------------------------------------------------------

def test_audit_chain_recomputed(url):
    m = master(url)
    m.store("openai", b"x")
    m.read("openai")
    agent = pair_agent(url, m)
    agent.read("openai")
    expect_error("DENIED", agent.read, "stripe")
    rows = m.audit(limit=1000)  # the client recomputes every row's hash
    assert [r["seq"] for r in rows] == sorted((r["seq"] for r in rows), reverse=True)
    for newer, older in zip(rows, rows[1:]):
        if newer["seq"] == older["seq"] + 1:
            assert newer["prev_hash"] == older["hash"]
    assert rows[-1]["seq"] != 1 or rows[-1]["prev_hash"] == "0" * 64
    acts = {(r["action"], r["outcome"]) for r in rows}
    assert {("credential.store", "ok"), ("credential.read", "ok"), ("credential.read", "DENIED")} <= acts
    assert all(audit_row_hash(r) == r["hash"] for r in rows)
    assert audit_row_hash(dict(rows[0], detail="forged")) != rows[0]["hash"]
    v = m.audit_verify()
    assert v["ok"] is True and v["checked"] == len(rows) and v["head_hash"] == rows[0]["hash"]
    mine = agent.audit()
    assert mine and all(agent.wallet in (r["actor"], r.get("agent")) for r in mine)
    assert agent.audit(action="credential.read", limit=1)[0]["action"] == "credential.read"
    expect_error("DENIED", agent.audit_verify)
    out = m.anchor(7, "ab" * 32)
    row = m.audit(action="trail.anchor")[0]
    assert row["seq"] == out["audit_seq"] and row["detail"] == f"seq=7 hash={'ab' * 32}"


def test_audit_limit_range(url):
    """docs: `limit` 1..1000 (default 100). The document does not say whether values outside are refused
    or clamped; read as refused (BAD_REQUEST, like every other invalid query value)."""
    m = master(url)
    m.store("openai", b"x")
    assert len(m.audit(limit=1)) == 1
    expect_error("BAD_REQUEST", m.audit, limit=0)
    expect_error("BAD_REQUEST", m.audit, limit=1001)


# --- error contract ---------------------------------------------------------------------

def test_error_contract(url):
    m = master(url)
    m.store("openai", b"x")
    sealed = b64e(b"\0" * 64)
    cases = [  # (method, path, body or raw bytes, query, expected code, expected http)
        ("POST", "/v1/credentials", {"service": "openai", "sealed_value": sealed, CANARY: 1}, None, "BAD_REQUEST", 400),
        ("POST", "/v1/credentials", {"service": "openai", "sealed_value": sealed, "policy": {"high_value": CANARY}},
         None, "BAD_REQUEST", 400),
        ("POST", "/v1/credentials", {"service": "openai", "sealed_value": CANARY}, None, "BAD_REQUEST", 400),
        ("POST", "/v1/credentials/read", {"service": "openai", "recipient_public_key": CANARY}, None, "BAD_REQUEST", 400),
        ("POST", "/v1/identities", {"wallet": m.wallet, "alias": CANARY + " !"}, None, "BAD_REQUEST", 400),
        ("POST", "/v1/identities", {"wallet": m.wallet, "email": CANARY}, None, "BAD_REQUEST", 400),
        ("POST", "/v1/auth-requests", {"kind": CANARY}, None, "BAD_REQUEST", 400),
        ("GET", "/v1/credentials", None, {CANARY: "1"}, "BAD_REQUEST", 400),
        ("GET", "/v1/audit", None, {"action": "credential.read", "x" + CANARY: CANARY}, "BAD_REQUEST", 400),
        ("GET", "/v1/audit", None, {"limit": CANARY}, "BAD_REQUEST", 400),
        ("GET", "/v1/identities/resolve", None, {"alias": "ghost-" + CANARY}, "NOT_FOUND", 404),
        ("POST", "/v1/credentials", b'{"service": "openai", ' + CANARY.encode(), None, "BAD_REQUEST", 400),
        ("POST", "/v1/credentials", b'{"service":"' + b"a" * (65 * 1024) + b'"}', None, "BAD_REQUEST", 413),
        ("DELETE", "/v1/session", None, None, "BAD_REQUEST", 405),
        ("GET", "/v1/credentials/read", None, None, "BAD_REQUEST", 405),
    ]
    for method, path, body, query, code, http in cases:
        raw = body if isinstance(body, bytes) else None
        e = expect_error(code, m.request, method, path, None if raw else body, query=query, raw=raw)
        assert e.status == http, (path, e)
        assert CANARY not in json.dumps(e.body), (path, e.body)
        assert set(e.error) <= {"code", "message", "hint", "auth_request", "retry_after_ms"}
    e = expect_error("UNAUTHORIZED", Client(url, token="aka_" + CANARY).list)
    assert CANARY not in json.dumps(e.body)
    # the documented subject of the call may be echoed
    assert "stripe" in expect_error("NOT_FOUND", m.read, "stripe").message


def test_rate_limited_retry_after(tmp_path):
    with server(tmp_path, "--read-rate", "1", "--read-burst", "1") as url:
        m = master(url)
        m.store("openai", b"x")
        m.read("openai")
        e = expect_error("RATE_LIMITED", m.read, "openai")
        assert e.status == 429
        ms = e.error["retry_after_ms"]
        assert isinstance(ms, int) and 0 < ms <= 1000
        assert int(e.headers["Retry-After"]) >= 1 and int(e.headers["Retry-After"]) * 1000 >= ms
        time.sleep(ms / 1000 + 0.05)
        assert m.read("openai") == b"x"


# --- identities, recover, revoke ---------------------------------------------------------

def test_identities_per_master(url):
    a, b = master(url, "tok-a"), master(url, "tok-b")
    agent_a, agent_b = pair_agent(url, a), pair_agent(url, b)
    assert a.link(agent_a.wallet, alias="Research-Bot") == {"kind": "alias", "value": "research-bot",
                                                            "wallet": agent_a.wallet}
    assert b.link(agent_b.wallet, alias="research-bot")["wallet"] == agent_b.wallet  # no conflict across masters
    assert a.resolve(alias="research-bot")["wallet"] == agent_a.wallet
    assert b.resolve(alias=" RESEARCH-BOT ")["wallet"] == agent_b.wallet
    e = expect_error("CONFLICT", a.link, a.wallet, alias="research-bot")
    assert "research-bot" not in e.message
    assert a.link(agent_a.wallet, email="Ops@Example.org")["value"] == "ops@example.org"
    expect_error("NOT_FOUND", b.resolve, email="ops@example.org")
    expect_error("DENIED", b.link, agent_a.wallet, alias="stolen")  # not b's agent
    expect_error("DENIED", agent_a.resolve, alias="research-bot")
    assert [x["identities"] for x in a.agents()] and a.agents()[0]["identities"]


def test_recover_by_alias_with_parent(url):
    m = master(url)
    old = pair_agent(url, m, ["openai"])
    m.store("openai", b"o")
    m.link(old.wallet, alias="research-bot")
    req = Client(url, signing_key=b64e(m.signing_key))
    # the requester's own OTP uses `<parent>/<identity trimmed, lower-cased>`
    pending = req.open_request("recover", identity="  Research-Bot ", parent=m.wallet)
    view = m.by_code(pending.pair_code)
    assert view["kind"] == "recover" and view["agent"] == old.wallet and view["otp"] == pending.otp
    m.approve(view["id"])
    new = req.await_session(pending, wait=5)
    assert new.session()["wallet"] == old.wallet and new.token != old.token
    assert new.read("openai") == b"o"
    expect_error("UNAUTHORIZED", old.session)  # approving ends the agent's other sessions
    expect_error("BAD_REQUEST", req.open_request, "recover", identity="research-bot")  # alias needs parent
    # a request that names no agent is opened all the same and shows to no master
    for ident, parent in (("nobody", m.wallet), (m.wallet, None), ("0x" + "3" * 40, None)):
        lost = req.open_request("recover", identity=ident, parent=parent)
        expect_error("NOT_FOUND", m.by_code, lost.pair_code)
    expect_error("BAD_REQUEST", req.open_request, "pair", identity="research-bot")


def test_revoke(url):
    m = master(url)
    a1, a2 = pair_agent(url, m), pair_agent(url, m)
    assert m.revoke(wallet=a1.wallet)["revoked"] == 1
    expect_error("UNAUTHORIZED", a1.session)
    expect_error("DENIED", a2.revoke, wallet=m.wallet)
    assert a2.revoke(session_id=a2.session()["session_id"])["revoked"] == 1
    expect_error("UNAUTHORIZED", a2.session)
    other = master(url, "tok-other")
    expect_error("DENIED", other.revoke, wallet=a2.wallet)  # not the owner
    assert m.revoke()["revoked"] == 1
    expect_error("UNAUTHORIZED", m.session)

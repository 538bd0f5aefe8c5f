"""Independent agentkeys HTTP API v1 client, written from docs/api.md alone.

Every formula here cites the section of docs/api.md it comes from.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
import urllib.error
import urllib.parse
import urllib.request

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey

SUITE = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.CHACHA20_POLY1305)


class ApiError(Exception):
    """An error answer: `{"error": {code, message, hint, ...}}` (docs/api.md "Errors")."""

    def __init__(self, status: int, body: dict, headers):
        self.status, self.body, self.headers, self.error = status, body, headers, body.get("error") or {}
        self.code, self.message, self.hint = (self.error.get(k) for k in ("code", "message", "hint"))
        super().__init__(f"{status} {self.code}: {self.message} ({self.hint})")


class VerifyError(Exception):
    """A signature, OTP or pin check failed: the client refuses the answer."""


# --- encoding (docs/api.md "Crypto on the wire") -------------------------------------

def b64e(b: bytes) -> str:
    return base64.b64encode(b).decode()


def b64d(s: str) -> bytes:
    return base64.b64decode(s, validate=True)


def lp(x: bytes) -> bytes:
    """⟨x⟩ = u64be(len(x)) ‖ x"""
    return struct.pack(">Q", len(x)) + x


def shielding_signed_bytes(shielding_pk: bytes) -> bytes:
    return b"agentkeys-shielding-key-v1\0" + lp(shielding_pk)


def read_signed_bytes(recipient_pk: bytes, aad: bytes, sealed: bytes, high_value: bool, binding: str | None = None) -> bytes:
    parts = lp(recipient_pk) + lp(aad) + lp(sealed) + lp(bytes([1 if high_value else 0]))
    if binding is None:
        return b"agentkeys-read-v1\0" + parts
    return b"agentkeys-read-v2\0" + parts + lp(binding.encode("utf-8"))


def decision_signed_bytes(req_id: str, status: str, sealed_session: bytes) -> bytes:
    return b"agentkeys-decision-v1\0" + lp(req_id.encode()) + lp(status.encode()) + lp(sealed_session)


def credential_aad(owner_wallet: str, service: str) -> bytes:
    return owner_wallet.encode("ascii") + b"\x00" + service.encode("ascii")


def otp(kind: str, nonce: bytes, requester_pk: bytes, subject: str) -> str:
    """docs/api.md "OTP": HOTP-style truncation of an HMAC keyed by the ticket nonce."""
    canonical = lp(kind.encode()) + lp(requester_pk) + lp(subject.encode())
    mac = hmac.new(nonce, b"agentkeys-otp-v1\0" + canonical, hashlib.sha256).digest()
    off = mac[31] & 0x0F
    return "%06d" % ((struct.unpack(">I", mac[off:off + 4])[0] & 0x7FFFFFFF) % 10**6)


def audit_row_hash(row: dict) -> str:
    """docs/api.md "Audit" / The chain, recomputed from the row alone."""

    def f(x):
        if x is None:
            return b"\x00"
        b = x.encode("utf-8")
        return b"\x01" + struct.pack(">Q", len(b)) + b

    data = (b"agentkeys-audit-v1\0" + bytes.fromhex(row["prev_hash"]) + struct.pack(">QQ", row["seq"], row["ts"])
            + b"".join(f(row.get(k)) for k in ("actor", "agent", "service", "action", "outcome", "detail")))
    return hashlib.sha256(data).hexdigest()


def verify_sig(signing_pk: bytes, sig: bytes, msg: bytes, what: str) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(signing_pk).verify(sig, msg)
    except (InvalidSignature, ValueError) as e:
        raise VerifyError(f"{what}: bad signature") from e


# --- HPKE (docs/api.md "HPKE") ----------------------------------------------------------

def hpke_seal(recipient_pk: bytes, info: bytes, aad: bytes, pt: bytes) -> bytes:
    pkr = KEMKey.from_pyca_cryptography_key(X25519PublicKey.from_public_bytes(recipient_pk))
    enc, ctx = SUITE.create_sender_context(pkr, info=info)
    return enc + ctx.seal(pt, aad=aad)  # enc (32) ‖ ciphertext ‖ tag (16)


def hpke_open(sk: X25519PrivateKey, info: bytes, aad: bytes, sealed: bytes) -> bytes:
    skr = KEMKey.from_pyca_cryptography_key(sk)
    try:
        return SUITE.create_recipient_context(sealed[:32], skr, info=info).open(sealed[32:], aad=aad)
    except Exception as e:  # pyhpke raises OpenError, or ValueError on a malformed enc
        raise VerifyError("sealed value does not open") from e


def x25519_keypair() -> tuple[X25519PrivateKey, bytes]:
    sk = X25519PrivateKey.generate()
    return sk, sk.public_key().public_bytes_raw()


def with_optional(body: dict, **optional) -> dict:
    """Optional fields may be null or absent (docs/api.md "Conventions"): this client leaves them out."""
    return {**body, **{k: v for k, v in optional.items() if v is not None}}


# --- the client -------------------------------------------------------------------------

class Client:
    def __init__(self, base_url: str, token: str | None = None, signing_key: str | None = None):
        self.base = base_url.rstrip("/")
        self.token = token
        self.signing_key = b64d(signing_key) if signing_key else None  # pinned root of trust
        self.shielding_key: bytes | None = None
        self.session_info: dict | None = None

    # transport
    def request(self, method: str, path: str, body=None, query: dict | None = None, raw: bytes | None = None,
                auth: bool = True):
        url = self.base + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth and self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=90) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            text = e.read()
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = {"error": {}, "_raw": text.decode("utf-8", "replace")}
            raise ApiError(e.code, parsed, e.headers) from None

    # server identity
    def server_info(self) -> dict:
        info = self.request("GET", "/v1/server-info", auth=False)[1]
        signing = b64d(info["signing_public_key"])
        if self.signing_key is None:
            self.signing_key = signing  # trust on first use; pass signing_key= to pin out of band
        elif not hmac.compare_digest(signing, self.signing_key):
            raise VerifyError("server signing key differs from the pinned one")
        shielding = b64d(info["shielding_public_key"])
        verify_sig(self.signing_key, b64d(info["shielding_key_signature"]), shielding_signed_bytes(shielding),
                   "shielding key")
        self.shielding_key = shielding
        return info

    def health(self) -> dict:
        return self.request("GET", "/v1/health", auth=False)[1]

    # sessions
    def enrol(self, auth_token: str) -> dict:
        ans = self.request("POST", "/v1/sessions", {"auth_token": auth_token}, auth=False)[1]
        self.token, self.session_info = ans["token"], ans["session"]
        return ans

    def session(self) -> dict:
        return self.request("GET", "/v1/session")[1]

    wallet = property(lambda self: self.session_info["wallet"])

    def revoke(self, session_id: str | None = None, wallet: str | None = None) -> dict:
        body = {"session_id": session_id} if session_id else {"wallet": wallet} if wallet else {}
        return self.request("POST", "/v1/sessions/revoke", body)[1]

    # credentials
    def store(self, service: str, secret: bytes, agent: str | None = None, high_value: bool | None = None,
              binding: dict | None = None):
        if self.shielding_key is None:
            self.server_info()  # verifies the shielding key before sealing anything to it
        owner = agent or self.wallet
        sealed = hpke_seal(self.shielding_key, b"agentkeys store v1", credential_aad(owner, service), secret)
        policy = None if high_value is None else {"high_value": high_value}
        body = with_optional({"service": service, "sealed_value": b64e(sealed)}, agent=agent, policy=policy,
                             binding=binding)
        return self.request("POST", "/v1/credentials", body)  # (201 new / 200 replaced, metadata)

    def read_raw(self, service: str, agent: str | None = None):
        sk, pk = x25519_keypair()  # a fresh key per read
        body = with_optional({"service": service, "recipient_public_key": b64e(pk)}, agent=agent)
        return self.request("POST", "/v1/credentials/read", body)[1], sk

    def open_read(self, ans: dict, sk: X25519PrivateKey, service: str, agent: str | None = None) -> bytes:
        # without `agent`: our own credential, or (for an agent) its master's
        owners = {agent} if agent else {self.wallet, (self.session_info or {}).get("parent")} - {None}
        if ans["service"] != service or ans["agent"] not in owners:
            raise VerifyError("read answer is for another credential")
        pk = sk.public_key().public_bytes_raw()
        aad = credential_aad(ans["agent"], ans["service"])
        sealed = b64d(ans["sealed_value"])
        high = bool((ans.get("policy") or {}).get("high_value"))
        signed = read_signed_bytes(pk, aad, sealed, high, ans.get("binding"))
        verify_sig(self.signing_key, b64d(ans["signature"]), signed, "read answer")
        return hpke_open(sk, b"agentkeys read v1", aad, sealed)

    def read(self, service: str, agent: str | None = None) -> bytes:
        if self.signing_key is None:
            self.server_info()
        ans, sk = self.read_raw(service, agent)
        return self.open_read(ans, sk, service, agent)

    def list(self, agent: str | None = None) -> list:
        return self.request("GET", "/v1/credentials", query={"agent": agent})[1]["credentials"]

    def set_binding(self, agent: str, service: str, binding: dict | None) -> dict:
        return self.request("PUT", f"/v1/credentials/{agent}/{service}/binding", {"binding": binding})[1]

    def set_policy(self, agent: str, service: str, high_value: bool) -> dict:
        return self.request("PUT", f"/v1/credentials/{agent}/{service}/policy", {"high_value": high_value})[1]

    # agents
    def agents(self) -> list:
        return self.request("GET", "/v1/agents")[1]["agents"]

    def scope(self, wallet: str) -> dict:
        return self.request("GET", f"/v1/agents/{wallet}/scope")[1]

    def set_scope(self, wallet: str, services: list, read_only: bool) -> dict:
        return self.request("PUT", f"/v1/agents/{wallet}/scope", {"services": services, "read_only": read_only})[1]

    def delete_agent(self, wallet: str) -> dict:
        return self.request("DELETE", f"/v1/agents/{wallet}")[1]

    # pair / recover, as the requester
    def open_request(self, kind: str, parent: str | None = None, identity: str | None = None,
                     description: str | None = None) -> "Pending":
        sk, pk = x25519_keypair()
        body = with_optional({"kind": kind, "requester_public_key": b64e(pk)}, parent=parent, identity=identity,
                             description=description)
        ticket = self.request("POST", "/v1/auth-requests", body, auth=False)[1]
        if kind == "pair":
            subject = parent or ""
        else:
            subject = identity.strip().lower()
            subject = f"{parent}/{subject}" if parent else subject
        mine = otp(kind, b64d(ticket["nonce"]), pk, subject)
        if not hmac.compare_digest(mine, ticket["otp"]):
            raise VerifyError("server OTP differs from ours: the key may have been swapped")
        return Pending(ticket, sk, mine)

    def decision(self, req_id: str, wait: int = 0) -> dict:
        return self.request("GET", f"/v1/auth-requests/{req_id}/decision", query={"wait": wait}, auth=False)[1]

    def verify_decision(self, dec: dict) -> bytes:
        """Checks a final decision's signature; returns the raw sealed session (or b'')."""
        sealed = b64d(dec["sealed_session"]) if dec.get("sealed_session") else b""
        if dec["status"] in ("approved", "denied"):
            if not dec.get("signature"):
                raise VerifyError("final decision without a signature")
            verify_sig(self.signing_key, b64d(dec["signature"]), decision_signed_bytes(dec["id"], dec["status"], sealed),
                       "decision")
        return sealed

    def await_session(self, pending: "Pending", wait: int = 30) -> "Client":
        """Long-polls the decision; on approval returns a Client holding the new agent session."""
        if self.signing_key is None:
            self.server_info()
        while True:
            dec = self.decision(pending.id, wait)
            if dec["status"] != "pending":
                break
        sealed = self.verify_decision(dec)
        if dec["status"] != "approved" or not sealed:
            raise VerifyError(f"request {dec['status']}")
        grant = json.loads(hpke_open(pending.sk, b"agentkeys session v1", pending.id.encode("ascii"), sealed))
        c = Client(self.base, grant["token"], b64e(self.signing_key))
        c.session_info = grant["session"]
        return c

    # auth requests, as the master (or a session for high_value)
    def open_high_value(self, service: str, agent: str | None = None) -> dict:
        body = with_optional({"kind": "high_value", "service": service}, agent=agent)
        return self.request("POST", "/v1/auth-requests", body)[1]

    def by_code(self, code: str) -> dict:
        return self.request("GET", f"/v1/auth-requests/by-code/{code}")[1]

    def approve(self, req_id: str, scope: dict | None = None) -> dict:
        return self.request("POST", f"/v1/auth-requests/{req_id}/approve", {"scope": scope} if scope else {})[1]

    def deny(self, req_id: str) -> dict:
        return self.request("POST", f"/v1/auth-requests/{req_id}/deny", {})[1]

    def approve_by_code(self, code: str, expected_otp: str, scope: dict | None = None) -> dict:
        view = self.by_code(code)
        if not hmac.compare_digest(view["otp"], expected_otp):
            raise VerifyError("OTP mismatch: do not approve")
        return self.approve(view["id"], scope)

    # audit
    def audit(self, **query) -> list:
        rows = self.request("GET", "/v1/audit", query=query)[1]["events"]
        for r in rows:
            if audit_row_hash(r) != r["hash"]:
                raise VerifyError(f"audit row {r['seq']} does not hash to its hash")
        return rows

    def audit_verify(self) -> dict:
        return self.request("GET", "/v1/audit/verify")[1]

    def anchor(self, seq: int, hash_hex: str) -> dict:
        return self.request("POST", "/v1/audit/anchor", {"seq": seq, "hash": hash_hex})[1]

    # identities
    def link(self, wallet: str, alias: str | None = None, email: str | None = None) -> dict:
        return self.request("POST", "/v1/identities", with_optional({"wallet": wallet}, alias=alias, email=email))[1]

    def resolve(self, alias: str | None = None, email: str | None = None) -> dict:
        return self.request("GET", "/v1/identities/resolve", query={"alias": alias, "email": email})[1]


class Pending:
    """An open pair/recover request, with the requester's private key and its own OTP."""

    def __init__(self, ticket: dict, sk: X25519PrivateKey, my_otp: str):
        self.ticket, self.sk, self.otp = ticket, sk, my_otp
        self.id, self.pair_code = ticket["id"], ticket["pair_code"]


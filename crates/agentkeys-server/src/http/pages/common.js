// Shared by the agentkeys pages: base64url <-> bytes, and JSON calls to the API.
"use strict";

function b64uToBytes(s) {
  s = s.replace(/-/g, "+").replace(/_/g, "/");
  while (s.length % 4) s += "=";
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out.buffer;
}

function bytesToB64u(buf) {
  const b = new Uint8Array(buf);
  let s = "";
  for (const x of b) s += String.fromCharCode(x);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

// Asks the authenticator for an assertion with server-made request options (base64url
// fields), and answers it as the WebAuthn JSON the server verifies.
async function assertWith(pk) {
  pk.challenge = b64uToBytes(pk.challenge);
  for (const c of pk.allowCredentials || []) c.id = b64uToBytes(c.id);
  const cred = await navigator.credentials.get({ publicKey: pk });
  return {
    id: cred.id,
    rawId: bytesToB64u(cred.rawId),
    type: cred.type,
    response: {
      authenticatorData: bytesToB64u(cred.response.authenticatorData),
      clientDataJSON: bytesToB64u(cred.response.clientDataJSON),
      signature: bytesToB64u(cred.response.signature),
      userHandle: cred.response.userHandle ? bytesToB64u(cred.response.userHandle) : null,
    },
    extensions: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
  };
}

async function callApi(path, body) {
  const r = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    credentials: "omit",
    referrerPolicy: "no-referrer",
  });
  const j = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = j.error || {};
    const err = new Error((e.message || "HTTP " + r.status) + (e.hint ? " (" + e.hint + ")" : ""));
    err.code = e.code;
    throw err;
  }
  return j;
}

function lastPathSegment() {
  const parts = location.pathname.split("/");
  return decodeURIComponent(parts[parts.length - 1]);
}

function setStatus(text, cls) {
  const el = document.getElementById("status");
  el.textContent = text;
  el.className = cls || "";
}

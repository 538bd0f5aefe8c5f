// The registration page: creates a passkey (user verification required) for the master
// whose session made this one-time link.
"use strict";

const token = lastPathSegment();

async function register() {
  const button = document.getElementById("register");
  button.disabled = true;
  setStatus("Waiting for your authenticator…");
  try {
    const base = "/v1/passkeys/registrations/" + encodeURIComponent(token);
    const o = await callApi(base + "/options", {});
    const pk = o.publicKey;
    pk.challenge = b64uToBytes(pk.challenge);
    pk.user.id = b64uToBytes(pk.user.id);
    for (const c of pk.excludeCredentials || []) c.id = b64uToBytes(c.id);
    const cred = await navigator.credentials.create({ publicKey: pk });
    const credential = {
      id: cred.id,
      rawId: bytesToB64u(cred.rawId),
      type: cred.type,
      response: {
        attestationObject: bytesToB64u(cred.response.attestationObject),
        clientDataJSON: bytesToB64u(cred.response.clientDataJSON),
        transports: cred.response.getTransports ? cred.response.getTransports() : [],
      },
      extensions: cred.getClientExtensionResults ? cred.getClientExtensionResults() : {},
    };
    const done = await callApi(base + "/finish", credential);
    setStatus("Passkey '" + done.name + "' added (" + done.id + "). You can close this page.", "ok");
  } catch (e) {
    setStatus("Not added: " + e.message, "err");
    button.disabled = false;
  }
}

document.getElementById("register").addEventListener("click", register);

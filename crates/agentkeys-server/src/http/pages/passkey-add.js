// The registration page: creates a passkey (user verification required) for the master
// whose session made this one-time link.
"use strict";

// The link's token is its fragment: never sent in a request line or a Referer.
const token = decodeURIComponent(location.hash.slice(1));
// Out of the address bar and the history as soon as it is read.
history.replaceState(null, "", location.pathname);

async function register() {
  const button = document.getElementById("register");
  button.disabled = true;
  setStatus("Waiting for your authenticator…");
  try {
    const o = await callApi("/v1/passkeys/registrations/options", { token });
    // A master with passkeys adds one only with an assertion by one of them, over this
    // link (what it signs is shown).
    let vouch = null;
    if (o.vouch) {
      const shown = document.getElementById("vouch");
      shown.textContent = o.vouch.canonical;
      shown.hidden = false;
      setStatus("First confirm with a passkey you already have…");
      try {
        vouch = await assertWith(o.vouch.publicKey);
      } catch (e) {
        // A passkey on another device works too: the browser offers it (QR code, security key).
        throw new Error("no existing passkey confirmed (" + e.message + "); use the device that holds one");
      }
      setStatus("Now create the new passkey…");
    }
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
    const done = await callApi("/v1/passkeys/registrations/finish", { token, credential, vouch });
    setStatus("Passkey '" + done.name + "' added (" + done.id + "). You can close this page.", "ok");
  } catch (e) {
    setStatus("Not added: " + e.message, "err");
    button.disabled = false;
  }
}

document.getElementById("register").addEventListener("click", register);

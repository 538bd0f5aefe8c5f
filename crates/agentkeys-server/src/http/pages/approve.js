// The approval page: shows the request, and approves it with a passkey assertion whose
// challenge the server derived from the request's canonical text.
"use strict";

const code = lastPathSegment();
const kinds = { pair: "Pairing a new agent", recover: "Recovering an agent", high_value: "High-value release" };

function minutes() {
  const row = document.getElementById("standing-row");
  const v = document.getElementById("standing").value;
  return !row.hidden && v ? Number(v) : null;
}

// A pairing's scope as chosen here (the server sorts it and signs it as shown).
function scope() {
  if (document.getElementById("scope-row").hidden) return null;
  const services = document.getElementById("services").value
    .split(",").map((s) => s.trim()).filter((s) => s);
  return { services, read_only: document.getElementById("read-only").checked };
}

function choice() {
  return { minutes: minutes(), scope: scope() };
}

function row(table, label, value, cls) {
  const tr = table.insertRow();
  const th = document.createElement("th");
  th.textContent = label;
  tr.appendChild(th);
  const td = tr.insertCell();
  td.textContent = value;
  if (cls) td.className = cls;
}

function show(o) {
  const r = o.request;
  document.getElementById("title").textContent = kinds[r.kind] || r.kind;
  const t = document.getElementById("details");
  t.textContent = "";
  row(t, "Code", r.pair_code);
  row(t, "OTP", r.otp, "otp");
  if (r.agent) row(t, "Agent", r.agent + (r.agent_names && r.agent_names.length ? " (" + r.agent_names.join(", ") + ")" : ""));
  if (r.kind === "high_value") row(t, "Credential", r.service || "?");
  if (r.requested_by) row(t, r.kind === "pair" ? "Addressed to" : "Asked by", r.requested_by);
  if (r.description) row(t, "Description", r.description);
  const left = r.expires_at - Math.floor(Date.now() / 1000);
  row(t, "Status", r.status === "pending" ? "pending, " + Math.max(left, 0) + " s left" : r.status);
  document.getElementById("canonical").textContent = o.canonical;
  document.getElementById("standing-row").hidden = r.kind !== "high_value" || o.publicKey === null;
  document.getElementById("scope-row").hidden = r.kind !== "pair" || o.publicKey === null;
  // Without a passkey the page cannot approve: it says where the request is decided.
  const terminal = document.getElementById("terminal");
  terminal.hidden = o.publicKey !== null;
  document.getElementById("signed").hidden = o.publicKey === null;
  if (o.publicKey === null) {
    document.getElementById("note").textContent =
      "Compare the OTP with the one the requester shows, then decide at your terminal.";
  }
  document.getElementById("command").textContent = o.command;
  document.getElementById("approve").hidden = o.publicKey === null;
  document.getElementById("approve").disabled = r.status !== "pending" || o.publicKey === null;
  if (r.status !== "pending") setStatus("This request is " + r.status + ": nothing to approve.", "err");
}

async function load() {
  try {
    show(await callApi("/v1/approvals/" + encodeURIComponent(code) + "/options", choice()));
  } catch (e) {
    setStatus(e.message, "err");
  }
}

async function approve() {
  const button = document.getElementById("approve");
  button.disabled = true;
  setStatus("Waiting for your passkey…");
  try {
    const c = choice();
    // Fresh options for what was chosen (duration, scope): the challenge covers it.
    const o = await callApi("/v1/approvals/" + encodeURIComponent(code) + "/options", c);
    document.getElementById("canonical").textContent = o.canonical;
    const credential = await assertWith(o.publicKey);
    await callApi("/v1/approvals/" + encodeURIComponent(code) + "/approve", { ...c, credential });
    setStatus(c.minutes ? "Approved, standing for " + c.minutes + " minutes." : "Approved.", "ok");
  } catch (e) {
    setStatus("Not approved: " + e.message, "err");
    button.disabled = false;
  }
}

document.getElementById("approve").addEventListener("click", approve);
document.getElementById("standing").addEventListener("change", load);
document.getElementById("services").addEventListener("change", load);
document.getElementById("read-only").addEventListener("change", load);
load();

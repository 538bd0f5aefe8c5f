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
  if (r.kind === "pair") row(t, "Scope granted", "none, read-only (change it later with 'agentkeys scope')");
  if (r.requested_by) row(t, r.kind === "pair" ? "Addressed to" : "Asked by", r.requested_by);
  if (r.description) row(t, "Description", r.description);
  const left = r.expires_at - Math.floor(Date.now() / 1000);
  row(t, "Status", r.status === "pending" ? "pending, " + Math.max(left, 0) + " s left" : r.status);
  document.getElementById("canonical").textContent = o.canonical;
  document.getElementById("standing-row").hidden = r.kind !== "high_value";
  document.getElementById("approve").disabled = r.status !== "pending";
  if (r.status !== "pending") setStatus("This request is " + r.status + ": nothing to approve.", "err");
}

async function load() {
  try {
    show(await callApi("/v1/approvals/" + encodeURIComponent(code) + "/options", { minutes: minutes() }));
  } catch (e) {
    setStatus(e.message, "err");
  }
}

async function approve() {
  const button = document.getElementById("approve");
  button.disabled = true;
  setStatus("Waiting for your passkey…");
  try {
    const m = minutes();
    // Fresh options for the chosen duration: the challenge covers it.
    const o = await callApi("/v1/approvals/" + encodeURIComponent(code) + "/options", { minutes: m });
    document.getElementById("canonical").textContent = o.canonical;
    const credential = await assertWith(o.publicKey);
    await callApi("/v1/approvals/" + encodeURIComponent(code) + "/approve", { minutes: m, credential });
    setStatus(m ? "Approved, standing for " + m + " minutes." : "Approved.", "ok");
  } catch (e) {
    setStatus("Not approved: " + e.message, "err");
    button.disabled = false;
  }
}

document.getElementById("approve").addEventListener("click", approve);
document.getElementById("standing").addEventListener("change", load);
load();

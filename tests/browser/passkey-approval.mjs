// Passkey approvals in a real browser: Debian's chromium driven by playwright-core (pinned,
// installed by scripts/test.sh into target/browser; no browser download), with a CDP
// virtual authenticator that does user verification. Starts the real agentkeys-server and
// drives the real agentkeys CLI.
//
//   node tests/browser/passkey-approval.mjs
//
// Environment: AGENTKEYS_BIN_DIR (default target/debug), PLAYWRIGHT_DIR (default
// target/browser), CHROMIUM (default /usr/bin/chromium).
//
// It shows, in order: a master without a passkey sees the request on the page and the
// command that decides it; registering a passkey through 'agentkeys passkey add'; approving a
// high-value release on the page, after which the waiting 'agentkeys read --wait' prints
// the value; an assertion made for one request is refused for another; a replayed
// assertion is refused; an expired request refuses the page's approval; and the audit
// event holds the assertion, from which an offline check recomputes the challenge and
// verifies the signature with the public key the passkey.add event recorded; a second
// passkey is added only with the first one's assertion over its link.

import { spawn, spawnSync } from "node:child_process";
import { createHash, createPublicKey, verify as verifySignature, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import assert from "node:assert/strict";

const root = resolve(import.meta.dirname, "../..");
const bin = process.env.AGENTKEYS_BIN_DIR || join(root, "target/debug");
const playwrightDir = process.env.PLAYWRIGHT_DIR || join(root, "target/browser");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";
const { chromium } = await import(
  pathToFileURL(join(playwrightDir, "node_modules/playwright-core/index.mjs")).href
);

const work = mkdtempSync(join(tmpdir(), "agentkeys-browser-"));
const children = [];
let browser;

function cleanup() {
  for (const c of children) if (c.exitCode === null) c.kill("SIGKILL");
  rmSync(work, { recursive: true, force: true });
}
process.on("exit", cleanup);

function step(text) {
  console.log(`-- ${text}`);
}

function b64url(buf) {
  return Buffer.from(buf).toString("base64url");
}

// The server: --dev on a free loopback port; its public URL is http://localhost:PORT.
// Pair requests live 8 s here, for the expiry check.
const server = spawn(join(bin, "agentkeys-server"), ["--dev", "--listen", "127.0.0.1:0", "--pair-ttl", "8s"], {
  stdio: ["ignore", "pipe", "pipe"],
});
children.push(server);
const serverUrl = await new Promise((ok, fail) => {
  let out = "";
  server.stdout.on("data", (d) => {
    out += d;
    const m = out.match(/export AGENTKEYS_SERVER=(\S+)/);
    if (m) ok(m[1]);
  });
  server.on("exit", (c) => fail(new Error(`agentkeys-server exited with ${c}`)));
  setTimeout(() => fail(new Error("agentkeys-server did not start")), 30000);
});
const port = new URL(serverUrl).port;
const publicUrl = `http://localhost:${port}`;

const env = {
  ...process.env,
  AGENTKEYS_HOME: join(work, "home"),
  HOME: join(work, "home"),
  AGENTKEYS_SERVER: serverUrl,
  AGENTKEYS_SESSION_STORE: "file",
};
delete env.AGENTKEYS_AUTH_TOKEN;

function cli(args, { input, extraEnv } = {}) {
  const r = spawnSync(join(bin, "agentkeys"), args, {
    env: { ...env, ...extraEnv },
    input,
    encoding: "utf8",
    timeout: 60000,
  });
  if (r.status !== 0) {
    throw new Error(`agentkeys ${args.join(" ")} exited ${r.status}: ${r.stderr}`);
  }
  return r.stdout;
}
const cliJson = (args, opts) => JSON.parse(cli([...args, "--json"], opts));

async function api(method, path, body) {
  const r = await fetch(serverUrl + path, {
    method,
    headers: { "content-type": "application/json" },
    body: body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body),
  });
  return { status: r.status, body: await r.json().catch(() => ({})) };
}

/** Starts `agentkeys read SERVICE --wait 60`; resolves with its code once it waits. */
function waitingRead(service) {
  const p = spawn(join(bin, "agentkeys"), ["read", service, "--wait", "60"], { env, stdio: ["ignore", "pipe", "pipe"] });
  children.push(p);
  let stdout = "";
  let stderr = "";
  p.stdout.on("data", (d) => (stdout += d));
  const done = new Promise((ok) => p.on("exit", (code) => ok({ code, stdout, stderr })));
  const code = new Promise((ok, fail) => {
    p.stderr.on("data", (d) => {
      stderr += d;
      const m = stderr.match(/agentkeys approve ([A-Z0-9]{4}-[A-Z0-9]{4})/);
      if (m) ok(m[1]);
    });
    setTimeout(() => fail(new Error(`read ${service} printed no code: ${stderr}`)), 30000);
  });
  return { code, done };
}

try {
  const master = cliJson(["init"], { extraEnv: { AGENTKEYS_AUTH_TOKEN: "browser-test-master" } }).wallet;
  const stripe = `sk_live_browser_${randomBytes(8).toString("hex")}`;
  const github = `ghp_browser_${randomBytes(8).toString("hex")}`;
  cli(["store", "stripe", "--high-value"], { input: stripe });
  cli(["store", "github", "--high-value"], { input: github });

  browser = await chromium.launch({ executablePath: chromiumPath, args: ["--no-sandbox"] });
  const context = await browser.newContext();
  const page = await context.newPage();
  const cdp = await context.newCDPSession(page);
  await cdp.send("WebAuthn.enable");
  const { authenticatorId } = await cdp.send("WebAuthn.addVirtualAuthenticator", {
    options: {
      protocol: "ctap2",
      transport: "internal",
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });

  step("without a passkey, the page shows the request and the command that decides it");
  const early = waitingRead("stripe");
  const earlyCode = await early.code;
  await page.goto(`${publicUrl}/approve/${earlyCode}`);
  await page.waitForSelector("#terminal:not([hidden])", { timeout: 20000 });
  const pending = cliJson(["approve"]).requests.find((r) => r.pair_code === earlyCode);
  assert.ok(pending);
  assert.equal(await page.textContent("#title"), "High-value release");
  const details = await page.textContent("#details");
  for (const shown of [pending.otp, "stripe", master, "pending"]) {
    assert.ok(details.includes(shown), `the page shows ${shown}: ${details}`);
  }
  assert.equal(await page.textContent("#command"), `agentkeys approve ${earlyCode}`);
  assert.ok(await page.isHidden("#approve"), "no approve button without a passkey");
  assert.equal(await page.textContent("#status"), "", "no error shown");
  cli(["approve", earlyCode, "--yes"]);
  const earlyRead = await early.done;
  assert.equal(earlyRead.code, 0, earlyRead.stderr);
  assert.equal(earlyRead.stdout, stripe);

  step("registering a passkey through 'agentkeys passkey add'");
  const link = cliJson(["passkey", "add", "--name", "ci-authenticator"]).url;
  assert.ok(link.startsWith(`${publicUrl}/passkey/add#`), link);
  await page.goto(link);
  await page.click("#register");
  await page.waitForSelector("#status.ok", { timeout: 20000 });
  const passkeys = cliJson(["passkey", "list"]).passkeys;
  assert.equal(passkeys.length, 1);
  assert.equal(passkeys[0].name, "ci-authenticator");
  const { credentials } = await cdp.send("WebAuthn.getCredentials", { authenticatorId });
  assert.equal(credentials.length, 1, "the virtual authenticator holds the passkey");
  // The token left the address bar, and the link works once.
  assert.equal(new URL(page.url()).hash, "");
  const token = new URL(link).hash.slice(1);
  assert.equal((await api("POST", "/v1/passkeys/registrations/options", { token })).status, 404);

  step("approving a high-value release on the page releases it to the waiting read");
  const first = waitingRead("stripe");
  const firstCode = await first.code;
  const inbox = cliJson(["approve"]).requests;
  const listed = inbox.find((r) => r.pair_code === firstCode);
  assert.ok(listed, JSON.stringify(inbox));
  assert.equal(listed.approve_url, `${publicUrl}/approve/${firstCode}`);
  await page.goto(listed.approve_url);
  await page.waitForSelector("#approve:not([disabled])");
  assert.ok((await page.textContent("#details")).includes(listed.otp), "the page shows the OTP");
  assert.ok((await page.textContent("#canonical")).includes(`id ${listed.id}`), "the page shows what is signed");
  await page.click("#approve");
  await page.waitForSelector("#status.ok", { timeout: 20000 });
  const read = await first.done;
  assert.equal(read.code, 0, read.stderr);
  assert.equal(read.stdout, stripe);

  step("an assertion made for one request is refused for another, and a replay is refused");
  const a = waitingRead("stripe");
  const b = waitingRead("github");
  const [codeA, codeB] = await Promise.all([a.code, b.code]);
  let captured;
  await page.route("**/v1/approvals/*/approve", async (route) => {
    captured = route.request().postData();
    await route.abort();
  });
  await page.goto(`${publicUrl}/approve/${codeA}`);
  await page.waitForSelector("#approve:not([disabled])");
  await page.click("#approve");
  await page.waitForSelector("#status.err", { timeout: 20000 });
  await page.unroute("**/v1/approvals/*/approve");
  assert.ok(captured, "the page made an assertion for request A");
  const onB = await api("POST", `/v1/approvals/${codeB}/approve`, captured);
  assert.equal(onB.status, 400, JSON.stringify(onB.body));
  assert.match(onB.body.error.message, /does not verify/);
  // The same assertion on its own request approves it, once.
  const onA = await api("POST", `/v1/approvals/${codeA}/approve`, captured);
  assert.equal(onA.status, 200, JSON.stringify(onA.body));
  const replay = await api("POST", `/v1/approvals/${codeA}/approve`, captured);
  assert.equal(replay.status, 409, JSON.stringify(replay));
  assert.equal(replay.body.error.code, "ALREADY_CONSUMED");
  console.log(`   for B: ${onB.status} ${onB.body.error.code}; replay on A: ${replay.status} ${replay.body.error.code}`);
  const readA = await a.done;
  assert.equal(readA.stdout, stripe, readA.stderr);
  // B is still pending: deny it so its read ends.
  const pendingB = cliJson(["approve"]).requests.find((r) => r.pair_code === codeB);
  assert.equal(pendingB.status, "pending");
  cli(["approve", codeB, "--deny"]);
  assert.equal((await b.done).code, 3);

  step("an expired request refuses the page's approval");
  const pair = await openPair(master, "expiring in the browser test");
  await page.goto(`${publicUrl}/approve/${pair.pair_code}`);
  await page.waitForSelector("#approve:not([disabled])");
  await new Promise((ok) => setTimeout(ok, 9000));
  await page.click("#approve");
  await page.waitForSelector("#status.err", { timeout: 20000 });
  const said = await page.textContent("#status");
  assert.match(said, /expired/i, said);
  const decision = await api("GET", `/v1/auth-requests/${pair.id}/decision`);
  assert.equal(decision.body.status, "expired");

  step("the audit holds the assertion; an offline check recomputes the challenge and verifies it");
  const added = cliJson(["usage", "--action", "passkey.add"]).events;
  assert.equal(added.length, 1);
  const addDetail = JSON.parse(added[0].detail);
  const approvals = cliJson(["usage", "--action", "auth.approve"]).events.filter((e) =>
    (e.detail || "").includes(" via passkey "),
  );
  assert.equal(approvals.length, 2, "the first release and request A, each once");
  for (const e of approvals) {
    const evidence = passkeyEvidence(e.detail);
    assert.equal(evidence.passkey, addDetail.id);
    const challenge = b64url(createHash("sha256").update(evidence.canonical, "utf8").digest());
    const clientDataJSON = Buffer.from(evidence.assertion.response.clientDataJSON, "base64url");
    const clientData = JSON.parse(clientDataJSON.toString("utf8"));
    assert.equal(clientData.type, "webauthn.get");
    assert.equal(clientData.challenge, challenge, "the challenge is SHA-256 of the canonical text");
    assert.equal(clientData.origin, publicUrl);
    const id = evidence.canonical.match(/^id (\S+)$/m)[1];
    assert.ok(e.detail.startsWith(`high_value ${id} `), e.detail);
    verifyOffline(evidence.assertion, addDetail.public_key);
    console.log(`   ${id}: challenge ${challenge} recomputed, signature verified`);
  }

  step("a pairing approved on the page grants the scope chosen there, which the passkey signs");
  const paired = await openPair(master, "paired from the page");
  await page.goto(`${publicUrl}/approve/${paired.pair_code}`);
  await page.waitForSelector("#approve:not([disabled])");
  assert.ok(await page.isVisible("#scope-row"), "a pairing shows the scope to grant");
  await page.fill("#services", "stripe, github");
  await page.uncheck("#read-only");
  const answered = page.waitForResponse((r) => r.url().endsWith("/approve") && r.request().method() === "POST");
  await page.click("#approve");
  await page.waitForSelector("#status.ok", { timeout: 20000 });
  const pairAnswer = await (await answered).json();
  assert.equal(pairAnswer.status, "approved", JSON.stringify(pairAnswer));
  const newAgent = cliJson(["agents"]).agents.find((x) => x.wallet === pairAnswer.agent);
  assert.ok(newAgent, "the paired agent is listed");
  assert.deepEqual(newAgent.scope, { services: ["github", "stripe"], read_only: false });
  const pairApproval = cliJson(["usage", "--action", "auth.approve"]).events.find((e) =>
    (e.detail || "").startsWith(`pair ${paired.id} `),
  );
  const pairEvidence = passkeyEvidence(pairApproval.detail);
  assert.ok(
    pairEvidence.canonical.includes('\nscope {"services":["github","stripe"],"read_only":false}\n'),
    pairEvidence.canonical,
  );
  verifyOffline(pairEvidence.assertion, addDetail.public_key);
  console.log(`   ${newAgent.wallet}: scope ${JSON.stringify(newAgent.scope)}, signed by the passkey`);

  step("a second passkey is added only with an assertion by the first, which the audit keeps");
  // The virtual authenticator stands in for a second device: the options' excludeCredentials
  // (which stops one authenticator registering twice) is dropped for it.
  await page.route("**/v1/passkeys/registrations/options", async (route) => {
    const response = await route.fetch();
    const json = await response.json();
    if (json.publicKey) delete json.publicKey.excludeCredentials;
    await route.fulfill({ response, json });
  });
  let finishBody;
  await page.route("**/v1/passkeys/registrations/finish", async (route) => {
    finishBody = JSON.parse(route.request().postData());
    await route.continue();
  });
  const link2 = cliJson(["passkey", "add", "--name", "second-device"]).url;
  await page.goto(link2);
  await page.click("#register");
  await page.waitForSelector("#status.ok", { timeout: 20000 });
  await page.unrouteAll();
  assert.match(await page.textContent("#vouch"), /^agentkeys passkey add v1\n/);
  assert.equal(cliJson(["passkey", "list"]).passkeys.length, 2);
  assert.ok(finishBody.vouch, "the page sent the first passkey's assertion");
  const second = cliJson(["usage", "--action", "passkey.add"])
    .events.map((e) => JSON.parse(e.detail))
    .find((d) => d.id !== addDetail.id);
  const vouched = second.vouched_by;
  assert.equal(vouched.passkey, addDetail.id);
  const linkHash = b64url(createHash("sha256").update(new URL(link2).hash.slice(1)).digest());
  assert.ok(vouched.canonical.includes(`\nlink ${linkHash}\n`), vouched.canonical);
  const vouchData = JSON.parse(Buffer.from(vouched.assertion.response.clientDataJSON, "base64url").toString("utf8"));
  assert.equal(vouchData.challenge, b64url(createHash("sha256").update(vouched.canonical, "utf8").digest()));
  verifyOffline(vouched.assertion, addDetail.public_key);
  // The same assertion does not vouch on another link, and without one a link adds nothing.
  const link3 = cliJson(["passkey", "add", "--name", "third"]).url;
  const token3 = new URL(link3).hash.slice(1);
  assert.ok((await api("POST", "/v1/passkeys/registrations/options", { token: token3 })).body.vouch);
  const replayed = await api("POST", "/v1/passkeys/registrations/finish", { token: token3, credential: finishBody.credential, vouch: finishBody.vouch });
  assert.equal(replayed.status, 400, JSON.stringify(replayed.body));
  assert.match(replayed.body.error.message, /does not verify/);
  const bare = await api("POST", "/v1/passkeys/registrations/finish", { token: token3, credential: finishBody.credential });
  assert.equal(bare.status, 403, JSON.stringify(bare.body));
  assert.equal(cliJson(["passkey", "list"]).passkeys.length, 2);
  console.log(`   ${second.id} vouched by ${vouched.passkey}; replay on another link: ${replayed.status}, none: ${bare.status}`);

  const chain = cliJson(["usage", "--verify"]);
  assert.equal(chain.ok, true, JSON.stringify(chain));
  console.log("passkey approvals in the browser: all checks passed");
} finally {
  if (browser) await browser.close();
  cleanup();
}

/** The evidence JSON of an `auth.approve` detail ("... via passkey {...}"). */
function passkeyEvidence(detail) {
  return JSON.parse(detail.slice(detail.indexOf(" via passkey ") + " via passkey ".length));
}

/** Opens a pairing addressed to `parent` through the API, as a daemon would. */
async function openPair(parent, description) {
  const r = await api("POST", "/v1/auth-requests", {
    kind: "pair",
    requester_public_key: randomBytes(32).toString("base64"),
    parent,
    description,
  });
  assert.equal(r.status, 201, JSON.stringify(r));
  return r.body;
}

/** Verifies a WebAuthn assertion's signature with a passkey.add event's public key. */
function verifyOffline(assertion, coseKey) {
  const key = createPublicKey({ key: coseToJwk(coseKey), format: "jwk" });
  const signed = Buffer.concat([
    Buffer.from(assertion.response.authenticatorData, "base64url"),
    createHash("sha256").update(Buffer.from(assertion.response.clientDataJSON, "base64url")).digest(),
  ]);
  const signature = Buffer.from(assertion.response.signature, "base64url");
  assert.ok(verifySignature("sha256", signed, key, signature), "the assertion's signature verifies");
  // And a signature over anything else does not.
  signed[signed.length - 1] ^= 1;
  assert.ok(!verifySignature("sha256", signed, key, signature));
}

/** The webauthn-rs COSE key JSON of an ES256 passkey, as a JWK. */
function coseToJwk(cose) {
  const ec2 = cose.key && (cose.key.EC_EC2 || cose.key.EC2);
  assert.ok(ec2, `not an EC2 key: ${JSON.stringify(cose)}`);
  const coord = (v) => (Array.isArray(v) ? b64url(Buffer.from(v)) : String(v));
  return { kty: "EC", crv: "P-256", x: coord(ec2.x), y: coord(ec2.y) };
}

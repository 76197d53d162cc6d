// The web console in a real browser: Debian's Chromium, headless, driven by
// Playwright (playwright-core), against a real server and lab started by
// crates/paddock/tests/console.rs, which passes everything in the
// environment. Every step is what a user does with keyboard or mouse; the
// page is never reloaded while a cluster comes up, scales and goes. axe-core
// checks each main page. Screenshots (desktop and phone width) go to
// PADDOCK_SCREENSHOTS. Prints "ok - <step>" per step; exits 1 on the first
// failure with what was expected and what the page showed.

import { createRequire } from "node:module";
import { execFileSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import https from "node:https";
import path from "node:path";

const env = (k) => {
  const v = process.env[k];
  if (!v) throw new Error(`${k} is not set`);
  return v;
};
const require = createRequire(path.join(env("PADDOCK_NODE_TOOLS"), "package.json"));
const { chromium } = require("playwright-core");
const puppeteer = require("puppeteer-core");
const axeSource = fs.readFileSync(require.resolve("axe-core/axe.min.js"), "utf8");

const URL_ = env("PADDOCK_URL");
const shots = env("PADDOCK_SCREENSHOTS");
const work = env("PADDOCK_WORK");
const tokens = { admin: env("PADDOCK_TOKEN_ADMIN"), alice: env("PADDOCK_TOKEN_ALICE"), bob: env("PADDOCK_TOKEN_BOB") };
const CLUSTER = "web";
const figures = {};

// Chromium trusts the server's own key and the test's "other site" (an
// HTTPS server on another port of the same host), and no other: their SPKI
// hashes.
const spkiOf = (pem) => crypto.createHash("sha256")
  .update(new crypto.X509Certificate(pem).publicKey.export({ type: "spki", format: "der" }))
  .digest("base64");
const evilKey = path.join(work, "other-site.key");
const evilCert = path.join(work, "other-site.crt");
execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
  "-keyout", evilKey, "-out", evilCert, "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], { stdio: "ignore" });
const spki = [fs.readFileSync(env("PADDOCK_SERVER_CERT"), "utf8"), fs.readFileSync(evilCert, "utf8")].map(spkiOf).join(",");

const step = (what) => console.log(`ok - ${what}`);
const fail = (what) => { throw new Error(what); };

async function until(what, seconds, fn) {
  const end = Date.now() + seconds * 1000;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > end) fail(`${what}: not within ${seconds}s (last: ${last})`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

const browser = await chromium.launch({
  executablePath: process.env.PADDOCK_CHROMIUM || "/usr/bin/chromium",
  args: [`--ignore-certificate-errors-spki-list=${spki}`, "--no-sandbox"],
});
const problems = [];
// While the test has the server down, failed connections are expected.
let serverDown = false;

/** A signed-out browser context (own cookies) at desktop or phone size. */
async function open(label, { phone = false } = {}) {
  const ctx = await browser.newContext({
    viewport: phone ? { width: 390, height: 844 } : { width: 1280, height: 860 },
    deviceScaleFactor: 1,
    isMobile: phone,
    hasTouch: phone,
    acceptDownloads: true,
  });
  const page = await ctx.newPage();
  page.loads = 0;
  page.on("load", () => { page.loads += 1; });
  page.on("console", (m) => {
    const t = m.text();
    // A refused request shows as a failed load (the 401 of the session
    // check before sign-in, the 403s of the refusals this test provokes).
    const expected = /status of (40[1349]|422)/.test(t) || (serverDown && /net::ERR_CONNECTION_(CLOSED|REFUSED|RESET)/.test(t));
    if (/Content.Security.Policy|Refused to/i.test(t) || (m.type() === "error" && !expected)) {
      problems.push(`${label}: ${t}`);
    }
  });
  page.on("pageerror", (e) => problems.push(`${label}: uncaught ${e.message}`));
  await page.goto(`${URL_}/`);
  return page;
}

async function signIn(page, token) {
  await page.getByLabel("Access token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Sign out" }).waitFor();
}

async function axe(page, what) {
  await page.evaluate(axeSource);
  const r = await page.evaluate(() => globalThis.axe.run(document, { resultTypes: ["violations"] }));
  const bad = r.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (bad.length) {
    fail(`axe on ${what}: ${bad.map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n) => n.target.join(" ")).join("; ")}`).join(" | ")}`);
  }
  step(`axe: no serious violations on ${what} (${r.violations.length} minor)`);
}

async function shot(page, name) {
  fs.mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: false });
}

const text = (loc) => loc.innerText();

try {
  // ---- Sign in: a wrong token is refused beside the field.
  const alice = await open("alice");
  await axe(alice, "the sign-in page");
  await shot(alice, "sign-in");
  await alice.getByLabel("Access token").fill("not-a-token");
  await alice.getByRole("button", { name: "Sign in" }).click();
  await until("the wrong token's error beside the field", 10, async () =>
    (await text(alice.locator("#token-err"))).includes("not valid") &&
    (await alice.getByLabel("Access token").getAttribute("aria-invalid")) === "true");
  step("a wrong token is refused, the error is beside the field");
  await signIn(alice, tokens.alice);
  // One organization: straight to its clusters.
  await alice.getByRole("heading", { name: "Clusters of acme" }).waitFor();
  step("alice signs in and lands on the clusters of acme");

  // The session is kept from the page's scripts.
  const cookie = await alice.evaluate(() => document.cookie);
  const stored = await alice.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }));
  if (cookie.includes("paddock") || stored.includes(tokens.alice)) fail(`the page can read the session: cookie=${cookie} storage=${stored}`);
  const jar = await alice.context().cookies();
  const sc = jar.find((c) => c.name === "__Host-paddock-session") || fail("no session cookie");
  if (!sc.httpOnly || !sc.secure || sc.sameSite !== "Strict") fail(`session cookie flags: ${JSON.stringify(sc)}`);
  step("the session cookie is HttpOnly, Secure, SameSite=Strict; no token in the page's storage");

  // Operator pages: no link, and the page itself refuses.
  if (await alice.getByRole("link", { name: "Hosts" }).count()) fail("a tenant sees the Hosts link");
  await alice.goto(`${URL_}/#/hosts`);
  await until("the hosts page refusing alice", 15, async () => (await text(alice.locator("main"))).includes("You may not see hosts"));
  step("the hosts page refuses a tenant");
  // Another organization's clusters are refused, and its names never shown.
  await alice.goto(`${URL_}/#/orgs/globex`);
  await until("globex refused to alice", 15, async () => (await text(alice.locator("main"))).includes("You may not see the clusters of globex"));
  if ((await alice.content()).includes("gx-secret")) fail("alice sees globex's cluster");
  step("another organization's clusters are refused to a tenant");

  // ---- Create through the form: invalid values are shown beside their fields.
  await alice.goto(`${URL_}/#/orgs/acme`);
  await alice.getByRole("link", { name: "Create cluster" }).click();
  await alice.getByRole("heading", { name: "Create a cluster" }).waitFor();
  const loadsBefore = alice.loads;
  await alice.getByLabel("Name", { exact: true }).fill("Bad_Name");
  await alice.locator("#f-spec-nodePools-0-memory").fill("12");
  await alice.getByRole("button", { name: "Create cluster" }).click();
  await until("errors beside the name and memory fields", 10, async () =>
    (await text(alice.locator("#f-metadata-name-err"))).includes("Lowercase") &&
    (await text(alice.locator("#f-spec-nodePools-0-memory-err"))).includes("at least 128Mi") &&
    (await alice.locator("#f-metadata-name").getAttribute("aria-invalid")) === "true");
  const focused = await alice.evaluate(() => document.activeElement?.id);
  if (focused !== "f-metadata-name") fail(`focus after a refused submit is on ${focused}, not the first invalid field`);
  step("invalid form values show their errors beside the fields, focus on the first");
  await shot(alice, "create-errors");
  await axe(alice, "the create form with errors");
  await alice.setViewportSize({ width: 390, height: 844 });
  await shot(alice, "create-errors-phone");
  await alice.setViewportSize({ width: 1280, height: 860 });

  // Valid values: what the dev image's lab runs.
  await alice.getByLabel("Name", { exact: true }).fill(CLUSTER);
  const version = await alice.getByLabel("Kubernetes version").locator("option").allInnerTexts();
  if (version.length < 2) fail(`no Kubernetes versions from the images: ${version}`);
  await alice.getByLabel("Kubernetes version").selectOption({ index: 1 });
  await alice.locator("#f-spec-controlPlane-cpu").fill("1");
  await alice.locator("#f-spec-controlPlane-memory").fill("512Mi");
  await alice.locator("#f-spec-controlPlane-disk").fill("2Gi");
  await alice.locator("#f-spec-nodePools-0-replicas").fill("1");
  await alice.locator("#f-spec-nodePools-0-cpu").fill("1");
  await alice.locator("#f-spec-nodePools-0-memory").fill("256Mi");
  await alice.locator("#f-spec-nodePools-0-disk").fill("2Gi");
  const created = Date.now();
  await alice.getByRole("button", { name: "Create cluster" }).click();
  await alice.getByRole("heading", { name: CLUSTER, exact: true }).waitFor();
  step(`cluster ${CLUSTER} created through the form (Kubernetes ${version[1]})`);

  // Live: Ready without reloading.
  await until(`${CLUSTER} Ready on the page`, 420, async () => (await text(alice.locator("#cluster-phase"))).includes("Ready"));
  figures.createToReadySeconds = ((Date.now() - created) / 1000).toFixed(1);
  if (alice.loads !== loadsBefore) fail(`the page was reloaded (${alice.loads - loadsBefore} loads)`);
  step(`the page showed ${CLUSTER} Ready ${figures.createToReadySeconds}s after the create, without a reload`);
  await until("two machines listed with hosts and IPs", 30, async () => {
    const rows = await alice.locator("tr[data-machine]").allInnerTexts();
    return rows.length === 2 && rows.every((r) => /host-\d/.test(r) && /\d+\.\d+\.\d+\.\d+/.test(r));
  });
  step("its machines are listed with host and IP");
  await shot(alice, "cluster");
  await axe(alice, "the cluster page");

  // The same cluster again: the server's reason, in the form.
  await alice.goto(`${URL_}/#/orgs/acme/new`);
  await alice.getByLabel("Name", { exact: true }).fill(CLUSTER);
  await alice.locator("#f-spec-controlPlane-cpu").fill("1");
  await alice.locator("#f-spec-controlPlane-memory").fill("512Mi");
  await alice.getByRole("button", { name: "Create cluster" }).click();
  await until("the server's refusal in the form", 15, async () => (await text(alice.locator(".form-error"))).includes("already exists"));
  step("the server's reason (already exists) is shown in the form");

  // ---- Scale: the new machine appears.
  await alice.goto(`${URL_}/#/orgs/acme/clusters/${CLUSTER}`);
  const scale = alice.getByRole("form", { name: "Scale a node pool" });
  await scale.getByLabel("Pool", { exact: true }).selectOption("workers");
  await scale.getByLabel("Nodes", { exact: true }).fill("2");
  const scaled = Date.now();
  await scale.getByRole("button", { name: "Scale" }).click();
  await until("a third machine", 60, async () => (await alice.locator("tr[data-machine]").count()) === 3);
  figures.scaleToMachineSeconds = ((Date.now() - scaled) / 1000).toFixed(1);
  await until("the pool at 2 nodes", 10, async () => (await text(alice.locator("[data-pool-replicas=workers]"))) === "2");
  step(`scaled to 2 workers: the new machine appeared ${figures.scaleToMachineSeconds}s later`);

  // ---- The server dies: the page says so, and resumes by itself once it
  // is back (the session outlives the server; it is in the store).
  const lab = env("PADDOCK_LAB");
  const pid = Number(fs.readFileSync(path.join(lab, "server.pid"), "utf8").trim());
  serverDown = true;
  process.kill(pid, "SIGKILL");
  await until("the lost connection shown", 30, async () => (await text(alice.locator("#conn"))).includes("Connection to the server lost"));
  step("the server killed: the page shows the connection lost");
  await shot(alice, "connection-lost");
  execFileSync(env("PADDOCK_BIN"), ["dev", "up", "--hosts", "2", "--data-dir", lab, "--image-dir", env("PADDOCK_IMAGE_DIR")], { stdio: ["ignore", "ignore", "pipe"], timeout: 120000 });
  await until("reconnected", 60, async () => (await text(alice.locator("#conn"))).includes("Reconnected") || await alice.locator("#conn").isHidden());
  // Live again: a change made elsewhere (kubectl, as the admin) shows up.
  execFileSync("kubectl", ["--kubeconfig", env("PADDOCK_ADMIN_KUBECONFIG"), "-n", "acme", "patch", "cluster", CLUSTER, "--type", "json",
    "-p", JSON.stringify([{ op: "replace", path: "/spec/nodePools/0/replicas", value: 1 }])], { stdio: "ignore" });
  await until("kubectl's scale-down on the page", 60, async () =>
    (await text(alice.locator("[data-pool-replicas=workers]"))) === "1" && (await alice.locator("tr[data-machine]").count()) === 2);
  if (alice.loads !== loadsBefore) fail("the page reloaded");
  serverDown = false;
  step("the server back: the page reconnected by itself and shows a change made by kubectl, without a reload");

  // ---- Kubeconfig: downloaded, then used with kubectl through the gateway.
  await alice.getByLabel("Valid for").selectOption("1h");
  const [download] = await Promise.all([
    alice.waitForEvent("download"),
    alice.getByRole("button", { name: "Download kubeconfig" }).click(),
  ]);
  const kc = path.join(work, download.suggestedFilename());
  await download.saveAs(kc);
  const out = await until("kubectl through the gateway with the downloaded kubeconfig", 90, async () => {
    const o = execFileSync("kubectl", ["--kubeconfig", kc, "get", "--raw", "/"], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 20000 });
    return o.includes("s_server") ? o : false;
  });
  step(`the downloaded kubeconfig (${download.suggestedFilename()}) works with kubectl through the gateway (${out.split("\n")[0].slice(0, 40)}…)`);
  const view = JSON.parse(execFileSync("kubectl", ["--kubeconfig", kc, "config", "view", "--raw", "-o", "json"], { encoding: "utf8" }));
  const cert = Buffer.from(view.users[0].user["client-certificate-data"], "base64").toString();
  const x = new crypto.X509Certificate(cert);
  const hours = (Date.parse(x.validTo) - Date.now()) / 3.6e6;
  if (hours > 1.1 || hours < 0.8) fail(`the kubeconfig is valid ${hours.toFixed(2)}h, not the 1h chosen`);
  step(`its certificate is valid for the chosen 1h (${hours.toFixed(2)}h)`);

  // ---- A machine's console log.
  await alice.getByRole("link", { name: "Console log" }).first().click();
  await until("the serial console's text", 30, async () => (await text(alice.locator("pre.log"))).length > 100);
  step("a machine's console log is shown");
  await alice.goBack();
  await alice.getByRole("heading", { name: CLUSTER, exact: true }).waitFor();

  // ---- Firefox (Debian's ESR, through WebDriver BiDi): sign in with the
  // keyboard, live updates, a field's error beside it, no CSP violation.
  {
    const ff = await puppeteer.launch({
      browser: "firefox", protocol: "webDriverBiDi", headless: true,
      executablePath: process.env.PADDOCK_FIREFOX || "/usr/bin/firefox-esr",
      // Its own profile has no way in for the lab's CA; Chromium above pins the key.
      acceptInsecureCerts: true,
    });
    try {
      const page = await ff.newPage();
      page.on("console", (m) => {
        if (/Content.Security.Policy|Refused/i.test(m.text()) || (m.type() === "error" && !/40[13]/.test(m.text()))) problems.push(`firefox: ${m.text()}`);
      });
      page.on("pageerror", (e) => problems.push(`firefox: uncaught ${e.message}`));
      await page.goto(`${URL_}/#/orgs/acme/clusters/${CLUSTER}`);
      await page.locator("#token").fill(tokens.alice);
      await page.keyboard.press("Enter");
      await page.waitForFunction((c) => document.querySelector("h1")?.textContent === "Clusters of acme" || document.querySelector("h1")?.textContent === c, { timeout: 15000 }, CLUSTER);
      await page.goto(`${URL_}/#/orgs/acme/clusters/${CLUSTER}`);
      await page.waitForFunction(() => document.querySelector("#cluster-phase")?.textContent.includes("Ready"), { timeout: 30000 });
      execFileSync("kubectl", ["--kubeconfig", env("PADDOCK_ADMIN_KUBECONFIG"), "-n", "acme", "patch", "cluster", CLUSTER, "--type", "json",
        "-p", JSON.stringify([{ op: "replace", path: "/spec/nodePools/0/replicas", value: 2 }])], { stdio: "ignore" });
      await page.waitForFunction(() => document.querySelector("[data-pool-replicas=workers]")?.textContent === "2"
        && document.querySelectorAll("tr[data-machine]").length === 3, { timeout: 60000 });
      step("Firefox: signed in with the keyboard; a change made by kubectl shows up live");
      await page.goto(`${URL_}/#/orgs/acme/new`);
      await page.locator("#f-metadata-name").fill("Bad_Name");
      await page.locator("button[type=submit]").click();
      await page.waitForFunction(() => document.querySelector("#f-metadata-name-err")?.textContent.includes("Lowercase")
        && document.activeElement?.id === "f-metadata-name", { timeout: 10000 });
      step(`Firefox (${await ff.version()}): an invalid value's error beside its field, focus on it`);
    } finally {
      await ff.close();
    }
  }

  // ---- Phone width.
  await alice.setViewportSize({ width: 390, height: 844 });
  await shot(alice, "cluster-phone");
  await alice.goto(`${URL_}/#/orgs/acme`);
  await alice.locator(`tr[data-cluster=${CLUSTER}]`).waitFor();
  await shot(alice, "clusters-phone");
  await alice.setViewportSize({ width: 1280, height: 860 });
  await shot(alice, "clusters");
  await axe(alice, "the clusters page");

  // ---- Another organization's tenant sees none of it.
  const bob = await open("bob");
  await signIn(bob, tokens.bob);
  await bob.getByRole("heading", { name: "Clusters of globex" }).waitFor();
  await bob.locator("tr[data-cluster=gx-secret]").waitFor();
  if ((await bob.content()).includes(`data-cluster="${CLUSTER}"`)) fail("bob sees acme's cluster");
  await bob.goto(`${URL_}/#/orgs/acme/clusters/${CLUSTER}`);
  await until("acme's cluster refused to bob", 15, async () => (await text(bob.locator("main"))).includes("You may not see cluster web"));
  for (const sel of ["tr[data-machine]", "#kc-download"]) {
    if (await bob.locator(sel).count() && await bob.locator(sel).first().isVisible()) fail(`bob sees ${sel} of acme`);
  }
  step("a tenant of globex sees none of acme's cluster");

  // ---- The cookie alone is nothing: what a server on another port of this
  // host (the gateway's ingress ports are such) would receive.
  const cookieValue = (await alice.context().cookies()).find((c) => c.name === "__Host-paddock-session").value;
  const ca = fs.readFileSync(env("PADDOCK_CA"));
  const withCookie = (method, p, body) => new Promise((resolve, reject) => {
    const u = new URL(p, URL_);
    const req = https.request({ method, host: u.hostname, port: u.port, path: u.pathname, ca,
      headers: { cookie: `__Host-paddock-session=${cookieValue}`, "content-type": "application/json" } }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on("error", reject);
    req.end(body);
  });
  const leaked = [
    await withCookie("GET", "/console/session"),
    await withCookie("GET", "/apis/paddock.io/v1alpha1/namespaces/acme/clusters"),
    await withCookie("POST", "/apis/paddock.io/v1alpha1/namespaces/acme/clusters", JSON.stringify({ apiVersion: "paddock.io/v1alpha1", kind: "Cluster", metadata: { name: "csrf" }, spec: {} })),
  ];
  if (leaked.some((c) => c !== 401)) fail(`the session cookie alone was accepted: ${leaked}`);
  step(`the session cookie alone (no CSRF token) gets ${leaked.join(", ")}`);

  // ---- CSRF: a page of another origin on the same host (the same site, so
  // the browser sends the SameSite=Strict cookie), alice signed in.
  const evil = https.createServer({ key: fs.readFileSync(evilKey), cert: fs.readFileSync(evilCert) },
    (_, res) => { res.setHeader("content-type", "text/html"); res.end("<!doctype html><title>elsewhere</title>"); });
  await new Promise((r) => evil.listen(0, "127.0.0.1", r));
  const evilUrl = `https://127.0.0.1:${evil.address().port}/`;
  const other = await alice.context().newPage();
  await other.goto(evilUrl);
  const attempts = await other.evaluate(async (api) => {
    const tries = [];
    const body = JSON.stringify({ apiVersion: "paddock.io/v1alpha1", kind: "Cluster", metadata: { name: "csrf" }, spec: {} });
    for (const [what, init] of [
      ["simple POST", { method: "POST", body, headers: { "content-type": "text/plain" }, credentials: "include", mode: "no-cors" }],
      ["POST with a guessed CSRF header", { method: "POST", body, headers: { "content-type": "application/json", "x-csrf-token": "guess" }, credentials: "include" }],
      ["DELETE", { method: "DELETE", credentials: "include" }],
    ]) {
      const url = what === "DELETE" ? `${api}/apis/paddock.io/v1alpha1/namespaces/acme/clusters/web` : `${api}/apis/paddock.io/v1alpha1/namespaces/acme/clusters`;
      try {
        const r = await fetch(url, init);
        tries.push(`${what}: ${r.type} ${r.status}`);
      } catch (e) {
        tries.push(`${what}: ${e.message}`);
      }
    }
    return tries;
  }, URL_);
  await other.close();
  evil.close();
  step(`requests from another origin with the cookie: ${attempts.join("; ")}`);
  // Whatever the browser let out, the server did nothing: checked by the
  // harness through the API (cluster csrf absent, web not deleted), and here:
  await alice.reload();
  await alice.locator(`tr[data-cluster=${CLUSTER}]`).waitFor();
  if (await alice.locator("tr[data-cluster=csrf]").count()) fail("a cross-origin request created a cluster");
  if ((await text(alice.locator(`tr[data-cluster=${CLUSTER}]`))).includes("Deleting")) fail("a cross-origin request deleted the cluster");
  step("no cross-origin request changed anything");

  // ---- The operator: organizations and hosts with capacity bars; cordon.
  const admin = await open("admin");
  await signIn(admin, tokens.admin);
  await admin.getByRole("heading", { name: "Organizations" }).waitFor();
  await admin.getByRole("link", { name: "acme" }).waitFor();
  await shot(admin, "organizations");
  await admin.getByRole("link", { name: "Hosts" }).click();
  await admin.locator("tr[data-host] meter").first().waitFor();
  const hosts = await admin.locator("tr[data-host]").count();
  if (hosts < 2) fail(`${hosts} hosts listed`);
  const first = await admin.locator("tr[data-host]").first().getAttribute("data-host");
  await until("an allocation shown", 30, async () => /[1-9]\d* vCPU of/.test(await text(admin.locator("main"))));
  await shot(admin, "hosts");
  await axe(admin, "the hosts page");
  await admin.getByRole("button", { name: `Cordon ${first}` }).click();
  await until("the host shown cordoned", 15, async () => (await text(admin.locator(`tr[data-host="${first}"]`))).includes("cordoned"));
  const focusedAfter = await admin.evaluate(() => document.activeElement?.textContent);
  await admin.getByRole("button", { name: `Uncordon ${first}` }).click();
  await until("the host shown schedulable", 15, async () => !(await text(admin.locator(`tr[data-host="${first}"]`))).includes("cordoned"));
  step(`the operator cordons and uncordons ${first} (focus stayed on: ${focusedAfter})`);
  await admin.setViewportSize({ width: 390, height: 844 });
  await shot(admin, "hosts-phone");

  // ---- Delete: the confirmation names the cluster; the page sees it go.
  await alice.goto(`${URL_}/#/orgs/acme/clusters/${CLUSTER}`);
  await alice.getByRole("button", { name: "Delete cluster" }).click();
  const dialog = alice.getByRole("dialog", { name: `Delete cluster ${CLUSTER}?` });
  await dialog.waitFor();
  const confirm = dialog.getByRole("button", { name: `Delete cluster ${CLUSTER}` });
  if (await confirm.isEnabled()) fail("delete is enabled before the name is typed");
  await dialog.getByLabel("Cluster name").fill("we");
  if (await confirm.isEnabled()) fail("delete is enabled with the wrong name");
  await dialog.getByLabel("Cluster name").fill(CLUSTER);
  await axe(alice, "the delete confirmation");
  const deleted = Date.now();
  const loadsBeforeDelete = alice.loads;
  await confirm.click();
  await until("the cluster gone from the page", 240, async () => (await text(alice.locator("main"))).includes(`Cluster ${CLUSTER} is deleted`));
  figures.deleteSeconds = ((Date.now() - deleted) / 1000).toFixed(1);
  if (alice.loads !== loadsBeforeDelete) fail("the page reloaded during the delete");
  step(`deleted through the confirmation; the page saw it gone ${figures.deleteSeconds}s later, live`);

  // ---- Sign out ends the session on the server.
  await alice.getByRole("button", { name: "Sign out" }).click();
  await alice.getByRole("heading", { name: "Sign in to Paddock" }).waitFor();
  await alice.goto(`${URL_}/#/orgs/acme`);
  await alice.getByRole("heading", { name: "Sign in to Paddock" }).waitFor();
  step("sign-out ends the session");

  if (problems.length) fail(`the browser reported: ${problems.join(" | ")}`);
  step("no Content-Security-Policy violation or script error in any page");
  console.log(`figures ${JSON.stringify(figures)}`);
} catch (e) {
  console.error(`FAILED: ${e.message}`);
  if (problems.length) console.error(`browser messages: ${problems.join(" | ")}`);
  for (const ctx of browser.contexts()) {
    for (const p of ctx.pages()) {
      try {
        await p.screenshot({ path: path.join(work, `failure-${Date.now()}.png`) });
        console.error(`page ${p.url()}:\n${(await p.locator("body").innerText()).slice(0, 2000)}`);
      } catch { /* closed */ }
    }
  }
  await browser.close();
  process.exit(1);
}
await browser.close();

// Paddock web console. One ES module, no framework, no build step.
//
// Every call goes to the management API as the signed-in user: the session
// cookie (HttpOnly, set by POST /console/session) authenticates, and the
// CSRF token the sign-in gave is sent in X-CSRF-Token. That token is kept in
// this origin's localStorage: a server on another port of this host gets
// the cookie (cookies do not tell ports apart) but not the token. Live data comes from
// the API's watches (list, then watch from the list's resourceVersion), and
// a broken watch is shown and resumed by itself. Markup is built with DOM
// calls only: text from the API is never parsed as HTML.

import { MAX_CLUSTER_NAME, MAX_CPU, MAX_POOL_REPLICAS, bytes, checkCluster, human } from "./validate.js";

const GROUP = "paddock.io";
const V = "/apis/paddock.io/v1alpha1";
const SYSTEM_NAMESPACES = new Set(["paddock-system", "default", "kube-system", "kube-public", "kube-node-lease"]);

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const conn = document.getElementById("conn");

/** @type {{user: string, groups: string[], csrfToken: string, expiresAt: string} | null} */
let session = null;
const CSRF_KEY = "paddock.csrf";
/** What the user may do, asked once per sign-in (SelfSubjectAccessReview). */
const caps = new Map();

// ---------------------------------------------------------------- DOM

/** Builds an element: h("a", {href: "#/"}, "text", child, [more]). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** A status shown by text and shape, never by colour alone. */
function status(text, tone) {
  return h("span", { class: `status ${tone || ""}` }, text || "Unknown");
}

function tone(phase) {
  switch (phase) {
    case "Ready": case "Running": case "True": return "ok";
    case "Degraded": case "Failed": case "NotReady": case "Error": case "Offline": case "False": return "bad";
    default: return "warn";
  }
}

/** A table in a focusable, labelled scroll region (narrow screens scroll it). */
function table(label, headers, rows, empty) {
  const wrap = h("div", { class: "table-wrap", role: "region", "aria-label": label, tabindex: "0" });
  if (!rows.length) {
    wrap.append(h("p", { class: "empty" }, empty || "Nothing here yet."));
    return wrap;
  }
  const names = headers.map((x) => (Array.isArray(x) ? x[0] : x));
  const head = h("tr", {}, headers.map((x) => {
    const [text, cls] = Array.isArray(x) ? x : [x, null];
    return h("th", { scope: "col", class: cls }, text);
  }));
  // On a phone each row is a card; its cells name their column.
  for (const r of rows) [...r.children].forEach((cell, i) => { if (cell.tagName === "TD" && names[i]) cell.dataset.label = names[i]; });
  wrap.append(h("table", { "aria-label": label }, h("thead", {}, head), h("tbody", {}, rows)));
  return wrap;
}

/** Replaces a container's children, keeping focus on the element with the same data-key. */
function replace(container, ...children) {
  const key = container.contains(document.activeElement) ? document.activeElement.dataset.key : undefined;
  container.replaceChildren();
  append(container, children);
  if (key) container.querySelector(`[data-key="${CSS.escape(key)}"]`)?.focus();
}

function age(ts) {
  if (!ts) return "";
  const s = Math.max(0, (Date.now() - Date.parse(ts)) / 1000);
  if (s < 120) return `${Math.round(s)}s`;
  if (s < 7200) return `${Math.round(s / 60)}m`;
  if (s < 172800) return `${Math.round(s / 3600)}h`;
  return `${Math.round(s / 86400)}d`;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, body, text) {
    super(body?.message || text || `HTTP ${status}`);
    this.status = status;
    this.reason = body?.reason;
    this.causes = body?.details?.causes || [];
  }
}

async function call(method, path, body, { contentType = "application/json", accept = "application/json", signal } = {}) {
  const headers = { Accept: accept };
  if (session) headers["X-CSRF-Token"] = session.csrfToken;
  if (body !== undefined) headers["Content-Type"] = contentType;
  const r = await fetch(path, {
    method, headers, signal, credentials: "same-origin", cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  let data = null;
  try { data = text && accept === "application/json" ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (r.status === 401 && session) sessionEnded();
  if (!r.ok) throw new ApiError(r.status, data, text);
  return accept === "application/json" ? data : text;
}

/** Whether the signed-in user may do `verb` on `resource` (asked once, then remembered). */
async function can(verb, resource, namespace, { group = GROUP, subresource } = {}) {
  const key = [verb, group, resource, subresource, namespace].join("|");
  if (!caps.has(key)) {
    caps.set(key, call("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", {
      apiVersion: "authorization.k8s.io/v1", kind: "SelfSubjectAccessReview",
      spec: { resourceAttributes: { verb, group, resource, subresource, namespace } },
    }).then((r) => Boolean(r?.status?.allowed), () => false));
  }
  return caps.get(key);
}

// ---------------------------------------------------------------- live data

function sessionEnded() {
  session = null;
  localStorage.removeItem(CSRF_KEY);
  signIn("Your session ended. Sign in again.");
}

/** Which watches are down: the banner says so while any is. */
const connection = {
  down: new Set(),
  lostAt: null,
  set(w, up) {
    if (up) this.down.delete(w); else this.down.add(w);
    if (this.down.size) {
      this.lostAt ??= Date.now();
      conn.className = "conn";
      conn.textContent = "Connection to the server lost. Reconnecting…";
      conn.hidden = false;
    } else if (this.lostAt !== null) {
      this.lostAt = null;
      conn.className = "conn ok";
      conn.textContent = "Reconnected. What you see is live again.";
      setTimeout(() => { if (!this.down.size) conn.hidden = true; }, 3000);
    }
  },
};

/** A list kept current by a watch; calls onChange (once per frame) when it changes. */
class Watch {
  constructor(path, onChange) {
    this.path = path;
    this.items = new Map();
    this.loaded = false;
    this.error = null;
    this.stopped = false;
    this.pending = false;
    this.onChange = onChange;
    this.run();
  }

  stop() {
    this.stopped = true;
    this.abort?.abort();
    connection.set(this, true);
  }

  changed() {
    if (this.pending || this.stopped) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; if (!this.stopped) this.onChange(this); });
  }

  key(o) { return `${o.metadata.namespace || ""}/${o.metadata.name}`; }

  list() { return [...this.items.values()]; }

  async run() {
    let backoff = 500;
    while (!this.stopped) {
      try {
        this.abort = new AbortController();
        const list = await call("GET", this.path, undefined, { signal: this.abort.signal });
        this.items = new Map((list.items || []).map((o) => [this.key(o), o]));
        this.loaded = true;
        this.error = null;
        connection.set(this, true);
        this.changed();
        // Back to the shortest wait only once a watch has delivered.
        if (await this.follow(list.metadata.resourceVersion)) backoff = 500;
      } catch (e) {
        if (this.stopped) return;
        if (e instanceof ApiError && e.status === 401) {
          if (session) sessionEnded();
          return;
        }
        if (e instanceof ApiError && e.status >= 400 && e.status < 500 && ![408, 410, 429].includes(e.status)) {
          // Refused (403, 404): no retry makes it allowed.
          this.error = e;
          connection.set(this, true);
          this.changed();
          return;
        }
        if (!(e instanceof ApiError && e.status === 410)) connection.set(this, false);
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 8000);
      }
    }
  }

  /** Follows the watch from `rv` until it fails (throws) or is stopped. */
  async follow(rv) {
    let delivered = false;
    try {
      await this.followFrom(rv, () => { delivered = true; });
    } catch (e) {
      if (delivered && e instanceof ApiError && e.status === 410) return true;
      throw e;
    }
    return delivered;
  }

  async followFrom(rv, onEvent) {
    while (!this.stopped) {
      const opened = Date.now();
      const sep = this.path.includes("?") ? "&" : "?";
      const r = await fetch(`${this.path}${sep}watch=1&allowWatchBookmarks=true&resourceVersion=${encodeURIComponent(rv)}`, {
        headers: { Accept: "application/json", "X-CSRF-Token": session?.csrfToken || "" },
        credentials: "same-origin", cache: "no-store", signal: this.abort.signal,
      });
      if (!r.ok) {
        let body = null;
        try { body = await r.json(); } catch { /* none */ }
        throw new ApiError(r.status, body);
      }
      connection.set(this, true);
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, i).trim();
          buf = buf.slice(i + 1);
          if (!line) continue;
          const ev = JSON.parse(line);
          if (ev.type === "ERROR") throw new ApiError(ev.object?.code || 500, ev.object);
          rv = ev.object?.metadata?.resourceVersion || rv;
          onEvent();
          if (ev.type === "BOOKMARK") continue;
          if (ev.type === "DELETED") this.items.delete(this.key(ev.object));
          else this.items.set(this.key(ev.object), ev.object);
          this.changed();
        }
      }
      // The server ended the watch (its timeout): go on from where it was,
      // but not in a tight loop if it ends them at once.
      if (Date.now() - opened < 1000) await sleep(1000);
    }
  }
}

// ---------------------------------------------------------------- pages

/** What the current page started: stopped when the page is left. */
let page = { watches: [], timers: [] };

function leave() {
  for (const d of document.querySelectorAll("dialog")) d.close();
  for (const w of page.watches) w.stop();
  for (const t of page.timers) clearInterval(t);
  page = { watches: [], timers: [] };
}

function watch(path, onChange) {
  const w = new Watch(path, onChange);
  page.watches.push(w);
  return w;
}

function title(text, ...crumbs) {
  document.title = `${text} · Paddock`;
  const heading = h("h1", {}, text);
  if (!crumbs.length) return [heading];
  return [h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, crumbs.map((c, i) => [i ? " / " : "", c])), heading];
}

function refusedOrError(w, what) {
  if (!w.error) return null;
  if (w.error.status === 403) return h("p", { class: "form-error", role: "alert" }, `You may not see ${what}: ${w.error.message}`);
  if (w.error.status === 404) return h("p", { class: "form-error", role: "alert" }, `Not found: ${w.error.message}`);
  return h("p", { class: "form-error", role: "alert" }, w.error.message);
}

function orgsOf(s) {
  return s.groups.filter((g) => g.startsWith("org:")).map((g) => g.slice(4)).sort();
}

const isAdmin = () => session?.groups.includes("system:masters");

async function home() {
  const orgs = orgsOf(session);
  location.replace(!isAdmin() && orgs.length === 1 ? `#/orgs/${encodeURIComponent(orgs[0])}` : "#/orgs");
}

function orgsPage() {
  const body = h("div");
  main.replaceChildren(...title("Organizations"), body);
  const rows = (names) => names.map((n) => h("tr", {}, h("td", {}, h("a", { href: `#/orgs/${encodeURIComponent(n)}` }, n))));
  if (!isAdmin()) {
    replace(body, table("Your organizations", ["Name"], rows(orgsOf(session)),
      "You belong to no organization. Ask a platform administrator to add you to one."));
    return;
  }
  watch("/api/v1/namespaces", (w) => {
    const names = w.list().map((n) => n.metadata.name).filter((n) => !SYSTEM_NAMESPACES.has(n)).sort();
    replace(body, refusedOrError(w, "organizations"), table("Organizations", ["Name"], rows(names), "No organizations yet."));
  });
}

function clusterRow(org, c) {
  const st = c.status || {};
  const workers = (c.spec.nodePools || []).reduce((a, p) => a + (p.replicas || 0), 0);
  const name = c.metadata.name;
  return h("tr", { dataset: { cluster: name } },
    h("th", { scope: "row" }, h("a", { href: `#/orgs/${encodeURIComponent(org)}/clusters/${encodeURIComponent(name)}`, "data-key": `c-${name}` }, name)),
    h("td", {}, status(c.metadata.deletionTimestamp ? "Deleting" : st.phase || "Pending", tone(st.phase))),
    h("td", {}, c.spec.kubernetesVersion || "—"),
    h("td", { class: "num" }, `${st.controlPlaneReady || 0}/${c.spec.controlPlane?.replicas ?? 1}`),
    h("td", { class: "num" }, `${st.nodesReady || 0}/${workers}`),
    h("td", { class: "hide-narrow" }, age(c.metadata.creationTimestamp)));
}

async function clustersPage(org) {
  const body = h("div");
  const actions = h("div", { class: "row" });
  main.replaceChildren(...title(`Clusters of ${org}`, h("a", { href: "#/orgs" }, "Organizations")), actions, body);
  watch(`${V}/namespaces/${encodeURIComponent(org)}/clusters`, (w) => {
    const rows = w.list().sort((a, b) => a.metadata.name.localeCompare(b.metadata.name)).map((c) => clusterRow(org, c));
    replace(body, refusedOrError(w, `the clusters of ${org}`),
      w.error ? null : table(`Clusters of ${org}`, ["Name", "Phase", "Kubernetes", ["Control plane", "num"], ["Workers ready", "num"], ["Age", "hide-narrow"]], rows,
        "No clusters yet."));
  });
  if (await can("create", "clusters", org)) {
    actions.append(h("a", { class: "button primary", href: `#/orgs/${encodeURIComponent(org)}/new` }, "Create cluster"));
  }
}

// ---------------------------------------------------------------- create

/** A labelled input whose error shows beside it; `field` is the API's field path. */
function input(field, labelText, attrs, hint) {
  const id = `f-${field.replace(/[^a-zA-Z0-9]+/g, "-")}`;
  const err = h("p", { class: "error", id: `${id}-err`, "aria-live": "polite" });
  const el = h("input", { id, name: field, "aria-describedby": `${id}-err${hint ? ` ${id}-hint` : ""}`, dataset: { field }, ...attrs });
  return h("div", { class: "field" },
    h("label", { for: id }, labelText), el,
    hint ? h("span", { class: "hint", id: `${id}-hint` }, hint) : null, err);
}

function showErrors(form, errs) {
  for (const el of form.querySelectorAll("[data-field]")) {
    const msg = errs[el.dataset.field];
    el.setAttribute("aria-invalid", msg ? "true" : "false");
    const err = document.getElementById(`${el.id}-err`);
    if (err) err.textContent = msg || "";
  }
}

async function createPage(org) {
  const formError = h("div", { class: "form-error", role: "alert" });
  const versions = h("select", { id: "f-spec-kubernetesVersion", name: "spec.kubernetesVersion", dataset: { field: "spec.kubernetesVersion" }, "aria-describedby": "f-spec-kubernetesVersion-err" },
    h("option", { value: "" }, "Newest available"));
  const pools = h("div");
  let poolCount = 0;
  const addPool = (name) => {
    const i = poolCount++;
    const f = `spec.nodePools[${i}]`;
    const fs = h("fieldset", { class: "pool", dataset: { pool: String(i) } },
      h("legend", {}, `Node pool ${i + 1}`),
      h("div", { class: "grid" },
        input(`${f}.name`, "Pool name", { value: name, required: true, autocomplete: "off" }),
        input(`${f}.replicas`, "Nodes", { type: "number", value: "2", min: "0", max: String(MAX_POOL_REPLICAS), inputmode: "numeric" }),
        input(`${f}.cpu`, "vCPUs per node", { type: "number", value: "2", min: "1", max: String(MAX_CPU), inputmode: "numeric" }),
        input(`${f}.memory`, "RAM per node", { value: "2Gi", autocomplete: "off" }, "Such as 512Mi or 4Gi"),
        input(`${f}.disk`, "Disk per node", { value: "20Gi", autocomplete: "off" }, "Such as 20Gi")),
      h("button", { type: "button", class: "remove-pool", on: { click: () => {
        const next = fs.previousElementSibling || fs.nextElementSibling;
        fs.remove();
        read();
        (next?.querySelector("input") || form.querySelector(".add-pool"))?.focus();
      } } }, `Remove node pool ${i + 1}`));
    pools.append(fs);
    return fs;
  };
  const form = h("form", { novalidate: true, "aria-label": "Create cluster" },
    formError,
    h("fieldset", {}, h("legend", {}, "Cluster"),
      h("div", { class: "grid" },
        input("metadata.name", "Name", { required: true, autocomplete: "off", maxlength: String(MAX_CLUSTER_NAME + 10) }, "Lowercase letters, digits and '-'"),
        h("div", { class: "field" }, h("label", { for: versions.id }, "Kubernetes version"), versions,
          h("p", { class: "error", id: "f-spec-kubernetesVersion-err", "aria-live": "polite" })))),
    h("fieldset", {}, h("legend", {}, "Control plane"),
      h("div", { class: "grid" },
        h("fieldset", { class: "radios-fs" },
          h("legend", {}, "Control-plane nodes"),
          h("div", { class: "radios" },
            h("label", {}, h("input", { type: "radio", name: "cp-replicas", id: "f-cp-1", value: "1", checked: true }), "1"),
            h("label", {}, h("input", { type: "radio", name: "cp-replicas", id: "f-cp-3", value: "3" }), "3 (highly available)"))),
        input("spec.controlPlane.cpu", "vCPUs per node", { type: "number", value: "2", min: "1", max: String(MAX_CPU), inputmode: "numeric" }),
        input("spec.controlPlane.memory", "RAM per node", { value: "2Gi", autocomplete: "off" }, "Such as 2Gi"),
        input("spec.controlPlane.disk", "Disk per node", { value: "10Gi", autocomplete: "off" }, "Such as 10Gi"))),
    h("h2", {}, "Node pools"),
    pools,
    h("div", { class: "row spread" },
      h("button", { type: "button", class: "add-pool", on: { click: () => { addPool(`pool-${poolCount + 1}`).querySelector("input")?.focus(); read(); } } }, "Add node pool"),
      h("button", { type: "submit", class: "primary" }, "Create cluster")));
  addPool("workers");
  main.replaceChildren(...title("Create a cluster",
    h("a", { href: "#/orgs" }, "Organizations"), h("a", { href: `#/orgs/${encodeURIComponent(org)}` }, org)), form);

  const val = (field) => form.querySelector(`[data-field="${CSS.escape(field)}"]`)?.value.trim() ?? "";
  const num = (field) => { const v = val(field); return /^-?\d+$/.test(v) ? Number(v) : NaN; };
  const read = () => {
    const nodePools = [...pools.querySelectorAll("fieldset.pool")].map((fs, i) => {
      // Renumber what is left after removals: the server names pools by index.
      for (const el of fs.querySelectorAll("[data-field]")) {
        const rest = el.dataset.field.replace(/^spec\.nodePools\[\d+\]/, `spec.nodePools[${i}]`);
        el.dataset.field = rest;
      }
      fs.querySelector("legend").textContent = `Node pool ${i + 1}`;
      fs.querySelector(".remove-pool").textContent = `Remove node pool ${i + 1}`;
      const f = `spec.nodePools[${i}]`;
      return { name: val(`${f}.name`), replicas: num(`${f}.replicas`), cpu: num(`${f}.cpu`), memory: val(`${f}.memory`), disk: val(`${f}.disk`) };
    });
    const replicas = Number(form.querySelector("input[name=cp-replicas]:checked")?.value || 1);
    return {
      name: val("metadata.name"),
      spec: {
        kubernetesVersion: versions.value,
        controlPlane: { replicas, cpu: num("spec.controlPlane.cpu"), memory: val("spec.controlPlane.memory"), disk: val("spec.controlPlane.disk") },
        nodePools,
      },
    };
  };
  let touched = false;
  form.addEventListener("input", () => { if (touched) showErrors(form, checkCluster(read().spec, read().name)); });
  form.addEventListener("focusout", (e) => {
    const f = e.target?.dataset?.field;
    // Focus going to a button is a click on its way: an error appearing
    // now would move the button from under the pointer. Submit shows all.
    if (!f || e.relatedTarget?.tagName === "BUTTON") return;
    const errs = checkCluster(read().spec, read().name);
    const el = e.target;
    el.setAttribute("aria-invalid", errs[f] ? "true" : "false");
    const err = document.getElementById(`${el.id}-err`);
    if (err) err.textContent = errs[f] || "";
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    touched = true;
    formError.textContent = "";
    const { name, spec } = read();
    const errs = checkCluster(spec, name);
    showErrors(form, errs);
    if (Object.keys(errs).length) {
      formError.textContent = `Fix the ${Object.keys(errs).length === 1 ? "field" : `${Object.keys(errs).length} fields`} marked below.`;
      form.querySelector("[aria-invalid=true]")?.focus();
      return;
    }
    if (!spec.kubernetesVersion) delete spec.kubernetesVersion;
    const submit = form.querySelector("button[type=submit]");
    submit.disabled = true;
    try {
      await call("POST", `${V}/namespaces/${encodeURIComponent(org)}/clusters`, {
        apiVersion: `${GROUP}/v1alpha1`, kind: "Cluster", metadata: { name, namespace: org }, spec,
      });
      location.hash = `#/orgs/${encodeURIComponent(org)}/clusters/${encodeURIComponent(name)}`;
    } catch (err) {
      // The server's reason, beside the field it names where it names one.
      const byField = {};
      for (const c of err.causes || []) if (c.field) byField[c.field] = (byField[c.field] ? `${byField[c.field]} ` : "") + (c.message || c.reason);
      const placed = Object.keys(byField).filter((f) => form.querySelector(`[data-field="${CSS.escape(f)}"]`));
      showErrors(form, byField);
      formError.textContent = `The server refused the cluster: ${err.message}`;
      (placed.length ? form.querySelector("[aria-invalid=true]") : formError)?.focus?.();
    } finally {
      submit.disabled = false;
    }
  });
  form.querySelector("input")?.focus();
  // Kubernetes versions from the images there are, newest first.
  try {
    const r = await call("GET", "/paddock/v1/kubernetes-versions");
    for (const v of r.versions || []) versions.append(h("option", { value: v }, v));
  } catch (e) {
    versions.append(h("option", { value: "", disabled: true }, `Cannot list images: ${e.message}`));
  }
}

// ---------------------------------------------------------------- cluster detail

function conditionsText(conds) {
  return (conds || []).map((c) => `${c.type}=${c.status}${c.reason ? ` (${c.reason})` : ""}`).join(", ") || "—";
}

async function clusterPage(org, name) {
  const o = encodeURIComponent(org);
  const n = encodeURIComponent(name);
  const path = `${V}/namespaces/${o}/clusters/${n}`;
  const head = h("div", { class: "row spread" });
  const facts = h("div", { class: "panel" });
  const poolsBox = h("div");
  const scaleBox = h("div");
  const machinesBox = h("div");
  const eventsBox = h("div");
  const kubeconfigBox = h("div", { class: "panel" });
  // Only what the API would allow is offered.
  const here = page;
  const [mayScale, mayDelete, mayKubeconfig] = await Promise.all([
    can("patch", "clusters", org), can("delete", "clusters", org), can("create", "clusters", org, { subresource: "kubeconfig" })]);
  if (page !== here) return;
  const ofCluster = h("div", { hidden: true }, facts,
    h("h2", { id: "pools-h" }, "Node pools"), poolsBox, mayScale ? scaleBox : null,
    mayKubeconfig ? [h("h2", {}, "Kubeconfig"), kubeconfigBox] : null);
  const live = h("div", { hidden: true }, h("h2", {}, "Machines"), machinesBox, h("h2", {}, "Events"), eventsBox);
  main.replaceChildren(...title(name, h("a", { href: "#/orgs" }, "Organizations"), h("a", { href: `#/orgs/${o}` }, org)),
    head, ofCluster, live);

  let cluster = null;
  let gone = false;
  const deleteButton = mayDelete ? h("button", { type: "button", class: "danger", on: { click: () => confirmDelete(org, name) } }, "Delete cluster") : null;
  const clusters = watch(`${V}/namespaces/${o}/clusters?fieldSelector=${encodeURIComponent(`metadata.name=${name}`)}`, (w) => {
    cluster = w.items.get(`${org}/${name}`) || null;
    if (w.error) {
      ofCluster.hidden = true;
      live.hidden = true;
      replace(head, refusedOrError(w, `cluster ${name}`));
      return;
    }
    if (!cluster) {
      if (!w.loaded) return;
      gone = true;
      ofCluster.hidden = true;
      replace(head, h("p", { role: "status", class: "panel" }, `Cluster ${name} is deleted. `, h("a", { href: `#/orgs/${o}` }, `Back to the clusters of ${org}`)));
      return;
    }
    ofCluster.hidden = false;
    live.hidden = false;
    const st = cluster.status || {};
    const phase = cluster.metadata.deletionTimestamp ? "Deleting" : st.phase || "Pending";
    replace(head, h("p", { class: "row" }, "Phase: ", h("span", { id: "cluster-phase" }, status(phase, tone(phase)))),
      cluster.metadata.deletionTimestamp ? null : deleteButton);
    const workers = (cluster.spec.nodePools || []).reduce((a, p) => a + (p.replicas || 0), 0);
    const ing = st.ingress;
    replace(facts, h("dl", { class: "facts" },
      h("dt", {}, "Kubernetes"), h("dd", {}, cluster.spec.kubernetesVersion || "—", st.nodeVersions?.length ? ` (nodes run ${st.nodeVersions.join(", ")})` : ""),
      h("dt", {}, "Control plane ready"), h("dd", {}, `${st.controlPlaneReady || 0} of ${cluster.spec.controlPlane?.replicas ?? 1}`),
      h("dt", {}, "Workers ready"), h("dd", {}, `${st.nodesReady || 0} of ${workers}`),
      h("dt", {}, "API (gateway)"), h("dd", {}, st.apiEndpoint ? h("code", {}, st.apiEndpoint) : "not yet"),
      h("dt", {}, "Ingress"), h("dd", {}, ing ? `${ing.address || "gateway"} — HTTP port ${ing.httpPort}, HTTPS port ${ing.httpsPort}; ${(ing.backends || []).filter((b) => b.healthy).length} healthy backends` : "not yet"),
      h("dt", {}, "Overlay"), h("dd", {}, st.overlay ? `VXLAN ${st.overlay.vni}, ${st.overlay.subnet}` : "not yet"),
      h("dt", {}, "Conditions"), h("dd", {}, conditionsText(st.conditions)),
      h("dt", {}, "Created"), h("dd", {}, `${cluster.metadata.creationTimestamp} (${age(cluster.metadata.creationTimestamp)} ago)`)));
    replace(poolsBox, table("Node pools", ["Pool", ["Nodes", "num"], ["vCPUs", "num"], "RAM", "Disk"],
      [h("tr", {}, h("th", { scope: "row" }, "control plane"), h("td", { class: "num" }, cluster.spec.controlPlane?.replicas ?? 1),
        h("td", { class: "num" }, cluster.spec.controlPlane?.cpu), h("td", {}, cluster.spec.controlPlane?.memory), h("td", {}, cluster.spec.controlPlane?.disk)),
      ...(cluster.spec.nodePools || []).map((p) => h("tr", {}, h("th", { scope: "row" }, p.name), h("td", { class: "num", dataset: { poolReplicas: p.name } }, p.replicas),
        h("td", { class: "num" }, p.cpu), h("td", {}, p.memory), h("td", {}, p.disk)))]));
    if (!scaleBox.contains(document.activeElement)) renderScale();
  });

  // Scaling: a form of its own, rebuilt only when not in use.
  const renderScale = () => {
    if (!cluster || cluster.metadata.deletionTimestamp || !(cluster.spec.nodePools || []).length) { scaleBox.replaceChildren(); return; }
    const ps = cluster.spec.nodePools;
    const sel = h("select", { id: "scale-pool" }, ps.map((p) => h("option", { value: p.name }, p.name)));
    const count = h("input", { id: "scale-count", type: "number", min: "0", max: String(MAX_POOL_REPLICAS), value: String(ps[0].replicas), inputmode: "numeric", "aria-describedby": "scale-err" });
    const err = h("p", { class: "error", id: "scale-err", "aria-live": "polite" });
    sel.addEventListener("change", () => { count.value = String(ps.find((p) => p.name === sel.value)?.replicas ?? 0); });
    const form = h("form", { class: "panel", "aria-label": "Scale a node pool" },
      h("div", { class: "row" },
        h("div", { class: "field" }, h("label", { for: "scale-pool" }, "Pool"), sel),
        h("div", { class: "field" }, h("label", { for: "scale-count" }, "Nodes"), count),
        h("button", { type: "submit" }, "Scale")), err);
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      err.textContent = "";
      const want = Number(count.value);
      if (!/^\d+$/.test(count.value) || want > MAX_POOL_REPLICAS) {
        count.setAttribute("aria-invalid", "true");
        err.textContent = `Must be a whole number from 0 to ${MAX_POOL_REPLICAS}.`;
        count.focus();
        return;
      }
      count.setAttribute("aria-invalid", "false");
      const i = (cluster.spec.nodePools || []).findIndex((p) => p.name === sel.value);
      if (i < 0) {
        err.textContent = `Pool ${sel.value} is no longer in the cluster.`;
        renderScale();
        return;
      }
      try {
        // A JSON patch that tests the pool is still the one at that index.
        await call("PATCH", path, [
          { op: "test", path: `/spec/nodePools/${i}/name`, value: sel.value },
          { op: "replace", path: `/spec/nodePools/${i}/replicas`, value: want },
        ], { contentType: "application/json-patch+json" });
        err.textContent = "";
        scaleBox.querySelector("button[type=submit]")?.focus();
      } catch (ex) {
        count.setAttribute("aria-invalid", "true");
        err.textContent = `The server refused: ${ex.message}`;
      }
    });
    scaleBox.replaceChildren(form);
  };

  // Kubeconfig: issued for the chosen time, downloaded as a file.
  const ttl = h("select", { id: "kc-ttl" },
    [["1h", "1 hour"], ["8h", "8 hours"], ["24h", "24 hours"]].map(([v, t]) => h("option", { value: v, selected: v === "8h" }, t)));
  const kcMsg = h("p", { role: "status", id: "kc-status" });
  kubeconfigBox.append(h("div", { class: "row" },
    h("div", { class: "field" }, h("label", { for: "kc-ttl" }, "Valid for"), ttl),
    h("button", { type: "button", id: "kc-download", on: { click: async () => {
      kcMsg.textContent = "";
      try {
        const r = await call("POST", `${path}/kubeconfig`, { apiVersion: `${GROUP}/v1alpha1`, kind: "ClusterKubeconfig", spec: { ttl: ttl.value } });
        const url = URL.createObjectURL(new Blob([r.status.kubeconfig], { type: "application/yaml" }));
        const a = h("a", { href: url, download: `${name}.${org}.kubeconfig` });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 10000);
        kcMsg.textContent = `Downloaded ${name}.${org}.kubeconfig for user ${r.status.user}, valid until ${r.status.expirationTimestamp}.`;
      } catch (e) {
        kcMsg.textContent = `Cannot issue a kubeconfig: ${e.message}`;
      }
    } } }, "Download kubeconfig")), kcMsg);

  let events = null;
  const machines = watch(`${V}/namespaces/${o}/machines?fieldSelector=${encodeURIComponent(`spec.clusterName=${name}`)}`, (w) => {
    if (events?.loaded) events.changed();
    const rows = w.list().sort((a, b) => a.metadata.name.localeCompare(b.metadata.name)).map((m) => {
      const st = m.status || {};
      const ph = m.metadata.deletionTimestamp ? "Deleting" : st.phase || "Pending";
      return h("tr", { dataset: { machine: m.metadata.name } },
        h("th", { scope: "row" }, m.metadata.name),
        h("td", {}, m.spec.role === "ControlPlane" ? "control plane" : m.spec.pool || "worker"),
        h("td", {}, status(ph, tone(ph))),
        h("td", {}, m.spec.hostName || "—"),
        h("td", {}, m.spec.ip?.split("/")[0] || "—"),
        h("td", { class: "hide-narrow" }, conditionsText(st.conditions)),
        h("td", {}, m.spec.hostName ? h("a", { href: `#/orgs/${o}/machines/${encodeURIComponent(m.metadata.name)}/console`, "data-key": `log-${m.metadata.name}` }, "Console log") : "—"));
    });
    replace(machinesBox, refusedOrError(w, "machines"),
      table("Machines", ["Name", "Role", "Phase", "Host", "IP", ["Conditions", "hide-narrow"], "Console"], rows, gone ? "None left." : "No machines yet."));
  });

  events = watch(`/api/v1/namespaces/${o}/events`, (w) => {
    const names = new Set([name]);
    for (const m of machines.list()) names.add(m.metadata.name);
    const evs = w.list().filter((e) => names.has(e.involvedObject?.name))
      .sort((a, b) => Date.parse(b.lastTimestamp || b.eventTime || b.metadata.creationTimestamp) - Date.parse(a.lastTimestamp || a.eventTime || a.metadata.creationTimestamp))
      .slice(0, 50);
    replace(eventsBox, refusedOrError(w, "events"),
      table("Events", ["When", "Type", "Object", "Reason", "Message"], evs.map((e) => h("tr", {},
        h("td", {}, age(e.lastTimestamp || e.eventTime || e.metadata.creationTimestamp)),
        h("td", {}, e.type === "Warning" ? status("Warning", "bad") : "Normal"),
        h("td", {}, `${e.involvedObject?.kind || ""} ${e.involvedObject?.name || ""}`),
        h("td", {}, e.reason || ""),
        h("td", {}, e.message || ""))), "No events."));
  });
  void clusters;
}

function confirmDelete(org, name) {
  const typed = h("input", { id: "confirm-name", autocomplete: "off", "aria-describedby": "confirm-hint" });
  const go = h("button", { type: "submit", class: "danger", disabled: true }, `Delete cluster ${name}`);
  const msg = h("p", { class: "error", role: "alert" });
  const dlg = h("dialog", { "aria-labelledby": "confirm-title" },
    h("form", { method: "dialog" },
      h("h2", { id: "confirm-title" }, `Delete cluster ${name}?`),
      h("p", { id: "confirm-hint" }, `Its machines and their disks are deleted. This cannot be undone. Type ${name} to confirm.`),
      h("div", { class: "field" }, h("label", { for: "confirm-name" }, "Cluster name"), typed),
      msg,
      h("div", { class: "row spread" }, h("button", { type: "button", on: { click: () => dlg.close() } }, "Cancel"), go)));
  typed.addEventListener("input", () => { go.disabled = typed.value !== name; });
  dlg.querySelector("form").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (typed.value !== name) return;
    try {
      await call("DELETE", `${V}/namespaces/${encodeURIComponent(org)}/clusters/${encodeURIComponent(name)}`);
      dlg.close();
    } catch (ex) {
      msg.textContent = `The server refused: ${ex.message}`;
    }
  });
  dlg.addEventListener("close", () => dlg.remove());
  document.body.append(dlg);
  dlg.showModal();
}

async function consolePage(org, name) {
  const o = encodeURIComponent(org);
  const log = h("pre", { class: "log", tabindex: "0", "aria-label": `Serial console of ${name}` });
  const msg = h("p", { role: "status" });
  const load = async () => {
    try {
      const text = await call("GET", `${V}/namespaces/${o}/machines/${encodeURIComponent(name)}/console`, undefined, { accept: "text/plain, */*" });
      log.textContent = text || "(empty)";
      msg.textContent = `Read ${new Date().toLocaleTimeString()}.`;
    } catch (e) {
      msg.textContent = `Cannot read the console: ${e.message}`;
    }
  };
  main.replaceChildren(...title(`Console of ${name}`, h("a", { href: "#/orgs" }, "Organizations"), h("a", { href: `#/orgs/${o}` }, org)),
    h("div", { class: "row" }, h("button", { type: "button", on: { click: load } }, "Read again"), msg), log);
  await load();
}

// ---------------------------------------------------------------- hosts

function bar(label, used, total, fmt) {
  const id = `m-${Math.random().toString(36).slice(2)}`;
  return h("div", { class: "bar" },
    h("meter", { id, min: "0", max: String(total || 0), value: String(used || 0), low: String(0.7 * total), high: String(0.9 * total), optimum: "0", "aria-label": label }),
    h("span", {}, `${fmt(used)} of ${fmt(total)}`));
}

function hostsPage() {
  const body = h("div");
  const msg = h("p", { role: "status" });
  main.replaceChildren(...title("Hosts"), msg, body);
  const act = async (hostName, what, fn) => {
    msg.textContent = "";
    try { await fn(); msg.textContent = `${what}: ${hostName}.`; } catch (e) { msg.textContent = `Cannot ${what.toLowerCase()} ${hostName}: ${e.message}`; }
  };
  const setUnschedulable = (n, on) => call("PATCH", `${V}/hosts/${encodeURIComponent(n)}`, { spec: { unschedulable: on } }, { contentType: "application/merge-patch+json" });
  const drain = (n) => {
    const go = h("button", { type: "submit", class: "danger" }, `Drain ${n}`);
    const dlg = h("dialog", { "aria-labelledby": "drain-title" },
      h("form", { method: "dialog" },
        h("h2", { id: "drain-title" }, `Drain host ${n}?`),
        h("p", {}, "It is cordoned, and each of its machines is deleted so that its cluster makes a new one elsewhere."),
        h("div", { class: "row spread" }, h("button", { type: "button", on: { click: () => dlg.close() } }, "Cancel"), go)));
    dlg.querySelector("form").addEventListener("submit", async (e) => {
      e.preventDefault();
      dlg.close();
      await act(n, "Drained", async () => {
        await setUnschedulable(n, true);
        const ms = await call("GET", `${V}/machines?fieldSelector=${encodeURIComponent(`spec.hostName=${n}`)}`);
        for (const m of ms.items || []) {
          await call("DELETE", `${V}/namespaces/${encodeURIComponent(m.metadata.namespace)}/machines/${encodeURIComponent(m.metadata.name)}`);
        }
      });
    });
    dlg.addEventListener("close", () => dlg.remove());
    document.body.append(dlg);
    dlg.showModal();
  };
  watch(`${V}/hosts`, (w) => {
    const rows = w.list().sort((a, b) => a.metadata.name.localeCompare(b.metadata.name)).map((x) => {
      const st = x.status || {};
      const n = x.metadata.name;
      const cap = st.allocatable || st.capacity || {};
      const used = st.allocated || {};
      const health = st.phase || "Registering";
      const cordoned = Boolean(x.spec?.unschedulable);
      return h("tr", { dataset: { host: n } },
        h("th", { scope: "row" }, n),
        h("td", {}, status(health, tone(health)), cordoned ? h("div", { class: "tag" }, "cordoned") : null,
          st.provisioning?.state ? h("div", { class: "muted" }, st.provisioning.state) : null),
        h("td", {}, bar(`vCPUs allocated on ${n}`, used.cpu || 0, cap.cpu || 0, (v) => `${v} vCPU`)),
        h("td", {}, bar(`Memory allocated on ${n}`, bytes(used.memory || 0), bytes(cap.memory || 0), human)),
        h("td", { class: "hide-narrow" }, st.underlayIp || "—"),
        h("td", {}, h("div", { class: "row" },
          h("button", { type: "button", "data-key": `cordon-${n}`, on: { click: () => act(n, cordoned ? "Uncordoned" : "Cordoned", () => setUnschedulable(n, !cordoned)) } }, cordoned ? `Uncordon ${n}` : `Cordon ${n}`),
          h("button", { type: "button", "data-key": `drain-${n}`, on: { click: () => drain(n) } }, `Drain ${n}`))));
    });
    replace(body, refusedOrError(w, "hosts"),
      w.error ? null : table("Hosts", ["Host", "Health", "vCPUs", "Memory", ["Underlay", "hide-narrow"], "Actions"], rows, "No hosts have joined."));
  });
}

// ---------------------------------------------------------------- sign-in, navigation

function signIn(message) {
  leave();
  session = null;
  caps.clear();
  nav.replaceChildren();
  who.replaceChildren();
  const err = h("p", { class: "error", id: "token-err", "aria-live": "polite" }, message && !message.startsWith("Your") ? message : "");
  const token = h("input", { id: "token", type: "password", autocomplete: "current-password", required: true, "aria-describedby": "token-hint token-err" });
  const form = h("form", { class: "panel signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in to Paddock"),
    message?.startsWith("Your") ? h("p", { role: "status" }, message) : null,
    h("div", { class: "field" },
      h("label", { for: "token" }, "Access token"), token,
      h("span", { class: "hint", id: "token-hint" }, "The bearer token of your kubeconfig (paddock users' token file). It is exchanged for a session and is not kept by this page."),
      err),
    // Single sign-on through the company's identity provider goes here
    // once the server is configured with one.
    h("div", { id: "signin-providers" }),
    h("div", { class: "row" }, h("button", { type: "submit", class: "primary" }, "Sign in")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    err.textContent = "";
    if (!token.value.trim()) {
      token.setAttribute("aria-invalid", "true");
      err.textContent = "Enter your access token.";
      token.focus();
      return;
    }
    try {
      session = await call("POST", "/console/session", { token: token.value.trim() });
      localStorage.setItem(CSRF_KEY, session.csrfToken);
      token.value = "";
      await start();
    } catch (ex) {
      session = null;
      token.setAttribute("aria-invalid", "true");
      err.textContent = ex.status === 401 ? "That token is not valid." : `Cannot sign in: ${ex.message}`;
      token.focus();
    }
  });
  document.title = "Sign in · Paddock";
  main.replaceChildren(form);
  token.focus();
}

async function signOut() {
  try { await call("DELETE", "/console/session"); } catch { /* signed out anyway */ }
  session = null;
  localStorage.removeItem(CSRF_KEY);
  signIn("Your session is closed.");
}

async function renderNav() {
  const links = [["#/orgs", "Organizations"]];
  const hosts = await can("list", "hosts");
  if (!session) return;
  if (hosts) links.push(["#/hosts", "Hosts"]);
  nav.replaceChildren(...links.map(([href, text]) => h("a", { href }, text)));
  who.replaceChildren(
    h("span", { class: "who-name" }, "Signed in as ", h("strong", { id: "who-user" }, session.user)),
    h("button", { type: "button", class: "link", on: { click: signOut } }, "Sign out"));
  markNav();
}

function markNav() {
  for (const a of nav.querySelectorAll("a")) {
    const here = location.hash === a.getAttribute("href") || location.hash.startsWith(`${a.getAttribute("href")}/`);
    if (here) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
}

const ROUTES = [
  [/^#?\/?$/, home],
  [/^#\/orgs$/, orgsPage],
  [/^#\/orgs\/([^/]+)$/, clustersPage],
  [/^#\/orgs\/([^/]+)\/new$/, createPage],
  [/^#\/orgs\/([^/]+)\/clusters\/([^/]+)$/, clusterPage],
  [/^#\/orgs\/([^/]+)\/machines\/([^/]+)\/console$/, consolePage],
  [/^#\/hosts$/, hostsPage],
];

function route() {
  if (!session) return;
  leave();
  markNav();
  for (const [re, fn] of ROUTES) {
    const m = re.exec(location.hash);
    if (m) {
      let args;
      try {
        args = m.slice(1).map(decodeURIComponent);
      } catch {
        break;
      }
      // Focus first: a page may move it on (to its form's first field).
      main.focus({ preventScroll: true });
      fn(...args);
      return;
    }
  }
  main.replaceChildren(...title("Not found"), h("p", {}, "No page here. ", h("a", { href: "#/" }, "Start again")));
}

async function start() {
  await renderNav();
  route();
}

window.addEventListener("hashchange", route);

// The skip link moves focus without changing the route.
document.querySelector(".skip")?.addEventListener("click", (e) => {
  e.preventDefault();
  main.focus();
});

(async () => {
  const csrfToken = localStorage.getItem(CSRF_KEY);
  if (csrfToken) {
    session = { csrfToken };
    try {
      session = { ...(await call("GET", "/console/session")), csrfToken };
    } catch {
      session = null;
      localStorage.removeItem(CSRF_KEY);
    }
  }
  if (session) await start(); else signIn();
})();

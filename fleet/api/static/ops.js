// Ops running the fleet (docs/ops.md), one sub-page each under #/ops/<page>:
//   alerts        every kit's alerts, filtered by rule, kit, state and severity; acknowledge many at once
//   users         add a user, change their role and scope, disable them, give a new password
//   kits          register (or update) a kit from its manifest
//   audit         who did what, filtered by who, action, kit and time
//   dead-letters  rejected messages counted per reason, and the latest of a reason
//   machines      machine tokens (machines.js); notify: notification targets and escalation (notify.js)
// For ops only: the API refuses these routes to crew and venue users, and the nav link stays hidden.
//
// A secret is shown once: a new password is in the one answer that made it (POST
// /api/v1/users/<name>/password) and on screen until ops press "done"; it is never stored by the
// page, and nothing lists it again. Plain DOM, as app.js; every answer's refusal shown as text.

import { $, esc, request, say, why } from "./http.js";
import { machinesPage } from "./machines.js";
import { notifyPage } from "./notify.js";

const API = "/api/v1";
const enc = encodeURIComponent;

// The alert rules the fleet evaluates (fleet/alerts/rules.py RULES; the API refuses any other).
const RULES = ["low_soc", "forecast_short", "device_offline", "paper_out", "bms_protection", "scanner_errors",
  "kit_not_ready", "config_not_applied", "clock_unset", "clock_drift", "orders_not_uploaded", "double_entry"];
const PAGES = [["alerts", "Alerts"], ["users", "Users"], ["kits", "Kits"], ["audit", "Audit log"], ["dead-letters", "Dead letters"], ["machines", "Machine tokens"], ["notify", "Notifications"]];
const AUDIT_PAGE = 100;

// built: the sub-page on screen (built once per visit, so a stream's redraw never wipes a form).
// asked: a count per list of the requests made, so only the latest one's answer is drawn (two filter
// changes in a row send two requests, whose answers may come back in either order).
const ctx = { me: null, page: null, built: null, users: new Map(), alertsCursor: null, auditLast: null,
  asked: { alerts: 0, audit: 0 } };
// Any navigation builds the next visit afresh, and takes any password left on screen with it.
// (This module is evaluated before app.js: its listener runs before app.js's draws.)
window.addEventListener("hashchange", () => { ctx.built = null; });

export const opsRoute = () => {
  const m = location.hash.match(/^#\/ops(?:\/([a-z-]+))?$/);
  if (!m) return null;
  const sub = m[1] ?? "alerts";
  return PAGES.some(([p]) => p === sub) ? { page: sub } : null;
};

export function initOps(me) {
  ctx.me = me;
  const link = $("[data-testid=ops-link]");
  if (link) link.hidden = me.role !== "ops";
}

// ------------------------------------------------------------------ API

const call = (path, method, body) => request(API + path, method, body);


const when = ms => ms == null ? "" : new Date(ms).toLocaleString();
const list = s => s.split(/[\s,]+/).map(x => x.trim()).filter(Boolean);
const options = (values, selected, blank) => (blank ? `<option value="">${esc(blank)}</option>` : "")
  + values.map(v => `<option value="${esc(v)}"${v === selected ? " selected" : ""}>${esc(v)}</option>`).join("");

// ------------------------------------------------------------------ the page and its nav

export function renderOps(page) {
  const r = opsRoute();
  if (!r) return;
  ctx.page = page;
  if (ctx.me && ctx.me.role !== "ops") {
    page.innerHTML = `<p class="card" data-testid="ops-refused">The ops pages are for ops users.</p>`;
    return;
  }
  if (ctx.built === r.page) return;  // built once per sub-page: forms keep what is typed
  ctx.built = r.page;
  page.innerHTML = `<nav class="o-nav" aria-label="ops pages">${PAGES.map(([p, label]) =>
    `<a href="#/ops/${p}" data-testid="ops-nav-${p}"${p === r.page ? ' aria-current="page"' : ""}>${label}</a>`).join("")}</nav>
    <div id="ops-body"></div>`;
  const body = $("#ops-body", page);
  ({ alerts: alertsPage, users: usersPage, kits: kitsPage, audit: auditPage, "dead-letters": deadLettersPage, machines: machinesPage, notify: notifyPage })[r.page](body);
}

// ------------------------------------------------------------------ alerts

function alertsPage(body) {
  body.innerHTML = `<section class="card" data-testid="ops-alerts"><h2>Alerts</h2>
    <form id="o-alert-filter" class="o-filters" data-testid="ops-alert-filter">
      <label>Rule <select name="rule">${options(RULES, "", "any rule")}</select></label>
      <label>Kit <input name="kit" maxlength="63" autocomplete="off" placeholder="any kit"></label>
      <label>State <select name="state">${options(["active", "open", "acknowledged", "resolved"], "active", "any state")}</select></label>
      <label>Severity <select name="severity">${options(["warning", "critical"], "", "any severity")}</select></label>
      <button type="submit">show</button>
    </form>
    <form id="o-ack" class="o-filters" data-testid="ops-ack-form">
      <label>Note <input name="note" maxlength="500" autocomplete="off" placeholder="optional: who is on it"></label>
      <button type="submit" data-testid="ops-ack-selected">acknowledge selected</button>
    </form>
    <p id="o-ack-status" class="small" role="status" data-testid="ops-ack-status"></p>
    <div class="o-scroll"><table data-testid="ops-alert-table"><thead><tr>
      <th><input type="checkbox" id="o-all" aria-label="select every alert shown"></th>
      <th>kit</th><th>subject</th><th>rule</th><th>severity</th><th>state</th><th>message</th><th>since</th><th>seen</th></tr></thead>
      <tbody id="o-alert-rows"></tbody></table></div>
    <p id="o-alert-status" class="muted" role="status" data-testid="ops-alert-status">loading…</p>
    <p><button type="button" id="o-alert-more" hidden>show more</button></p></section>`;
  const filter = $("#o-alert-filter", body);
  filter.addEventListener("submit", ev => { ev.preventDefault(); loadAlerts(body, false); });
  filter.addEventListener("change", () => loadAlerts(body, false));
  $("#o-all", body).addEventListener("change", ev => {
    body.querySelectorAll("input[data-alert-id]").forEach(x => { x.checked = ev.target.checked; });
  });
  $("#o-ack", body).addEventListener("submit", ev => { ev.preventDefault(); acknowledgeSelected(body); });
  $("#o-alert-more", body).addEventListener("click", () => loadAlerts(body, true));
  loadAlerts(body, false);
}

function alertQuery(body, more) {
  const f = new FormData($("#o-alert-filter", body));
  const p = new URLSearchParams({ limit: "100" });
  for (const k of ["rule", "kit", "state", "severity"]) {
    const v = String(f.get(k) ?? "").trim();
    if (v) p.set(k, v);
  }
  if (more && ctx.alertsCursor) p.set("cursor", ctx.alertsCursor);
  return p;
}

async function loadAlerts(body, more) {
  const status = $("#o-alert-status", body), rows = $("#o-alert-rows", body);
  const n = ++ctx.asked.alerts;
  const r = await call(`/alerts?${alertQuery(body, more)}`);
  if (n !== ctx.asked.alerts) return;  // a newer request's answer draws the list
  if (!r.ok) { say(status, why(r), false); return; }
  const html = r.body.items.map(a => `<tr data-testid="ops-alert-${a.id}" data-state="${esc(a.state)}" data-rule="${esc(a.rule)}">
    <td><input type="checkbox" data-alert-id="${a.id}" aria-label="select alert ${a.id}: ${esc(a.subject)} ${esc(a.rule)}"${a.state === "resolved" ? " disabled" : ""}></td>
    <td><a href="#/kit/${enc(a.kit_id)}">${esc(a.kit_id)}</a></td><td>${esc(a.subject)}</td><td>${esc(a.rule)}</td>
    <td><span class="badge ${esc(a.severity)}">${esc(a.severity)}</span></td>
    <td>${esc(a.state)}${a.acknowledged_by ? `<div class="small muted">by ${esc(a.acknowledged_by)}</div>` : ""}</td>
    <td>${esc(a.message)}</td><td>${esc(when(a.first_seen_ms))}</td><td>${esc(when(a.last_seen_ms))}</td></tr>`).join("");
  if (more) rows.insertAdjacentHTML("beforeend", html); else rows.innerHTML = html;
  if (!more) $("#o-all", body).checked = false;
  ctx.alertsCursor = r.body.next_cursor;
  $("#o-alert-more", body).hidden = r.body.next_cursor == null;
  const shown = rows.children.length;
  say(status, shown ? `${shown} alert${shown === 1 ? "" : "s"} shown` : "no alert matches", true);
}

async function acknowledgeSelected(body) {
  const status = $("#o-ack-status", body);
  const ids = [...body.querySelectorAll("input[data-alert-id]:checked")].map(x => +x.dataset.alertId);
  if (!ids.length) { say(status, "select the alerts to acknowledge first", false); return; }
  const note = String(new FormData($("#o-ack", body)).get("note") ?? "").trim();
  const r = await call("/alerts/acknowledge", "POST", { ids, ...(note ? { note } : {}) });
  if (!r.ok) { say(status, why(r), false); return; }
  const n = o => r.body.items.filter(x => x.outcome === o).length;
  const parts = [`${n("done")} acknowledged`];
  if (n("already")) parts.push(`${n("already")} were already`);
  if (n("resolved")) parts.push(`${n("resolved")} resolved meanwhile`);
  if (n("missing")) parts.push(`${n("missing")} gone`);
  say(status, parts.join(", "), true);
  $("#o-ack", body).reset();
  await loadAlerts(body, false);
}

// ------------------------------------------------------------------ users

function usersPage(body) {
  body.innerHTML = `<section class="card" data-testid="ops-users"><h2>Users</h2>
    <div class="o-scroll"><table><thead><tr><th>name</th><th>role</th><th>sees</th><th>status</th><th>changed</th><th><span class="o-sr">actions</span></th></tr></thead>
    <tbody id="o-user-rows"></tbody></table></div>
    <p id="o-user-status" class="small" role="status" data-testid="ops-user-status"></p>
    <div id="o-secret" class="o-secret" data-testid="ops-secret" hidden></div></section>
    <section class="card o-gap"><h2 id="o-user-form-title">Add a user</h2>
    <form id="o-user-form" class="o-form" data-testid="ops-user-form">
      <label>Name <input name="name" required maxlength="63" pattern="[a-z0-9][a-z0-9._@\\-]{0,62}" autocomplete="off"
        aria-describedby="o-name-help"></label>
      <p id="o-name-help" class="small muted">lower case: letters, digits and . _ @ -</p>
      <label>Role <select name="role">${options(["crew", "venue", "ops"], "crew")}</select></label>
      <label>Kits (crew) <input name="kits" autocomplete="off" placeholder="kit ids, comma separated"></label>
      <label>Venues (venue users) <input name="venues" autocomplete="off" placeholder="venue ids, comma separated"></label>
      <div class="o-row"><button type="submit" data-testid="ops-user-save">add the user</button>
        <button type="button" id="o-user-cancel" hidden>cancel the change</button></div>
      <p class="small muted">A new user gets a generated password, shown here once: hand it over, then press done.</p>
    </form></section>`;
  const form = $("#o-user-form", body);
  form.addEventListener("submit", ev => { ev.preventDefault(); saveUser(body); });
  $("#o-user-cancel", body).addEventListener("click", () => editUser(body, null));
  body.addEventListener("click", ev => {
    const b = ev.target.closest("button[data-user]");
    if (!b) return;
    const { user, act } = b.dataset;
    if (act === "edit") editUser(body, ctx.users.get(user));
    if (act === "disable" || act === "enable") setDisabled(body, ctx.users.get(user), act === "disable");
    if (act === "password" && window.confirm(`Give ${user} a new password? Their sessions end.`)) newPassword(body, user);
    if (act === "done") hideSecret(body);
  });
  loadUsers(body);
}

async function loadUsers(body) {
  const r = await call("/users");
  const status = $("#o-user-status", body);
  if (!r.ok) { say(status, why(r), false); return; }
  ctx.users = new Map(r.body.map(u => [u.name, u]));
  const self = ctx.me?.name;
  $("#o-user-rows", body).innerHTML = r.body.map(u => {
    const sees = u.role === "ops" ? "the whole fleet" : u.role === "crew" ? (u.kits.join(", ") || "no kit") : (u.venues.join(", ") || "no venue");
    const state = u.disabled ? "disabled" : u.has_password ? "active" : "no password yet";
    const mine = u.name === self;  // the API refuses disabling yourself: no button for it
    return `<tr data-testid="ops-user-${esc(u.name)}" data-disabled="${u.disabled}">
      <td>${esc(u.name)}</td><td>${esc(u.role)}</td><td>${esc(sees)}</td>
      <td><span class="badge ${u.disabled ? "offline" : u.has_password ? "ok" : "pending"}">${esc(state)}</span></td>
      <td>${esc(when(u.updated_ms))}</td>
      <td class="o-actions"><button type="button" data-user="${esc(u.name)}" data-act="edit" aria-label="change ${esc(u.name)}'s role or scope">change</button>
        ${mine ? "" : `<button type="button" data-user="${esc(u.name)}" data-act="${u.disabled ? "enable" : "disable"}"
          aria-label="${u.disabled ? "enable" : "disable"} ${esc(u.name)}">${u.disabled ? "enable" : "disable"}</button>`}
        <button type="button" data-user="${esc(u.name)}" data-act="password" aria-label="new password for ${esc(u.name)}">new password</button></td></tr>`;
  }).join("");
}

// The form changes a user when one is picked ("change"), else adds one.
function editUser(body, user) {
  const form = $("#o-user-form", body);
  form.reset();
  form.dataset.editing = user ? user.name : "";
  form.elements.name.readOnly = !!user;
  if (user) {
    form.elements.name.value = user.name;
    form.elements.role.value = user.role;
    form.elements.kits.value = user.kits.join(", ");
    form.elements.venues.value = user.venues.join(", ");
  }
  $("#o-user-form-title", body).textContent = user ? `Change ${user.name}` : "Add a user";
  $("[data-testid=ops-user-save]", body).textContent = user ? "save the change" : "add the user";
  $("#o-user-cancel", body).hidden = !user;
  form.elements[user ? "role" : "name"].focus();
}

async function saveUser(body) {
  const form = $("#o-user-form", body), status = $("#o-user-status", body);
  const f = new FormData(form);
  const name = String(f.get("name")).trim(), role = String(f.get("role"));
  const editing = form.dataset.editing ? ctx.users.get(form.dataset.editing) : null;
  if (!editing && ctx.users?.has(name)) { say(status, `${name} exists already: use its "change" button`, false); return; }
  // Scope only for the role that has it: the API refuses kits on a venue user and venues on crew.
  const payload = { role, kits: role === "crew" ? list(String(f.get("kits"))) : [],
    venues: role === "venue" ? list(String(f.get("venues"))) : [], disabled: editing?.disabled ?? false };
  const r = await call(`/users/${enc(name)}`, "PUT", payload);
  if (!r.ok) { say(status, `${name}: ${why(r)}`, false); return; }
  if (editing) {
    say(status, `${name} changed`, true);
  } else {
    const p = await call(`/users/${enc(name)}/password`, "POST");
    if (!p.ok) say(status, `${name} added, but no password yet: ${why(p)}`, false);
    else { showSecret(body, name, p.body.password); say(status, `${name} added`, true); }
  }
  editUser(body, null);
  await loadUsers(body);
}

async function setDisabled(body, user, disabled) {
  const status = $("#o-user-status", body);
  const r = await call(`/users/${enc(user.name)}`, "PUT", { role: user.role, kits: user.kits, venues: user.venues, disabled });
  if (!r.ok) { say(status, `${user.name}: ${why(r)}`, false); return; }
  say(status, disabled ? `${user.name} disabled: they cannot sign in, and their sessions ended` : `${user.name} enabled`, true);
  await loadUsers(body);
}

async function newPassword(body, name) {
  const status = $("#o-user-status", body);
  const r = await call(`/users/${enc(name)}/password`, "POST");
  if (!r.ok) { say(status, `${name}: ${why(r)}`, false); return; }
  showSecret(body, name, r.body.password);
  say(status, `${name} has a new password; their sessions ended`, true);
  await loadUsers(body);
}

function showSecret(body, name, password) {
  const box = $("#o-secret", body);
  box.innerHTML = `<p><strong>${esc(name)}</strong>'s password, shown this once (the fleet keeps only its hash):</p>
    <p><code data-testid="ops-secret-value">${esc(password)}</code></p>
    <button type="button" data-user="${esc(name)}" data-act="done" data-testid="ops-secret-done">done: hide it</button>`;
  box.hidden = false;
  box.querySelector("button").focus();
}

function hideSecret(body) {
  const box = $("#o-secret", body);
  box.textContent = "";
  box.hidden = true;
}

// ------------------------------------------------------------------ kits

function kitsPage(body) {
  body.innerHTML = `<section class="card" data-testid="ops-kits"><h2>Register a kit</h2>
    <form id="o-kit-form" class="o-form" data-testid="ops-kit-form">
      <label>Manifest file <input type="file" name="file" accept=".toml,text/plain"></label>
      <label>Manifest (TOML) <textarea name="manifest" rows="14" required spellcheck="false"
        placeholder='id = "my-kit"&#10;name = "My kit"&#10;agent = "my-agent"&#10;...'></textarea></label>
      <p class="small muted">The kit's id is the manifest's own <code>id</code>; registering it again updates the kit and its devices.</p>
      <div class="o-row"><button type="submit" data-testid="ops-kit-register">register the kit</button></div>
      <p id="o-kit-status" class="small" role="status" data-testid="ops-kit-status"></p>
    </form></section>
    <section class="card o-gap"><h2>Registered kits</h2><div class="o-scroll"><table><thead><tr><th>kit</th><th>name</th><th>devices</th><th>state</th></tr></thead>
    <tbody id="o-kit-rows"></tbody></table></div></section>`;
  const form = $("#o-kit-form", body);
  form.elements.file.addEventListener("change", async ev => {
    const file = ev.target.files[0];
    if (file) form.elements.manifest.value = await file.text();
  });
  form.addEventListener("submit", ev => { ev.preventDefault(); registerKit(body); });
  loadKits(body);
}

async function loadKits(body) {
  const r = await call("/kits?limit=1000");
  if (!r.ok) { $("#o-kit-rows", body).innerHTML = `<tr><td colspan="4">${esc(why(r))}</td></tr>`; return; }
  $("#o-kit-rows", body).innerHTML = r.body.items.map(k => `<tr data-testid="ops-kit-${esc(k.id)}">
    <td><a href="#/kit/${enc(k.id)}">${esc(k.id)}</a></td><td>${esc(k.name)}</td>
    <td>${esc(k.devices_online ?? 0)} of ${esc(k.devices_total ?? k.devices?.length ?? 0)} online</td>
    <td><span class="badge ${esc(k.state ?? "")}">${esc(k.state ?? "")}</span></td></tr>`).join("");
}

async function registerKit(body) {
  const form = $("#o-kit-form", body), status = $("#o-kit-status", body);
  const text = form.elements.manifest.value;
  // The id the manifest names at its top level (before any [table]); the fleet checks it again.
  const top = text.split(/^\s*\[/m)[0];
  const m = top.match(/^\s*id\s*=\s*["']([^"']+)["']/m);
  if (!m) { say(status, 'the manifest names no kit: it needs a line id = "<kit id>" before its first [table]', false); return; }
  const r = await call(`/kits/${enc(m[1])}`, "PUT", text);
  if (!r.ok) { say(status, why(r), false); return; }
  say(status, `kit ${r.body.id} registered with ${r.body.devices.length} devices: ${r.body.devices.map(d => d.id).join(", ")}`, true);
  await loadKits(body);
}

// ------------------------------------------------------------------ audit log

function auditPage(body) {
  body.innerHTML = `<section class="card" data-testid="ops-audit"><h2>Audit log</h2>
    <form id="o-audit-filter" class="o-filters" data-testid="ops-audit-filter">
      <label>Who <input name="by" maxlength="63" autocomplete="off" placeholder="anyone"></label>
      <label>Action <input name="action" maxlength="100" autocomplete="off" placeholder="e.g. users, command, alert"></label>
      <label>Kit <input name="kit" maxlength="63" autocomplete="off" placeholder="any kit"></label>
      <label>From <input name="since" type="datetime-local"></label>
      <label>Until <input name="until" type="datetime-local"></label>
      <button type="submit">show</button>
    </form>
    <div class="o-scroll"><table data-testid="ops-audit-table"><thead><tr><th>when</th><th>who</th><th>what</th><th>on</th><th>result</th></tr></thead>
    <tbody id="o-audit-rows"></tbody></table></div>
    <p id="o-audit-status" class="muted" role="status" data-testid="ops-audit-status">loading…</p>
    <p><button type="button" id="o-audit-more" hidden>older</button></p></section>`;
  $("#o-audit-filter", body).addEventListener("submit", ev => { ev.preventDefault(); loadAudit(body, false); });
  $("#o-audit-more", body).addEventListener("click", () => loadAudit(body, true));
  loadAudit(body, false);
}

// datetime-local is the browser's local time: Date parses it as such.
const localMs = v => v ? new Date(v).getTime() : null;

async function loadAudit(body, more) {
  const status = $("#o-audit-status", body), rows = $("#o-audit-rows", body);
  const f = new FormData($("#o-audit-filter", body));
  const p = new URLSearchParams({ limit: String(AUDIT_PAGE) });
  for (const k of ["by", "action", "kit"]) {
    const v = String(f.get(k) ?? "").trim();
    if (v) p.set(k, v);
  }
  const since = localMs(f.get("since")), until = localMs(f.get("until"));
  if (since != null) p.set("since", String(since));
  const before = more ? ctx.auditLast : until;
  if (before != null) p.set("before", String(before));
  const n = ++ctx.asked.audit;
  const r = await call(`/audit?${p}`);
  if (n !== ctx.asked.audit) return;  // a newer request's answer draws the list
  if (!r.ok) { say(status, why(r), false); return; }
  const html = r.body.map(a => `<tr data-testid="ops-audit-row" data-by="${esc(a.by)}"><td>${esc(when(a.ts))}</td><td>${esc(a.by ?? "")}</td>
    <td>${esc(a.what)}</td><td>${esc(a.target)}</td><td>${esc(a.result)}</td></tr>`).join("");
  if (more) rows.insertAdjacentHTML("beforeend", html); else rows.innerHTML = html;
  ctx.auditLast = r.body.length ? r.body[r.body.length - 1].ts : ctx.auditLast;
  $("#o-audit-more", body).hidden = r.body.length < AUDIT_PAGE;
  const shown = rows.children.length;
  say(status, shown ? `${shown} entr${shown === 1 ? "y" : "ies"}, newest first` : "nothing matches", true);
}

// ------------------------------------------------------------------ dead letters

function deadLettersPage(body) {
  body.innerHTML = `<section class="card" data-testid="ops-dead-letters"><h2>Dead letters by reason</h2>
    <p class="small muted">Messages the fleet refused to store, kept with why: a device sending what the contract does not allow, or one the fleet does not know.</p>
    <div class="o-scroll"><table><thead><tr><th>reason</th><th>messages</th><th>newest</th><th><span class="o-sr">show</span></th></tr></thead>
    <tbody id="o-reason-rows"></tbody></table></div>
    <p id="o-dl-status" class="muted" role="status">loading…</p></section>
    <section class="card o-gap" id="o-dl-list" data-testid="ops-dead-letter-list" hidden></section>`;
  body.addEventListener("click", ev => {
    const b = ev.target.closest("button[data-reason]");
    if (b) showReason(body, b.dataset.reason);
  });
  loadReasons(body);
}

async function loadReasons(body) {
  const r = await call("/dead-letters/reasons");
  const status = $("#o-dl-status", body);
  if (!r.ok) { say(status, why(r), false); return; }
  $("#o-reason-rows", body).innerHTML = r.body.map(x => `<tr data-testid="ops-reason-${esc(x.reason)}" data-count="${x.count}">
    <td>${esc(x.reason)}</td><td>${x.count}</td><td>${esc(when(x.last_ms))}</td>
    <td><button type="button" data-reason="${esc(x.reason)}" aria-label="show the latest ${esc(x.reason)}">show the latest</button></td></tr>`).join("");
  say(status, r.body.length ? "" : "no dead letters: every message was stored", true);
}

async function showReason(body, reason) {
  const box = $("#o-dl-list", body);
  box.hidden = false;
  box.innerHTML = `<h2>Latest ${esc(reason)}</h2><p class="muted" role="status">loading…</p>`;
  const r = await call(`/dead-letters?reason=${enc(reason)}&limit=50`);
  if (!r.ok) { say(box.querySelector("p"), why(r), false); return; }
  box.innerHTML = `<h2>Latest ${esc(reason)}</h2><div class="o-scroll"><table><thead><tr><th>when</th><th>topic</th><th>why</th><th>bytes</th><th>payload (start)</th></tr></thead>
    <tbody>${r.body.map(d => `<tr data-testid="ops-dead-letter-${d.id}"><td>${esc(when(d.received_ms))}</td><td>${esc(d.topic)}</td>
      <td>${esc(d.detail)}</td><td>${d.payload_size}</td><td><code>${esc(d.payload_head)}</code></td></tr>`).join("")}</tbody></table></div>`;
  box.querySelector("h2").tabIndex = -1;
  box.querySelector("h2").focus();
}

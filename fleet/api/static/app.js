// The fleet dashboard: overview of every kit (#/) and one kit's page (#/kit/<id>).
// Data comes from the fleet's JSON API; GET /api/v1/stream (server-sent events) says what changed,
// and the page re-fetches just that. No build step; the charts are uPlot's (charts.js, vendor/).

import { showLogin, whoAmI, wireLogin } from "./login.js";
import { renderVenue, renderVenues, venueRoute, wireVenueEvents } from "./venues.js";
import { initUpdates, kitUpdatesFor, renderUpdatesPage, updatesChanged, updatesRoute } from "./updates.js";
import { initRetail, renderRetail, retailChanged, retailRoute, wireRetailEvents } from "./retail.js";
import { timeLine } from "./charts.js";
import { initOps, opsRoute, renderOps } from "./ops.js";
import { crewChanged, crewRoute, initCrew, renderCrew } from "./crew.js";

const API = "/api/v1";
const $ = (sel, root = document) => root.querySelector(sel);
const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const enc = encodeURIComponent;

const PAGE = 100;        // kits per overview page (GET /api/v1/kits?limit=)

const state = {
  kits: new Map(),       // id -> kit JSON: a summary from /api/v1/kits, or the whole view from /api/v1/kits/<id>
  order: [],             // the overview's kits, in the server's order (filtered and searched by the server)
  list: null,            // the last overview page's totals: {total, next_offset, fleet: {state, status}}
  commands: new Map(),   // device id -> latest command we sent from this page (with its status)
  history: new Map(),    // device id -> {window_ms, items}
  checkins: new Map(),   // kit id -> its latest door scans, newest scan first
  alerts: null,          // kit id -> active alerts; null when this fleet has no alerts API
  chartWindow: 3600_000, // battery chart span
  loaded: false,
};

async function getJSON(path, opts) {
  const r = await fetch(API + path, opts);
  if (r.status === 401) showLogin("your session ended: sign in again");
  if (!r.ok) throw new Error(`${r.status} ${(await r.text()).slice(0, 200)}`);
  return r.json();
}

// ------------------------------------------------------------------ formatting

function age(ms) {
  if (ms == null) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return new Date(ms).toLocaleString();
}
const ageSpan = ms => `<span data-age="${ms ?? ""}">${age(ms)}</span>`;

function kitState(k) {
  if (k.state) return k.state;
  if (!k.devices_total || k.devices_online === 0) return "offline";
  return k.devices_online === k.devices_total ? "online" : "degraded";
}

function battery(b) {
  if (!b) return "no reading yet";
  const parts = [];
  if (b.soc != null) parts.push(`${b.soc.toFixed(1)} %`);
  if (b.v != null) parts.push(`${b.v.toFixed(2)} V`);
  if (b.i != null) parts.push(`${b.i.toFixed(2)} A`);
  if (b.ttg != null && b.ttg >= 0) parts.push(`${b.ttg} min left`);
  return parts.join(" · ");
}

// Health, forecast and readiness come with the kit JSON when the fleet computes them; each is
// shown when present and skipped when not.
function hours(h) {
  return h >= 48 ? `${(h / 24).toFixed(1)} days` : h >= 1 ? `${h.toFixed(1)} h` : `${Math.round(h * 60)} min`;
}

function forecastText(f) {
  if (!f) return "";
  if (f.hours_left == null) return f.reason ? `no forecast: ${f.reason}` : "";
  let t = `${hours(f.hours_left)} left`;
  if (f.empty_at_ms) t += ` (empty ~${new Date(f.empty_at_ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })})`;
  if (f.lasts_until_end === true) t += ` · lasts the event` + (f.margin_min != null ? ` (+${Math.round(f.margin_min)} min)` : "");
  if (f.lasts_until_end === false) t += ` · SHORT by ${Math.round(-(f.margin_min ?? 0))} min before the event ends`;
  return t;
}

function forecast(k) {
  const fs = Array.isArray(k.batteries) ? k.batteries : [];
  const lines = fs.map(f => [f, forecastText(f)]).filter(([, t]) => t);
  return lines.map(([f, t]) => `<div class="small${f.lasts_until_end === false ? " warn" : f.hours_left == null ? " muted" : ""}" data-testid="forecast">`
    + `forecast${fs.length > 1 ? ` ${esc(f.device_id)}` : ""}: ${esc(t)}</div>`).join("");
}

const QUIET = new Set(["ok", "unknown"]);

// Open alerts: the fleet's alerts (GET /api/v1/alerts, open or acknowledged) when it has them;
// otherwise what the health checks say is wrong with the kit's devices right now.
function alertsOf(k) {
  if (state.alerts) {
    return (state.alerts.get(k.id) ?? []).map(a => ({ id: a.id, state: a.state, severity: a.severity, device: a.subject,
      what: a.message + (a.state === "acknowledged" ? ` (acknowledged by ${a.acknowledged_by})` : "") }));
  }
  const out = [];
  for (const d of k.devices) {
    const h = d.health;
    if (!h) continue;
    if (h.status === "offline" || h.status === "silent") {
      out.push({ severity: "fault", device: d.id, what: h.status === "silent"
        ? `silent: nothing for ${Math.round(h.since_seen_s ?? 0)} s` : "offline" });
    }
    for (const r of h.reasons ?? []) out.push({ severity: r.severity, device: d.id, what: r.what, code: r.code });
  }
  for (const f of k.batteries ?? []) {
    if (f.lasts_until_end === false) out.push({ severity: "warning", device: f.device_id, what: `battery runs out before the event ends` });
  }
  return out;
}

// withActions: the kit page offers acknowledge (stops repeat notifications) and resolve on fleet alerts.
const alertList = (alerts, withActions = false) => alerts.length ? `<ul class="alerts" data-testid="alerts">${alerts.map(a =>
  `<li class="${esc(a.severity)}" data-testid="alert-${esc(a.id ?? "")}" data-state="${esc(a.state ?? "")}"><strong>${esc(a.device)}</strong>: ${esc(a.what)}${
    withActions && a.id != null ? `${a.state === "open" ? ` <button type="button" data-alert="${a.id}" data-alert-action="acknowledge">acknowledge</button>` : ""}
      <button type="button" data-alert="${a.id}" data-alert-action="resolve">resolve</button>` : ""}</li>`).join("")}</ul>` : "";

async function alertAction(id, action) {
  const r = await fetch(`${API}/alerts/${enc(id)}/${action}`, { method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ by: "dashboard" }) });
  if (!r.ok) { $("#status").textContent = `${action} failed: ${r.status}`; return; }
  await loadAlerts().catch(() => {});
  render();
}

function healthBadge(h) {
  return h && !QUIET.has(h.status) ? ` <span class="badge ${esc(h.status)}" data-testid="health" title="fleet health">${esc(h.status)}</span>` : "";
}

// ------------------------------------------------------------------ overview

function kitCard(k) {
  const st = kitState(k);
  const alerts = alertsOf(k);
  return `<article class="card kit" data-testid="kit-${esc(k.id)}" data-kit="${esc(k.id)}" data-state="${st}">
    <h2><a href="#/kit/${enc(k.id)}">${esc(k.name)}</a><span><span class="badge ${st}" data-testid="kit-state">${st}</span>${st === "online" ? healthBadge(k.health) : ""}</span></h2>
    <div class="muted small">${esc(k.id)} · ${k.devices_online}/${k.devices_total} devices online</div>
    <div>battery: <span class="battery" data-testid="battery">${esc(battery(k.battery))}</span></div>
    ${forecast(k)}
    ${alertList(alerts)}
    <ul class="chips">${k.devices.map(d => `<li class="chip" data-testid="device-${esc(d.id)}" data-device="${esc(d.id)}"
      data-online="${d.online}" title="${esc(d.role)} · ${d.online ? "online" : "offline"}"><span class="dot"></span>${esc(d.id)}</li>`).join("")}</ul>
  </article>`;
}

function renderOverview() {
  const shown = state.order.map(id => state.kits.get(id)).filter(Boolean);
  const filtered = !!($("#search").value.trim() || $("#state-filter").value);
  const fleet = state.list?.fleet?.state ?? {};
  const all = Object.values(fleet).reduce((a, b) => a + b, 0);
  $("#kits").innerHTML = shown.map(kitCard).join("")
    || `<p>${all ? "No kit matches." : state.loaded ? "No kits registered." : ""}</p>`;
  const more = $("#more");
  more.hidden = state.list?.next_offset == null;
  more.textContent = `show more (${shown.length} of ${state.list?.total ?? 0})`;
  $("#status").textContent = state.loaded
    ? `${all} kit${all === 1 ? "" : "s"}, ${all - (fleet.online ?? 0)} not fully online`
      + (filtered ? ` · ${state.list.total} match` : shown.length < all ? ` · showing ${shown.length}` : "")
    : "loading…";
}

// ------------------------------------------------------------------ kit page

function powerDevice(k) {
  return k.devices.find(d => d.latest && d.latest.battery) || k.devices.find(d => d.role === "powerbank");
}

// Who can reboot: the ESP32s (a board reset) and the agent (its service restarts); hosted parts cannot.
const REBOOTS = new Set(["scanner", "lighting", "agent"]);

function deviceRow(d) {
  const cmd = state.commands.get(d.id);
  const printer = d.role === "printer";
  const extra = [d.model, d.fw ? `fw ${d.fw}` : "", d.config_version != null ? `config v${d.config_version}` : "",
    d.host_id ? `via ${d.host_id}` : "", d.clock ? `clock ${d.clock}` : "",
    d.reset_cause && d.reset_cause !== "power" ? `last reset: ${d.reset_cause}` : ""].filter(Boolean).join(" · ");
  const gaps = d.health?.gaps ? ` · ${d.health.gaps} gaps` : "";
  return `<li class="device" data-testid="device-${esc(d.id)}" data-device="${esc(d.id)}" data-online="${d.online}">
    <div><span class="dot"></span><strong>${esc(d.id)}</strong> <span class="muted">${esc(d.role)}</span></div>
    <span><span class="badge ${d.online ? "online" : "offline"}" data-testid="online">${d.online ? "online" : "offline"}</span>${d.health?.status === "offline" ? "" : healthBadge(d.health)}</span>
    <div class="meta small muted">${esc(extra)} · last seen ${ageSpan(d.last_seen_ms)} · ${d.received} messages${gaps}</div>
    <div class="actions">
      <button type="button" data-action="identify" data-target="${esc(d.id)}" data-testid="identify-${esc(d.id)}"
        title="${printer ? "a printer identifies itself by printing its self-test label" : "flash, beep or self-test, as the device can"}">${printer ? "print test label" : "identify"}</button>
      ${REBOOTS.has(d.role) ? `<button type="button" data-action="reboot" data-confirm="Reboot ${esc(d.id)}? It is offline for a few seconds." data-target="${esc(d.id)}" data-testid="reboot-${esc(d.id)}"
        title="${d.role === "agent" ? "restart the agent (its service starts it again)" : "reset the board; it comes back in its scene or at the door"}">reboot</button>` : ""}
      <span class="cmd-status" data-testid="cmd-${esc(d.id)}" data-status="${esc(cmd?.status ?? "")}">${cmd ? commandText(cmd) : ""}</span>
    </div>
  </li>`;
}

function commandText(c) {
  if (c.error) return `<span class="badge error">failed</span> ${esc(c.action)}: ${esc(c.error)}`;
  return `${esc(c.action)} <span class="badge ${esc(c.status)}">${esc(c.status)}</span>${c.detail ? ` <span class="muted">${esc(c.detail)}</span>` : ""}`;
}

function readiness(k) {
  const r = k.readiness;
  if (!r) return "";
  const data = r.data ?? r;
  const problems = Array.isArray(data.problems) ? data.problems : [];
  const when = r.ts ?? r.ts_ms;
  return `<section class="card" data-testid="readiness"><h3>Readiness <span class="badge ${esc(data.status)}">${esc(data.status ?? "?")}</span></h3>
    ${when ? `<div class="small muted">reported ${ageSpan(when)}${data.took_ms != null ? `, self-test took ${data.took_ms} ms` : ""}</div>` : ""}
    ${problems.length ? `<table><tr><th>device</th><th>severity</th><th>problem</th><th>fix</th></tr>${problems.map(p =>
      `<tr><td>${esc(p.device)}</td><td><span class="badge ${esc(p.severity)}">${esc(p.severity)}</span></td><td>${esc(p.what)}</td><td>${esc(p.fix)}</td></tr>`).join("")}</table>`
      : `<div class="small">no problems reported</div>`}
  </section>`;
}

// The kit page is its head (the kit's card), then its update section (updates.js, drawn apart so
// its hold form survives these redraws), then the rest.
function renderKitPage(id) {
  const page = $("#kit-head"), body = $("#kit-body");
  const k = state.kits.get(id);
  if (!k || !isFull(k)) {
    page.innerHTML = state.loaded && !k ? `<p><a href="#/">← all kits</a></p><p>No kit <code>${esc(id)}</code>.</p>` : "<p>loading…</p>";
    body.innerHTML = "";
    return;
  }
  const st = kitState(k);
  const alerts = alertsOf(k);
  const power = powerDevice(k);
  page.innerHTML = `<p><a href="#/" data-testid="back">← all kits</a> · <a href="#/crew/${enc(k.id)}" data-testid="crew-page-link">doors, tickets and controls</a></p>
    <article class="card" data-testid="kit-${esc(k.id)}" data-kit="${esc(k.id)}" data-state="${st}">
      <h2>${esc(k.name)} <span><span class="badge ${st}" data-testid="kit-state">${st}</span>${st === "online" ? healthBadge(k.health) : ""}</span></h2>
      <div class="muted small">${esc(k.id)} · ${k.devices_online}/${k.devices_total} devices online</div>
      <div>battery: <span data-testid="battery">${esc(battery(k.battery))}</span></div>
      ${forecast(k)}
      ${alertList(alerts, true)}
    </article>`;
  body.innerHTML = `<div class="grid">
      <section class="card"><h3>Devices</h3><ul class="devices">${k.devices.map(deviceRow).join("")}</ul></section>
      <section class="card chart" data-testid="battery-chart">
        <h3 style="display:flex;justify-content:space-between;gap:.5rem"><span>Battery${power ? ` <span class="muted small">${esc(power.id)}</span>` : ""}</span>
          <span class="windows">${[[3600_000, "1 h"], [6 * 3600_000, "6 h"]].map(([ms, label]) =>
            `<button type="button" data-window="${ms}" aria-pressed="${ms === state.chartWindow}">${label}</button>`).join("")}</span></h3>
        <div id="chart">${power ? "" : "<p class='muted'>This kit has no power bank.</p>"}</div>
      </section>
      ${readiness(k)}
      ${k.devices.some(d => d.role === "scanner") ? `<section class="card" data-testid="checkins"><h3>Recent check-ins</h3>
        <div id="checkins">${checkinList(state.checkins.get(k.id))}</div></section>` : ""}
    </div>`;
  if (power) drawBattery(state.history.get(power.id));
}

function checkinList(rows) {
  if (!rows) return "<p class='muted'>loading…</p>";
  if (!rows.length) return "<p class='muted'>No scans yet.</p>";
  const t = ms => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return `<ul class="devices">${rows.map(r => `<li data-testid="checkin" data-verdict="${esc(r.verdict)}">
    <span class="badge ${r.verdict === "admitted" ? "ok" : "degraded"}">${esc(r.verdict.replaceAll("_", " "))}</span>
    ${esc(r.ticket ?? "—")} <span class="muted small">${esc(r.event_id ?? "")} · ${esc(r.device_id)} · ${t(r.scan_ms)}${r.hub_checked ? "" : " · not checked with the hub"}</span></li>`).join("")}</ul>`;
}

async function loadCheckins(kitId) {
  const rows = await getJSON(`/kits/${enc(kitId)}/checkins?limit=15`);
  state.checkins.set(kitId, rows);
  const el = $("#checkins");
  if (el && currentKit()?.id === kitId) el.innerHTML = checkinList(rows);
}

// A line chart of state of charge (or voltage when the pack gives no SoC), with its figures in words.
function drawBattery(h) {
  const el = $("#chart");
  if (!el) return;
  const items = (h?.items ?? []).filter(i => i.kind === "battery");
  if (!h || items.length < 2) { el.innerHTML = `<p class='muted'>${h ? "Not enough readings yet." : "loading…"}</p>`; return; }
  const useSoc = items.every(i => i.soc != null);
  const ys = items.map(i => useSoc ? i.soc : i.v);
  let range = null;
  if (useSoc) {
    const lo = Math.max(0, Math.floor(Math.min(...ys) / 10) * 10), hi = Math.min(100, Math.ceil(Math.max(...ys) / 10) * 10);
    range = hi > lo ? [lo, hi] : [Math.max(0, lo - 10), Math.min(100, hi + 10)];
  }
  if (!el.querySelector(".b-plot")) el.innerHTML = `<div class="b-plot" data-testid="battery-plot"></div><div class="small muted" data-testid="battery-note"></div>`;
  const what = useSoc ? "state of charge, %" : "voltage, V", last = items[items.length - 1];
  const fmt = v => `${+v.toFixed(useSoc ? 1 : 2)}${useSoc ? " %" : " V"}`;
  timeLine(el.querySelector(".b-plot"), { xs: items.map(i => i.ts), ys, label: what, unit: useSoc ? "%" : "V", range,
    summary: `battery ${what} over the last ${hours(h.window_ms / 3600_000)}: from ${fmt(ys[0])} to ${fmt(ys[ys.length - 1])}, `
      + `lowest ${fmt(Math.min(...ys))}` });
  el.querySelector("[data-testid=battery-note]").textContent = `${what} · ${items.length} readings · last ${battery(last)}`;
}

async function loadHistory(deviceId, incremental) {
  const now = Date.now();
  let h = state.history.get(deviceId);
  if (!h || h.window_ms !== state.chartWindow || !incremental) {
    // A whole window: ~300 points from the fleet (raw when few, else per-bucket averages of the rollups).
    const r = await getJSON(`/devices/${enc(deviceId)}/telemetry?kind=battery&resolution=auto&points=300&since=${now - state.chartWindow}`);
    h = { window_ms: state.chartWindow, items: r.items };
  }
  // Then only what came since, raw.
  let since = h.items.length ? h.items[h.items.length - 1].ts + 1 : now - state.chartWindow;
  for (let page = 0; page < 10 && since != null && incremental; page++) {
    const r = await getJSON(`/devices/${enc(deviceId)}/telemetry?kind=battery&limit=5000&since=${since}`);
    h.items.push(...r.items);
    since = r.next_since != null ? r.next_since + 1 : null;
  }
  const cut = now - h.window_ms;
  h.items = h.items.filter(i => i.ts >= cut);
  state.history.set(deviceId, h);
  const k = currentKit();
  if (k && powerDevice(k)?.id === deviceId) drawBattery(h);
}

async function loadCommands(deviceId) {
  const mine = state.commands.get(deviceId);
  if (!mine || mine.error) return;
  const list = await getJSON(`/devices/${enc(deviceId)}/commands?limit=20`);
  const now = list.find(c => c.id === mine.id);
  if (now) state.commands.set(deviceId, now);
  const el = document.querySelector(`[data-testid="cmd-${CSS.escape(deviceId)}"]`);
  if (el && now) { el.innerHTML = commandText(now); el.dataset.status = now.status; }
  return now;
}

async function sendCommand(deviceId, action) {
  const el = document.querySelector(`[data-testid="cmd-${CSS.escape(deviceId)}"]`);
  if (el) { el.textContent = `${action}: sending…`; el.dataset.status = "sending"; }
  let cmd;
  try {
    cmd = await getJSON(`/devices/${enc(deviceId)}/commands`, {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ action, args: {}, ttl_s: 60, by: "dashboard" }),
    });
  } catch (e) {
    cmd = { action, status: "error", error: String(e.message || e) };
  }
  state.commands.set(deviceId, cmd);
  if (el) { el.innerHTML = commandText(cmd); el.dataset.status = cmd.status; }
  // The ack arrives through ingest (the stream says so); poll as well, until the status settles or it expires.
  for (let n = 0; n < 120 && cmd.status === "pending" && !cmd.error; n++) {
    await new Promise(r => setTimeout(r, n < 10 ? 500 : 2000));
    if (state.commands.get(deviceId)?.id !== cmd.id) return;
    cmd = (await loadCommands(deviceId).catch(() => null)) || cmd;
  }
}

// ------------------------------------------------------------------ routing and data flow

function route() {
  const m = location.hash.match(/^#\/kit\/(.+)$/);
  return m ? { kit: decodeURIComponent(m[1]) } : {};
}
const currentKit = () => { const r = route(); return r.kit ? state.kits.get(r.kit) : null; };

function render() {
  const v = venueRoute(), u = updatesRoute(), rt = retailRoute(), o = opsRoute(), cr = crewRoute();
  $("#crew-page").hidden = !cr;
  $("#ops-page").hidden = !o;
  $("#venue-page").hidden = !v;
  $("#updates-page").hidden = !u;
  $("#retail-page").hidden = !rt;
  if (v || u || rt || o || cr) { $("#overview").hidden = $("#kit-page").hidden = true; kitUpdatesFor(null); return; }  // rendered by their modules
  const r = route();
  $("#overview").hidden = !!r.kit;
  $("#kit-page").hidden = !r.kit;
  if (r.kit) renderKitPage(r.kit); else renderOverview();
  kitUpdatesFor(r.kit && state.kits.has(r.kit) ? r.kit : null);
}

async function loadAlerts() {
  const r = await fetch(`${API}/alerts?state=active&limit=500`);
  if (r.status === 404) { state.alerts = null; return; }
  if (!r.ok) return;
  const byKit = new Map();
  for (const a of (await r.json()).items) byKit.set(a.kit_id, [...(byKit.get(a.kit_id) ?? []), a]);
  state.alerts = byKit;
}

// A kit's whole view (GET /api/v1/kits/<id>) has each device's details; the overview's summary has chips.
const isFull = k => !!k && k.devices.every(d => "latest" in d);

// The overview's kits: filtered, searched and paged by the fleet (it keeps every kit's view ready).
function listQuery(offset, limit) {
  const p = new URLSearchParams({ offset, limit });
  const q = $("#search").value.trim(), st = $("#state-filter").value;
  if (q) p.set("q", q);
  if (st) p.set("state", st);
  return `/kits?${p}`;
}

async function loadList(more = false) {
  // A refresh keeps as many kits as are shown; "show more" adds the next page.
  const offset = more ? state.order.length : 0;
  const page = await getJSON(listQuery(offset, more ? PAGE : Math.max(PAGE, state.order.length)));
  for (const k of page.items) {
    const have = state.kits.get(k.id);
    // A whole view (from a kit page) stays unless the summary was computed after it.
    if (!(isFull(have) && (have.computed_ms ?? 0) >= (k.computed_ms ?? 0))) state.kits.set(k.id, k);
  }
  state.order = more ? [...state.order, ...page.items.map(k => k.id)] : page.items.map(k => k.id);
  state.list = page;
}

async function loadAll() {
  try {
    await Promise.all([loadList(), loadAlerts().catch(() => {})]);
    const r = route();
    if (r.kit) await loadKit(r.kit);
    state.loaded = true;
    render();
    onRoute(false);
  } catch (e) {
    $("#status").textContent = `fleet unreachable: ${e.message || e}`;
  }
}

async function loadKit(id) {
  try {
    const k = await getJSON(`/kits/${enc(id)}`);
    state.kits.set(k.id, k);
  } catch (e) {
    if (String(e.message).startsWith("404")) state.kits.delete(id); else throw e;
  }
}

// What to fetch for kits the stream says changed: the kit page's kit; on the overview the list
// again (its counts, and who now matches the filters) and, while few, the changed kits on screen
// one by one (the list may still hold a view the fleet is recomputing; the newer one is kept).
function refetch(kits) {
  const r = route();
  if (r.kit) return kits.includes(r.kit) ? [loadKit(r.kit)] : [];
  const shown = new Set(state.order);
  const mine = kits.filter(k => shown.has(k));
  return [loadList(), ...(mine.length > 10 ? [] : mine.map(loadKit))];
}

// Updates from the stream, coalesced: at most one re-fetch in flight; what arrives meanwhile waits for the next.
const pending = { kits: new Set(), devices: new Set(), all: false };
let busy = false;
async function applyChanges() {
  if (busy) return;
  busy = true;
  try {
    while (pending.all || pending.kits.size || pending.devices.size) {
      const all = pending.all, kits = [...pending.kits], devices = [...pending.devices];
      pending.all = false; pending.kits.clear(); pending.devices.clear();
      if (all) await loadAll(); else await Promise.all([...refetch(kits), loadAlerts().catch(() => {})]);
      render();
      const k = currentKit();
      if (k) {
        const power = powerDevice(k);
        if (power && (all || devices.includes(power.id))) loadHistory(power.id, true).catch(() => {});
        if (k.devices.some(d => d.role === "scanner" && (all || devices.includes(d.id)))) loadCheckins(k.id).catch(() => {});
        for (const d of devices) if (state.commands.get(d)?.status === "pending") loadCommands(d).catch(() => {});
      }
    }
  } catch (e) {
    $("#status").textContent = `update failed: ${e.message || e}`;
  } finally {
    busy = false;
  }
}

function connect() {
  const live = $("#live");
  const es = new EventSource(`${API}/stream`);
  let opened = false;
  es.addEventListener("hello", () => {
    live.dataset.state = "open"; live.textContent = "live";
    // After a reconnect, events may have been missed: re-fetch everything once.
    if (opened) { pending.all = true; applyChanges(); }
    opened = true;
  });
  es.addEventListener("change", ev => {
    const c = JSON.parse(ev.data);
    if (c.all) pending.all = true;
    c.kits.forEach(k => pending.kits.add(k));
    c.devices.forEach(d => pending.devices.add(d));
    applyChanges();
    updatesChanged(c);
    retailChanged(c);
    crewChanged(c);
  });
  es.onerror = () => { live.dataset.state = "error"; live.textContent = "reconnecting…"; };
}

function renderVenuePage() {
  const v = venueRoute(), page = $("#venue-page");
  if (!v) return;
  (v.list ? renderVenues(page) : renderVenue(page, v.venue)).catch(e => { page.textContent = `venue unavailable: ${e.message || e}`; });
}

function onRoute(rerender = true) {
  if (venueRoute()) { render(); renderVenuePage(); window.scrollTo?.(0, 0); return; }
  if (updatesRoute()) { render(); renderUpdatesPage($("#updates-page")); window.scrollTo?.(0, 0); return; }
  if (retailRoute()) { render(); renderRetail($("#retail-page")); window.scrollTo?.(0, 0); return; }
  if (opsRoute()) { render(); renderOps($("#ops-page")); window.scrollTo?.(0, 0); return; }
  if (crewRoute()) { render(); renderCrew($("#crew-page")); window.scrollTo?.(0, 0); return; }
  const r = route();
  if (r.kit && state.loaded && !isFull(state.kits.get(r.kit))) {
    // From the overview: the kit's summary is there, its whole view is one request away.
    if (rerender) render();
    loadKit(r.kit).then(() => { if (route().kit === r.kit) { if (state.kits.has(r.kit)) onRoute(); else render(); } })
      .catch(e => { $("#kit-head").textContent = `kit unavailable: ${e.message || e}`; });
    return;
  }
  if (rerender) render();
  window.scrollTo?.(0, 0);
  const k = currentKit();
  const power = k && powerDevice(k);
  if (power) loadHistory(power.id, false).catch(e => { const c = $("#chart"); if (c) c.textContent = `history unavailable: ${e.message}`; });
  if (k && k.devices.some(d => d.role === "scanner")) loadCheckins(k.id).catch(() => {});
}

document.addEventListener("click", ev => {
  const b = ev.target.closest("button");
  if (!b) return;
  if (b.dataset.action && (!b.dataset.confirm || window.confirm(b.dataset.confirm))) sendCommand(b.dataset.target, b.dataset.action);
  if (b.dataset.alertAction) alertAction(b.dataset.alert, b.dataset.alertAction);
  if (b.dataset.window) {
    state.chartWindow = +b.dataset.window;
    const k = currentKit();
    document.querySelectorAll("[data-window]").forEach(x => x.setAttribute("aria-pressed", String(+x.dataset.window === state.chartWindow)));
    const power = k && powerDevice(k);
    if (power) loadHistory(power.id, false).catch(() => {});
  }
});
let searchTimer = null;
const relist = () => loadList().then(render).catch(e => { $("#status").textContent = `fleet unreachable: ${e.message || e}`; });
$("#search").addEventListener("input", () => { clearTimeout(searchTimer); searchTimer = setTimeout(relist, 200); });
$("#state-filter").addEventListener("change", relist);
$("#more").addEventListener("click", () => loadList(true).then(render).catch(() => {}));
window.addEventListener("hashchange", () => onRoute());
// Ages ("12 s ago") tick without re-fetching.
setInterval(() => document.querySelectorAll("[data-age]").forEach(el => {
  el.textContent = age(el.dataset.age ? +el.dataset.age : null);
}), 5000);

wireVenueEvents(renderVenuePage);
wireRetailEvents();
// A venue page follows its controllers (applied versions, scenes) now and then, unless being edited.
setInterval(() => { if (venueRoute() && !document.activeElement?.closest("form")) renderVenuePage(); }, 10000);

// Alerts are raised by the fleet's evaluator on its own clock, not by ingest, and health moves with
// the clock too (a device going silent): look again now and then.
setInterval(() => Promise.all([loadAlerts(), route().kit ? null : loadList()]).then(render).catch(() => {}), 15000);

// Signed in (the API's HttpOnly cookie): the page; else the sign-in form (login.js). Venue users
// see their venues' pages only.
wireLogin();
whoAmI().then(me => {
  if (!me) return;
  if (me.role === "venue" && !venueRoute()) location.hash = "#/venues";
  initUpdates(me);
  initRetail(me);
  initOps(me);
  initCrew(me);
  connect();
  if (me.role !== "venue") loadAll(); else { render(); renderVenuePage(); }  // render() shows the venue page opened by its link
}).catch(e => { $("#status").textContent = `fleet unreachable: ${e.message || e}`; });

// Field updates on the dashboard (docs/updates.md, "Rollouts"): releases and rollouts for ops
// (#/releases), one rollout's progress per group and device (#/rollouts/<id>), and on a kit's page
// its devices' update state and the crew's hold. Plain DOM, as app.js and venues.js.
//
// Each view is built once (its forms keep what is being typed) and only its data parts are redrawn:
// on the live stream's news (a device's state carries its update) and every few seconds while the
// tab is visible, because the fleet's worker moves rollouts on its own clock (offers, an error
// threshold's pause), which the stream does not announce.

import { $, esc, request } from "./http.js";

const API = "/api/v1";
const POLL_MS = 4000;
const enc = encodeURIComponent;

const ctx = { me: null, kit: null, rolloutKits: new Set(), busy: false, again: false, soon: null };
const isOps = () => ctx.me?.role === "ops";

export const updatesRoute = () => {
  if (location.hash === "#/releases") return { releases: true };
  const m = location.hash.match(/^#\/rollouts\/([1-9][0-9]{0,15})$/);
  return m ? { rollout: +m[1] } : null;
};

// ------------------------------------------------------------------ API and formatting

const call = (path, method, body) => request(API + path, method, body);

// The API's refusal as a sentence: a string detail as it is; FastAPI's list of validation errors
// ({loc, msg}) as "field: message" each, never "[object Object]".
export function reasonText(body, status) {
  const d = body?.detail;
  if (typeof d === "string" && d) return d;
  if (Array.isArray(d) && d.length) {
    return d.map(e => {
      if (typeof e !== "object" || e === null) return String(e);
      const where = (Array.isArray(e.loc) ? e.loc : []).filter(p => p !== "body").join(" › ");
      return (where ? `${where}: ` : "") + (e.msg ?? JSON.stringify(e));
    }).join("; ");
  }
  return d ? JSON.stringify(d) : `HTTP ${status}`;
}

const when = ms => ms == null ? "" : new Date(ms).toLocaleString([], { dateStyle: "short", timeStyle: "short" });
const size = n => n >= 1048576 ? `${(n / 1048576).toFixed(1)} MB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KB` : `${n} B`;
const label = s => String(s ?? "").replaceAll("_", " ");
const badge = (s, testid = "") => `<span class="badge u-${esc(s)}"${testid ? ` data-testid="${testid}"` : ""}>${esc(label(s))}</span>`;
const forbidden = what => `<p data-testid="updates-forbidden">${esc(what)} are for ops users. A kit's update state and its hold are on the kit's page.</p>`;

// Why a device that has not started stands where it is: the planner's reason, as of now.
const why = u => u.reason ?? (u.state === "pending" ? "offered at the rollout's next step" : "");

function totals(groups) {
  const t = { size: 0, committed: 0, failed: 0, in_flight: 0, not_started: 0 };
  for (const g of groups) for (const k of Object.keys(t)) t[k] += g[k];
  return t;
}

// A bar of committed / failed / in flight out of a group's devices; the numbers are its label.
function bar(t) {
  const pct = n => t.size ? (100 * n / t.size).toFixed(1) : 0;
  const text = `${t.committed} of ${t.size} committed, ${t.failed} failed or rolled back, ${t.in_flight} in flight`;
  return `<div class="bar" role="img" aria-label="${esc(text)}" title="${esc(text)}" data-testid="progress-bar">`
    + `<span class="seg committed" style="width:${pct(t.committed)}%"></span><span class="seg failed" style="width:${pct(t.failed)}%"></span>`
    + `<span class="seg in-flight" style="width:${pct(t.in_flight)}%"></span></div>`;
}

// ------------------------------------------------------------------ #/releases

function releasesSkeleton() {
  return `<p><a href="#/">← all kits</a></p>
    <section class="card" data-testid="releases-card"><h2>Releases</h2><div id="releases-list">loading…</div>
      <p class="small" id="release-status" data-testid="release-status" role="status"></p></section>
    <section class="card u-gap"><h2>Rollouts</h2><div id="rollouts-list">loading…</div></section>
    ${isOps() ? `<section class="card u-gap"><h2>Start a rollout</h2>
      <form id="rollout-form" data-testid="rollout-form" class="u-form" novalidate>
        <label>Release <select name="release" required></select></label>
        <label>Kits <input name="kits" autocomplete="off" placeholder="every kit" aria-describedby="rf-ids"></label>
        <label>Devices <input name="devices" autocomplete="off" placeholder="every device of the release's role" aria-describedby="rf-ids"></label>
        <p class="small muted" id="rf-ids">Ids separated by spaces or commas; empty: all.</p>
        <label>Groups <input name="groups" autocomplete="off" value="1, 10%, 50%, 100%" aria-describedby="rf-groups"></label>
        <p class="small muted" id="rf-groups">Cumulative: a count of devices (the canary), or a share of them.</p>
        <div class="u-row">
          <label>Success threshold <input name="success_threshold" type="number" inputmode="decimal" step="any" min="0" max="1" value="1"></label>
          <label>Error threshold <input name="error_threshold" type="number" inputmode="decimal" step="any" min="0" max="1" value="0.2"></label>
          <label>Devices a minute <input name="rate_per_min" type="number" inputmode="numeric" step="1" min="1" value="20"></label>
        </div>
        <label class="u-check"><input type="checkbox" name="downgrade"> Downgrade: a rollback, devices running a newer version take this one</label>
        <div><button type="submit">start rollout</button></div>
        <p id="rollout-form-status" data-testid="rollout-form-status" role="status" aria-live="polite"></p>
      </form></section>` : ""}`;
}

function releaseRows(items) {
  if (!items.length) return `<p class="muted">No release yet: <code>POST ${API}/releases</code> with a bundle from <code>popkit release build</code>.</p>`;
  return `<div class="u-scroll"><table data-testid="releases"><tr><th>release</th><th>role</th><th>version</th><th>fw</th><th>size</th><th>key id</th><th>created</th><th>retired</th></tr>${items.map(r =>
    `<tr data-testid="release-${esc(r.id)}" data-retired="${r.retired_ms != null}"><td><strong>${esc(r.id)}</strong></td><td>${esc(r.role)}</td>
     <td>${esc(r.version)}</td><td><code>${esc(r.fw)}</code></td><td>${esc(size(r.size))}</td><td><code>${esc(r.key_id)}</code></td>
     <td class="small">${esc(when(r.created_ms))}${r.created_by ? ` by ${esc(r.created_by)}` : ""}</td>
     <td class="small">${r.retired_ms != null ? esc(when(r.retired_ms)) : isOps()
       ? `<button type="button" data-retire="${esc(r.id)}" data-testid="retire-${esc(r.id)}" aria-label="retire ${esc(r.id)}">retire</button>` : "no"}</td></tr>`).join("")}</table></div>`;
}

function rolloutRows(items) {
  if (!items.length) return `<p class="muted">No rollout yet.</p>`;
  return `<div class="u-scroll"><table data-testid="rollouts"><tr><th>rollout</th><th>release</th><th>state</th><th>created</th><th>progress</th></tr>${items.map(r => {
    const t = r.totals;
    return `<tr data-testid="rollout-${r.id}" data-state="${esc(r.state)}"><td><a href="#/rollouts/${r.id}">#${r.id}</a></td><td>${esc(r.release)}</td>
      <td>${badge(r.state)}${r.pause_reason ? `<div class="small">${esc(r.pause_reason)}</div>` : ""}</td>
      <td class="small">${esc(when(r.created_ms))}${r.created_by ? ` by ${esc(r.created_by)}` : ""}</td>
      <td class="small">${t ? `${t.committed}/${t.size} committed${t.failed ? `, ${t.failed} failed` : ""}${t.in_flight ? `, ${t.in_flight} in flight` : ""}${bar(t)}`
        : `<a href="#/rollouts/${r.id}">open</a>`}</td></tr>`;
  }).join("")}</table></div>`;
}

async function refreshReleases(page) {
  const [rel, ros] = await Promise.all([call("/releases"), call("/rollouts")]);
  if (rel.status === 403 || ros.status === 403) { page.innerHTML = forbidden("Releases and rollouts"); return; }
  if (!rel.ok || !ros.ok) throw new Error(reasonText(rel.ok ? ros.body : rel.body, rel.ok ? ros.status : rel.status));
  $("#releases-list", page).innerHTML = releaseRows(rel.body);
  $("#rollouts-list", page).innerHTML = rolloutRows(ros.body);
  const select = $("#rollout-form select[name=release]", page);
  if (select && document.activeElement !== select) {
    const open = rel.body.filter(r => r.retired_ms == null), was = select.value;
    select.innerHTML = open.length ? open.map(r => `<option value="${esc(r.id)}">${esc(r.id)}</option>`).join("")
      : `<option value="">no release to roll out</option>`;
    if (open.some(r => r.id === was)) select.value = was;
  }
}

const ids = s => s.split(/[\s,]+/).filter(Boolean);

function rolloutBody(f) {
  const body = { release: f.release.value, kits: ids(f.kits.value), devices: ids(f.devices.value),
    groups: ids(f.groups.value).map(g => /^[0-9]+$/.test(g) ? +g : g), downgrade: f.downgrade.checked };
  // An empty number field takes the API's default; anything typed goes as typed, for the API to judge.
  for (const name of ["success_threshold", "error_threshold", "rate_per_min"]) {
    const v = f[name].value.trim();
    if (v !== "") body[name] = Number(v);
  }
  return body;
}

async function startRollout(f) {
  const status = $("#rollout-form-status");
  status.textContent = "starting…";
  delete status.dataset.ok;
  const r = await call("/rollouts", "POST", rolloutBody(f));
  status.dataset.ok = String(r.ok);
  if (!r.ok) { status.textContent = `refused (${r.status}): ${reasonText(r.body, r.status)}`; return; }
  status.textContent = `rollout #${r.body.id} started`;
  location.hash = `#/rollouts/${r.body.id}`;
}

async function retire(id) {
  if (!window.confirm(`Retire ${id}? No new rollout can use it; devices that run it keep it.`)) return;
  const r = await call(`/releases/${enc(id)}/retire`, "POST");
  const status = $("#release-status");
  if (status) {
    status.textContent = r.ok ? `${id} retired` : `retire ${id} refused (${r.status}): ${reasonText(r.body, r.status)}`;
    status.dataset.ok = String(r.ok);
  }
  refresh();
}

// ------------------------------------------------------------------ #/rollouts/<id>

function rolloutSkeleton(id) {
  return `<p><a href="#/releases">← releases and rollouts</a></p>
    <article class="card" id="rollout-head" data-testid="rollout" aria-live="polite"><p>loading…</p></article>
    ${isOps() ? `<section class="card u-gap" id="rollout-controls" data-testid="rollout-controls" hidden><h3>Control</h3>
      <form id="pause-form" class="u-inline" data-rollout="${id}">
        <label>Reason for pausing <input name="reason" maxlength="200" autocomplete="off" data-testid="pause-reason-input"></label>
        <button type="submit" data-testid="pause">pause</button>
      </form>
      <div class="u-inline"><button type="button" data-rollout-action="resume" data-testid="resume">resume</button>
        <button type="button" data-rollout-action="abort" data-testid="abort">abort</button></div>
      <p class="small" data-testid="rollout-action-status" id="rollout-action-status" role="status"></p>
    </section>` : ""}
    <section class="card u-gap"><h3>Groups</h3><div id="rollout-groups"></div></section>
    <section class="card u-gap"><h3>Devices</h3><div id="rollout-devices"></div></section>`;
}

function rolloutHead(r) {
  const target = [r.kits.length ? `kits ${r.kits.join(", ")}` : "", r.devices.length ? `devices ${r.devices.join(", ")}` : ""]
    .filter(Boolean).join("; ") || `every ${r.role}`;
  return `<h2><span>Rollout #${r.id}: ${esc(r.release)}</span> ${badge(r.state, "rollout-state")}</h2>
    ${r.pause_reason ? `<p data-testid="pause-reason"><strong>${r.state === "paused" ? "Paused" : "Stopped"}:</strong> ${esc(r.pause_reason)}</p>` : ""}
    <div class="small muted">target: ${esc(target)} · groups ${esc(r.groups.join(", "))} · next group at ${Math.round(r.success_threshold * 100)}% committed,
      pauses at ${Math.round(r.error_threshold * 100)}% failed · ${r.rate_per_min} devices a minute${r.downgrade ? " · downgrade" : ""}</div>
    <div class="small muted">started ${esc(when(r.created_ms))}${r.created_by ? ` by ${esc(r.created_by)}` : ""} · changed ${esc(when(r.updated_ms))}
      ${r.active_group != null && r.state !== "aborted" ? ` · group ${r.active_group} under way` : ""}</div>
    ${bar(totals(r.progress))}`;
}

function groupRows(r) {
  return `<div class="u-scroll"><table data-testid="groups"><tr><th>group</th><th>devices</th><th>committed</th><th>failed</th><th>in flight</th>
    <th>not started</th><th>complete</th><th class="u-wide">progress</th></tr>${r.progress.map(g =>
    `<tr data-testid="group-${g.group}" data-complete="${g.complete}"><td>${g.group}${g.group === 1 ? " (canary)" : ""} <span class="muted small">${esc(g.spec)}</span></td>
     <td>${g.size}</td><td>${g.committed}</td><td>${g.failed}</td><td>${g.in_flight}</td><td>${g.not_started}</td>
     <td>${g.complete ? "yes" : "no"}</td><td>${bar(g)}</td></tr>`).join("")}</table></div>`;
}

function deviceRows(r) {
  if (!r.device_updates.length) return `<p class="muted">No device.</p>`;
  return `<div class="u-scroll"><table data-testid="rollout-devices"><tr><th>device</th><th>kit</th><th>group</th><th>state</th><th>why / reported</th><th>since</th></tr>${
    r.device_updates.map(u => `<tr data-testid="update-${esc(u.device_id)}" data-state="${esc(u.state)}"><td>${esc(u.device_id)}</td>
      <td><a href="#/kit/${enc(u.kit_id)}">${esc(u.kit_id)}</a></td><td>${u.group}</td><td>${badge(u.state)}</td>
      <td data-testid="reason">${esc(why(u))}</td><td class="small">${esc(when(u.updated_ms))}</td></tr>`).join("")}</table></div>`;
}

async function refreshRollout(page, id) {
  const r = await call(`/rollouts/${id}`);
  if (r.status === 403) { page.innerHTML = forbidden("Rollouts"); return; }
  if (r.status === 404) { $("#rollout-head", page).innerHTML = `<p>No rollout #${id}.</p>`; return; }
  if (!r.ok) throw new Error(reasonText(r.body, r.status));
  const ro = r.body, head = $("#rollout-head", page);
  ctx.rolloutKits = new Set(ro.device_updates.map(u => u.kit_id));
  head.dataset.state = ro.state;
  head.innerHTML = rolloutHead(ro);
  $("#rollout-groups", page).innerHTML = groupRows(ro);
  $("#rollout-devices", page).innerHTML = deviceRows(ro);
  const controls = $("#rollout-controls", page);
  if (controls) {  // what applies in this state; over (aborted, done): nothing
    controls.hidden = !["running", "paused"].includes(ro.state);
    $("#pause-form", controls).hidden = ro.state !== "running";
    $("[data-rollout-action=resume]", controls).hidden = ro.state !== "paused";
  }
}

async function moveRollout(id, action, body) {
  if (action === "abort" && !window.confirm(`Abort rollout #${id}? It cannot be resumed: no other device will be offered this release.`)) return;
  const status = $("#rollout-action-status");
  status.textContent = `${action}: sending…`;
  const r = await call(`/rollouts/${id}/${action}`, "POST", body);
  status.dataset.ok = String(r.ok);
  status.textContent = r.ok ? `${action}: done` : `${action} refused (${r.status}): ${reasonText(r.body, r.status)}`;
  if (r.ok && action === "pause") $("#pause-form [name=reason]").value = "";
  refresh();
}

// ------------------------------------------------------------------ the page: build once, redraw data

export async function renderUpdatesPage(page) {
  const r = updatesRoute();
  if (!r) return;
  const view = r.releases ? "releases" : `rollout-${r.rollout}`;
  if (page.dataset.view !== view) {
    page.innerHTML = r.releases ? releasesSkeleton() : rolloutSkeleton(r.rollout);
    page.dataset.view = view;
  }
  try {
    if (r.releases) await refreshReleases(page); else await refreshRollout(page, r.rollout);
  } catch (e) {
    const el = $("#release-status, #rollout-action-status", page);
    if (el) el.textContent = `fleet unreachable: ${e.message || e}`;
  }
}

// ------------------------------------------------------------------ a kit's updates (on its page)

function kitSkeleton() {
  return `<h3>Updates</h3>
    <div id="kit-update-state" data-testid="kit-update-state"><p class="muted">loading…</p></div>
    <form id="hold-form" class="u-hold" data-testid="hold-form" hidden>
      <label for="hold-reason">Reason for holding updates</label>
      <input id="hold-reason" name="reason" maxlength="200" autocomplete="off" placeholder="e.g. soundcheck until 18:00" data-testid="hold-reason">
      <button type="submit" data-testid="hold">hold updates</button>
      <button type="button" data-testid="lift" hidden>lift the hold</button>
      <p class="small" data-testid="hold-status" id="hold-status" role="status" aria-live="polite"></p>
    </form>`;
}

function kitState(u) {
  const h = u.hold;
  const hold = h ? `<p class="u-held" data-testid="kit-hold" data-held="true"><strong>Updates held</strong> by ${esc(h.by)} since ${esc(when(h.since_ms))}${h.reason ? `: ${esc(h.reason)}` : ""}</p>`
    : `<p data-testid="kit-hold" data-held="false">Updates are not held: devices take a rollout's offer outside the show.</p>`;
  // The hold is said above; any other reason the kit waits (its show) is said here.
  const waits = u.waits && !(h && u.waits.startsWith("held by")) ? `<p data-testid="kit-waits" class="warn">No update now: ${esc(u.waits)}</p>` : "";
  const rows = u.devices.length ? `<ul class="devices">${u.devices.map(d => `<li class="device" data-testid="kit-update-${esc(d.device_id)}" data-state="${esc(d.state)}">
      <div><strong>${esc(d.device_id)}</strong> <span class="muted small">${esc(d.release)} · ${isOps() ? `<a href="#/rollouts/${d.rollout}">rollout #${d.rollout}</a>` : `rollout #${d.rollout}`}</span></div>
      <span>${badge(d.state)}</span>${why(d) ? `<div class="meta small muted">${esc(why(d))}</div>` : ""}</li>`).join("")}</ul>`
    : `<p class="muted small">No device of this kit is in a rollout.</p>`;
  return hold + waits + rows;
}

async function refreshKit() {
  const kit = ctx.kit, sec = $("#kit-updates");
  if (!kit || !sec) return;
  const r = await call(`/kits/${enc(kit)}/updates`);
  if (ctx.kit !== kit) return;  // moved on meanwhile
  if (r.status === 404 || r.status === 403) { sec.hidden = true; return; }  // not a kit this user sees
  if (!r.ok) { $("#kit-update-state", sec).textContent = `update state unavailable: ${reasonText(r.body, r.status)}`; return; }
  $("#kit-update-state", sec).innerHTML = kitState(r.body);
  const held = !!r.body.hold, form = $("#hold-form", sec);
  form.hidden = false;
  form.dataset.held = String(held);
  for (const el of form.querySelectorAll("label, input, [data-testid=hold]")) el.hidden = held;
  $("[data-testid=lift]", form).hidden = !held;
}

async function holdOrLift(hold) {
  const kit = ctx.kit, form = $("#hold-form"), status = $("#hold-status");
  if (!kit || !form) return;
  status.textContent = hold ? "holding…" : "lifting…";
  const reason = form.reason.value.trim();
  const r = hold ? await call(`/kits/${enc(kit)}/updates/hold`, "POST", reason ? { reason } : {})
    : await call(`/kits/${enc(kit)}/updates/hold`, "DELETE");
  status.dataset.ok = String(r.ok);
  status.textContent = !r.ok ? `refused (${r.status}): ${reasonText(r.body, r.status)}`
    : hold ? "held: no device of this kit is offered an update until the hold is lifted" : "hold lifted";
  if (r.ok && hold) form.reason.value = "";
  await refreshKit();
}

// The kit page's update section for ``kitId`` (null: not on a kit page). app.js calls it on every
// render; the section is built and fetched only when the kit changes.
export function kitUpdatesFor(kitId) {
  const sec = $("#kit-updates");
  if (!sec) return;
  const shown = !!kitId && (isOps() || ctx.me?.role === "crew");
  if (!shown) { sec.hidden = true; ctx.kit = null; return; }
  if (ctx.kit === kitId) return;
  ctx.kit = kitId;
  sec.innerHTML = kitSkeleton();
  sec.hidden = false;
  refreshKit().catch(() => {});
}

// ------------------------------------------------------------------ live

async function refresh() {
  if (ctx.busy) { ctx.again = true; return; }  // one redraw in flight; news meanwhile: one more after it
  ctx.busy = true;
  try {
    do {
      ctx.again = false;
      const page = $("#updates-page");
      if (updatesRoute() && page) await renderUpdatesPage(page);
      else if (ctx.kit) await refreshKit().catch(() => {});
    } while (ctx.again);
  } finally {
    ctx.busy = false;
  }
}

// The live stream said kits or devices changed (app.js's change event): a device's state may carry
// its update. Only a view showing one of those kits is redrawn, at most once a second however busy
// the stream (the releases list, a rollout each, waits for its poll).
export function updatesChanged(change) {
  const r = updatesRoute();
  const mine = r?.rollout ? ctx.rolloutKits : !r && ctx.kit ? new Set([ctx.kit]) : null;
  if (!mine || ctx.soon || !(change?.all || (change?.kits ?? []).some(k => mine.has(k)))) return;
  ctx.soon = setTimeout(() => { ctx.soon = null; refresh(); }, 1000);
}

export function initUpdates(me) {
  ctx.me = me;
  const link = $("[data-testid=releases-link]");
  if (link) link.hidden = me.role !== "ops";
  document.addEventListener("click", ev => {
    const b = ev.target.closest("button");
    if (!b) return;
    if (b.dataset.retire) retire(b.dataset.retire);
    const r = updatesRoute();
    if (b.dataset.rolloutAction && r?.rollout) moveRollout(r.rollout, b.dataset.rolloutAction);
    if (b.dataset.testid === "lift" && b.closest("#hold-form")) holdOrLift(false);
  });
  document.addEventListener("submit", ev => {
    const f = ev.target;
    if (f.id === "rollout-form") { ev.preventDefault(); startRollout(f); }
    if (f.id === "pause-form") {
      ev.preventDefault();
      const reason = f.reason.value.trim();
      moveRollout(+f.dataset.rollout, "pause", reason ? { reason } : {});
    }
    if (f.id === "hold-form") { ev.preventDefault(); holdOrLift(true); }
  });
  setInterval(() => { if (document.visibilityState === "visible" && (updatesRoute() || ctx.kit)) refresh(); }, POLL_MS);
  document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") refresh(); });
}

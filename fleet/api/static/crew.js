// Crew running their kit from a phone (docs/crew.md), one page each under #/crew/<kit>/<page>:
//   doors     live attendance per door for an event; double entries with both scans, and their alert
//   revoke    revoke a ticket, see which doors hold the revocation (the config each door reports
//             applied) and what the doors answered when it was scanned since
//   kitup     the kit-up history: each self-test with every problem and its fix
//   controls  print a test label or a custom one, set a light, run a scene
//   audit     who did what at the kit
// #/crew lists the kits the user may run. Crew see their kits only (the API scopes every call); ops
// see every kit. Forms are drawn once per visit, and only the live parts below them are redrawn (on
// the stream's changes and every few seconds), so nothing typed is lost to a refresh.

import { $, esc, request, why } from "./http.js";

const API = "/api/v1";
const enc = encodeURIComponent;
const PAGES = [["doors", "Doors"], ["revoke", "Revoke"], ["kitup", "Kit-up"], ["controls", "Controls"], ["audit", "Audit"]];
const LIVE_MS = 3000;  // the live pages look again this often, besides the stream's changes

const ctx = {
  me: null, root: null, built: null,   // built: "<kit>/<page>" on screen (a form is built once per visit)
  kit: null,                           // the kit's view (GET /kits/<id>)
  event: null, events: [],             // the event shown, and the events the kit's doors hold or scanned
  ticket: null,                        // the ticket the revoke page follows
  timer: null, busy: false, again: false,
};
window.addEventListener("hashchange", () => { ctx.built = null; });

export const crewRoute = () => {
  const m = location.hash.match(/^#\/crew(?:\/([^/]+)(?:\/([a-z]+))?)?$/);
  if (!m) return null;
  const page = m[2] ?? "doors";
  return PAGES.some(([p]) => p === page) ? { kit: m[1] ? decodeURIComponent(m[1]) : null, page } : null;
};

export function initCrew(me) {
  ctx.me = me;
  const link = $("[data-testid=crew-link]");
  if (link) link.hidden = !["ops", "crew"].includes(me.role);
}

// The stream says what changed: a change at the shown kit redraws the live part of its page.
export function crewChanged(c) {
  const r = crewRoute();
  if (r?.kit && (c.all || (c.kits ?? []).includes(r.kit))) refresh();
}

// ------------------------------------------------------------------ API

const call = (path, method, body) => request(API + path, method, body);


const time = ms => ms == null ? "—" : new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const when = ms => ms == null ? "—" : new Date(ms).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
const doorsOf = k => (k?.devices ?? []).filter(d => d.role === "scanner");

// ------------------------------------------------------------------ page frame

export async function renderCrew(root) {
  ctx.root = root;
  const r = crewRoute();
  clearInterval(ctx.timer);
  ctx.timer = null;
  if (!r) return;
  if (ctx.me?.role === "venue") {
    root.innerHTML = `<p data-testid="crew-forbidden">The crew pages are for a kit's crew and ops.</p>`;
    return;
  }
  if (!r.kit) { await renderKitList(root); return; }
  const key = `${r.kit}/${r.page}`;
  if (ctx.built !== key) {
    const k = await call(`/kits/${enc(r.kit)}`);
    if (!k.ok) {
      root.innerHTML = `<p><a href="#/crew">← your kits</a></p><p data-testid="crew-error">${k.status === 404 ? `No kit <code>${esc(r.kit)}</code>.` : esc(why(k))}</p>`;
      ctx.built = null;
      return;
    }
    ctx.kit = k.body;
    root.innerHTML = frame(ctx.kit, r.page);
    ctx.built = key;
    await BUILD[r.page]($("#crew-body", root));
  }
  await refresh();
  if (r.page === "doors" || r.page === "revoke") ctx.timer = setInterval(refresh, LIVE_MS);
}

function frame(k, page) {
  return `<div class="c-head"><p class="small"><a href="#/kit/${enc(k.id)}">← kit page</a> · <a href="#/crew">your kits</a></p>
    <h2 data-testid="crew-kit" data-kit="${esc(k.id)}">${esc(k.name)} <span class="muted small">${esc(k.id)}</span></h2>
    <nav class="c-tabs" aria-label="crew pages">${PAGES.map(([p, label]) =>
      `<a href="#/crew/${enc(k.id)}/${p}" data-testid="crew-tab-${p}"${p === page ? ' aria-current="page"' : ""}>${label}</a>`).join("")}</nav></div>
    <div id="crew-body" data-testid="crew-${page}"></div>`;
}

async function renderKitList(root) {
  const r = await call("/kits?limit=1000");
  if (!r.ok) { root.innerHTML = `<p data-testid="crew-error">${esc(why(r))}</p>`; return; }
  const kits = r.body.items;
  root.innerHTML = `<h2>Your kits</h2>${kits.length ? `<ul class="c-list" data-testid="crew-kits">${kits.map(k =>
    `<li><a href="#/crew/${enc(k.id)}" data-testid="crew-kit-${esc(k.id)}">${esc(k.name)}</a> <span class="muted small">${esc(k.id)}</span></li>`).join("")}</ul>`
    : "<p>No kit is yours yet: ops give crew their kits.</p>"}`;
}

// Redraw the live part of the page on screen; at most one at a time (a slow fleet never piles them up).
// A change that comes meanwhile is drawn right after, not dropped.
async function refresh() {
  if (ctx.busy) { ctx.again = true; return; }
  ctx.busy = true;
  try {
    do {
      ctx.again = false;
      const r = crewRoute();
      if (!r?.kit || ctx.built !== `${r.kit}/${r.page}`) return;
      await LIVE[r.page]?.();
    } while (ctx.again);
  } finally {
    ctx.busy = false;
  }
}

// ------------------------------------------------------------------ events

// The events the kit's doors hold (their keys and revocations, from each door's desired config) or
// scanned lately, the last scanned first.
async function loadEvents() {
  const seen = new Map();
  const scans = await call(`/kits/${enc(ctx.kit.id)}/checkins?limit=200`);
  for (const c of scans.ok ? scans.body : []) if (c.event_id && !seen.has(c.event_id)) seen.set(c.event_id, c.scan_ms);
  const configs = await Promise.all(doorsOf(ctx.kit).map(d => call(`/devices/${enc(d.id)}/config`)));
  for (const c of configs) {
    const data = c.ok ? c.body.data ?? {} : {};
    for (const k of data.keys ?? []) if (k.event && !seen.has(k.event)) seen.set(k.event, 0);
    for (const e of Object.keys(data.revoked ?? {})) if (!seen.has(e)) seen.set(e, 0);
  }
  ctx.events = [...seen.keys()];
  if (!ctx.events.includes(ctx.event)) ctx.event = ctx.events[0] ?? null;
}

function eventPicker(id) {
  return `<label>Event <select id="${id}" data-testid="${id}">${ctx.events.map(e =>
    `<option value="${esc(e)}"${e === ctx.event ? " selected" : ""}>${esc(e)}</option>`).join("")}</select></label>`;
}

function wireEventPicker(id) {
  const sel = $(`#${id}`);
  sel?.addEventListener("change", () => { ctx.event = sel.value; refresh(); });
}

// ------------------------------------------------------------------ doors

async function buildDoors(body) {
  await loadEvents();
  body.innerHTML = ctx.events.length
    ? `<form class="c-form" onsubmit="return false">${eventPicker("crew-event")}</form><div id="c-doors" aria-live="polite"></div>`
    : `<p data-testid="crew-no-event">No event at this kit's doors yet: ops give the doors an event's key.</p>`;
  wireEventPicker("crew-event");
}

async function liveDoors() {
  const box = $("#c-doors");
  if (!box || !ctx.event) return;
  const [att, alerts] = await Promise.all([call(`/events/${enc(ctx.event)}/attendance`),
    call(`/alerts?kit=${enc(ctx.kit.id)}&rule=double_entry&state=active&limit=5`)]);
  const doors = doorsOf(ctx.kit).map(d => d.id);
  if (att.status === 404) { box.innerHTML = `<p data-testid="crew-attendance-none">No scans for ${esc(ctx.event)} yet.</p>`; return; }
  if (!att.ok) { box.innerHTML = `<p class="warn">${esc(why(att))}</p>`; return; }
  const a = att.body;
  const mine = new Set(doors);
  const per = doors.map(d => [d, a.by_scanner[d] ?? { admitted: 0, refused: 0 }]);
  const doubles = a.double_entries.filter(x => x.scans.some(s => mine.has(s.device_id)));
  const alert = alerts.ok ? alerts.body.items[0] : null;
  box.innerHTML = `<section class="card c-sec"><h3>Attendance</h3>
      <p class="c-big"><strong data-testid="crew-admitted">${per.reduce((n, [, c]) => n + c.admitted, 0)}</strong> let in through this kit's doors</p>
      <ul class="c-list">${per.map(([d, c]) => `<li data-testid="door-${esc(d)}" data-admitted="${c.admitted}" data-refused="${c.refused}">
        <strong>${esc(d)}</strong> <span>${c.admitted} in</span> · <span>${c.refused} refused</span></li>`).join("")}</ul>
      ${Object.keys(a.by_verdict).length ? `<p class="small muted">${Object.entries(a.by_verdict).map(([v, n]) => `${esc(v.replaceAll("_", " "))}: ${n}`).join(" · ")}</p>` : ""}
    </section>
    <section class="card c-sec" data-testid="crew-doubles" data-count="${doubles.length}"><h3>Double entries</h3>
      ${alert ? `<p class="c-alert" role="alert" data-testid="crew-double-alert" data-alert="${alert.id}">
        <span class="badge warning">alert</span> ${esc(alert.message)}</p>` : ""}
      ${doubles.length ? `<ul class="c-list">${doubles.map(x => `<li data-testid="double-${esc(x.ticket)}">
        <strong>${esc(x.ticket)}</strong> let in ${x.scans.length} times:
        <ul>${x.scans.map(s => `<li data-testid="double-scan">${esc(s.device_id)} at ${time(s.scan_ms)}${s.hub_checked ? "" : " <span class=\"muted\">(hub not asked)</span>"}</li>`).join("")}</ul></li>`).join("")}</ul>`
        : `<p class="muted">No ticket let in twice.</p>`}
    </section>`;
}

// ------------------------------------------------------------------ revoke

async function buildRevoke(body) {
  await loadEvents();
  if (!ctx.events.length) {
    body.innerHTML = `<p data-testid="crew-no-event">No event at this kit's doors yet: nothing to revoke.</p>`;
    return;
  }
  body.innerHTML = `<form id="revoke-form" class="c-form" data-testid="revoke-form">
      ${eventPicker("revoke-event")}
      <label>Ticket <input name="ticket" data-testid="revoke-ticket" required maxlength="16" pattern="[A-Za-z0-9]{1,16}" title="up to 16 letters and digits" autocomplete="off"
        autocapitalize="characters" spellcheck="false" value="${esc(ctx.ticket ?? "")}"></label>
      <button type="submit" data-testid="revoke-submit">Revoke at every door</button>
      <button type="button" data-testid="revoke-check" id="revoke-check">Only check the doors</button>
      <p id="revoke-status" data-testid="revoke-status" role="status"></p>
    </form><div id="c-revoke" aria-live="polite"></div>`;
  wireEventPicker("revoke-event");
  const form = $("#revoke-form");
  const ticket = () => form.ticket.value.trim().toUpperCase();
  $("#revoke-check").addEventListener("click", () => { ctx.ticket = ticket() || null; refresh(); });
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const t = ticket(), status = $("#revoke-status");
    if (!t) return;
    if (!window.confirm(`Revoke ticket ${t} for ${ctx.event}? Every door refuses it from now on.`)) return;
    status.textContent = "revoking…";
    status.dataset.state = "sending";
    const r = await call(`/events/${enc(ctx.event)}/revocations`, "POST", { tickets: [t] });
    status.dataset.state = r.ok ? "done" : "refused";
    status.textContent = r.ok ? `${t} revoked: sent to ${r.body.pushed.length} door${r.body.pushed.length === 1 ? "" : "s"}` : `not revoked: ${why(r)}`;
    ctx.ticket = t;
    await refresh();
  });
}

// Per door: has its config (as the door reports applying it) the ticket's revocation?
function doorState(cfg, event, ticket) {
  const listed = (cfg.data?.revoked?.[event] ?? []).includes(ticket);
  if (!listed) return ["missing", "not sent to this door"];
  if (cfg.applied_version != null && cfg.version != null && cfg.applied_version >= cfg.version) return ["on", "on the door"];
  return ["pending", `sent (config v${cfg.version}); the door is on ${cfg.applied_version == null ? "no config yet" : `v${cfg.applied_version}`}`];
}

async function liveRevoke() {
  const box = $("#c-revoke");
  if (!box || !ctx.event) return;
  const [revs, scans, ...configs] = await Promise.all([call(`/events/${enc(ctx.event)}/revocations`),
    call(`/kits/${enc(ctx.kit.id)}/checkins?limit=100`), ...doorsOf(ctx.kit).map(d => call(`/devices/${enc(d.id)}/config`))]);
  const t = ctx.ticket;
  const doors = doorsOf(ctx.kit).map((d, n) => [d.id, configs[n]]);
  const answered = t && scans.ok ? scans.body.filter(c => c.ticket === t && c.event_id === ctx.event) : [];
  box.innerHTML = (t ? `<section class="card c-sec" data-testid="revoke-doors" data-ticket="${esc(t)}"><h3>${esc(t)} at the doors</h3>
      <ul class="c-list">${doors.map(([d, c]) => {
        const [st, text] = c.ok ? doorState(c.body, ctx.event, t) : ["unknown", why(c)];
        return `<li data-testid="revoke-door-${esc(d)}" data-state="${st}"><strong>${esc(d)}</strong>
          <span class="badge ${st === "on" ? "ok" : st === "pending" ? "pending" : "error"}">${esc(text)}</span></li>`;
      }).join("")}</ul>
      <h4>Scanned since</h4>${answered.length ? `<ul class="c-list">${answered.map(c => `<li data-testid="revoke-scan" data-verdict="${esc(c.verdict)}">
        <span class="badge ${c.verdict === "admitted" ? "ok" : "error"}">${esc(c.verdict.replaceAll("_", " "))}</span>
        ${esc(c.device_id)} at ${time(c.scan_ms)}</li>`).join("")}</ul>` : `<p class="muted">Not scanned at this kit's doors.</p>`}
    </section>` : "")
    + `<section class="card c-sec" data-testid="revocations"><h3>Revoked for ${esc(ctx.event)}</h3>
      ${revs.ok && revs.body.length ? `<ul class="c-list">${revs.body.slice().reverse().map(r => `<li data-testid="revoked-${esc(r.ticket)}">
        <strong>${esc(r.ticket)}</strong> <span class="small muted">by ${esc(r.revoked_by)} at ${esc(r.revoked_at)}, ${when(r.revoked_ms)}</span></li>`).join("")}</ul>`
        : `<p class="muted">${revs.ok ? "Nothing revoked." : esc(why(revs))}</p>`}</section>`;
}

// ------------------------------------------------------------------ kit-up history

async function buildKitup(body) {
  const agent = ctx.kit.devices.find(d => d.role === "agent");
  body.innerHTML = `${agent ? `<p class="c-actions"><button type="button" data-testid="kitup-run" id="kitup-run">Run the self-test now</button>
      <span class="cmd-status" data-testid="cmd-${esc(agent.id)}" id="kitup-cmd" role="status"></span></p>` : ""}
    <div id="c-kitup" aria-live="polite"></div>`;
  $("#kitup-run")?.addEventListener("click", async () => {
    await command(agent.id, "selftest", {}, $("#kitup-cmd"));
    await liveKitup();
  });
  await liveKitup();
}

async function liveKitup() {
  const box = $("#c-kitup");
  if (!box) return;
  const r = await call(`/kits/${enc(ctx.kit.id)}/readiness?limit=20`);
  if (!r.ok) { box.innerHTML = `<p class="warn">${esc(why(r))}</p>`; return; }
  box.innerHTML = r.body.length ? `<ol class="c-list c-history" data-testid="kitup-history">${r.body.map((x, n) => `<li class="card c-sec" data-testid="kitup-${n}" data-status="${esc(x.status)}">
      <h3><span class="badge ${esc(x.status)}">${esc((x.status ?? "?").replace("_", " "))}</span> ${when(x.ts)}
        <span class="small muted">${esc(x.device_id)}${x.took_ms != null ? `, took ${(x.took_ms / 1000).toFixed(1)} s` : ""}</span></h3>
      ${x.problems.length ? `<ul class="c-problems">${x.problems.map(p => `<li data-testid="kitup-problem" data-device="${esc(p.device)}">
        <span class="badge ${esc(p.severity)}">${esc(p.severity)}</span> <strong>${esc(p.device)}</strong>: ${esc(p.what)}
        <div class="c-fix"><span class="muted">fix:</span> ${esc(p.fix)}</div></li>`).join("")}</ul>` : "<p class=\"small\">no problems</p>"}
    </li>`).join("")}</ol>` : `<p data-testid="kitup-none">No self-test reported yet.</p>`;
}

// ------------------------------------------------------------------ controls

// Send a command and follow it until the device's ack settles it (or it expires).
async function command(device, action, args, out) {
  const show = c => {
    out.dataset.status = c.status;
    out.innerHTML = `${esc(action)} <span class="badge ${esc(c.status)}">${esc(c.status)}</span>${c.detail ? ` <span class="muted">${esc(c.detail)}</span>` : ""}`;
  };
  out.dataset.status = "sending";
  out.textContent = `${action}: sending…`;
  const r = await call(`/devices/${enc(device)}/commands`, "POST", { action, args, ttl_s: 60 });
  if (!r.ok) { out.dataset.status = "error"; out.textContent = `${action} not sent: ${why(r)}`; return null; }
  let c = r.body;
  show(c);
  for (let n = 0; n < 90 && c.status === "pending"; n++) {
    await new Promise(res => setTimeout(res, n < 10 ? 500 : 2000));
    const list = await call(`/devices/${enc(device)}/commands?limit=20`);
    c = (list.ok && list.body.find(x => x.id === c.id)) || c;
    show(c);
  }
  return c;
}

// A custom label: each line as text (the first bold and double size), then the code as a QR, then the cut.
function labelJob(lines, code) {
  const blocks = lines.map((text, n) => n === 0 ? { kind: "text", text, bold: true, width: 2, height: 2, align: "center" }
    : { kind: "text", text, align: "center" });
  if (code) blocks.push({ kind: "qr", data: code });
  blocks.push({ kind: "cut" });
  return { receipt: { blocks } };
}

function printerCard(d) {
  return `<section class="card c-sec" data-testid="printer-${esc(d.id)}"><h3>${esc(d.id)} <span class="muted small">printer</span></h3>
    <p class="c-actions"><button type="button" data-crew-cmd="identify" data-device="${esc(d.id)}" data-testid="print-test-${esc(d.id)}">Print a test label</button></p>
    <form class="c-form" data-label-form="${esc(d.id)}" data-testid="label-form-${esc(d.id)}">
      <label>Label text (one line each) <textarea name="text" rows="3" maxlength="240" required data-testid="label-text-${esc(d.id)}"></textarea></label>
      <label>QR code (optional) <input name="code" maxlength="120" autocomplete="off" data-testid="label-code-${esc(d.id)}"></label>
      <button type="submit" data-testid="label-print-${esc(d.id)}">Print this label</button>
    </form>
    <p class="cmd-status" data-testid="cmd-${esc(d.id)}" id="cmd-${esc(d.id)}" role="status"></p></section>`;
}

// A relay is on or off; a lamp also takes a brightness (0..255, the contract's level).
function lightCard(d) {
  return `<section class="card c-sec" data-testid="light-${esc(d.id)}"><h3>${esc(d.id)} <span class="muted small">light${d.model ? ` · ${esc(d.model)}` : ""}</span></h3>
    <form class="c-form" data-light-form="${esc(d.id)}">
      ${d.model === "relay" ? "" : `<label>Brightness <input type="range" name="level" min="0" max="255" value="255" data-testid="light-level-${esc(d.id)}"></label>`}
      <div class="c-actions"><button type="submit" name="on" value="1" data-testid="light-on-${esc(d.id)}">Turn on</button>
        <button type="submit" name="on" value="0" data-testid="light-off-${esc(d.id)}">Turn off</button></div>
    </form>
    <p class="cmd-status" data-testid="cmd-${esc(d.id)}" id="cmd-${esc(d.id)}" role="status"></p></section>`;
}

function sceneCard(d, scenes) {
  return `<section class="card c-sec" data-testid="lighting-${esc(d.id)}"><h3>${esc(d.id)} <span class="muted small">lighting controller</span></h3>
    ${scenes.length ? `<form class="c-form" data-scene-form="${esc(d.id)}">
      <label>Scene <select name="scene" data-testid="scene-${esc(d.id)}">${scenes.map(s => `<option>${esc(s)}</option>`).join("")}</select></label>
      <label>Fade, seconds <input type="number" name="fade" min="0" max="60" step="0.5" value="1" data-testid="scene-fade-${esc(d.id)}"></label>
      <button type="submit" data-testid="scene-run-${esc(d.id)}">Run the scene</button>
      <p class="small muted">It holds until the controller's timeline next changes.</p>
    </form>` : `<p class="muted">No scenes yet: the venue's lighting has not reached this controller.</p>`}
    <p class="cmd-status" data-testid="cmd-${esc(d.id)}" id="cmd-${esc(d.id)}" role="status"></p></section>`;
}

async function buildControls(body) {
  const devs = ctx.kit.devices;
  const controllers = devs.filter(d => d.role === "lighting");
  const configs = await Promise.all(controllers.map(d => call(`/devices/${enc(d.id)}/config`)));
  const scenes = new Map(controllers.map((d, n) => [d.id, Object.keys((configs[n].ok && configs[n].body.data?.scenes) || {})]));
  const cards = [...devs.filter(d => d.role === "printer").map(printerCard), ...devs.filter(d => d.role === "light").map(lightCard),
    ...controllers.map(d => sceneCard(d, scenes.get(d.id)))];
  body.innerHTML = cards.length ? `<div class="c-grid">${cards.join("")}</div>` : "<p>This kit has no printer or lights.</p>";
  const out = id => document.getElementById(`cmd-${id}`);
  body.addEventListener("click", ev => {
    const b = ev.target.closest("button[data-crew-cmd]");
    if (b) command(b.dataset.device, b.dataset.crewCmd, {}, out(b.dataset.device));
  });
  body.addEventListener("submit", ev => {
    ev.preventDefault();
    const f = ev.target;
    if (f.dataset.labelForm) {
      const lines = f.text.value.split("\n").map(s => s.trim()).filter(Boolean);
      if (lines.length) command(f.dataset.labelForm, "print", labelJob(lines, f.code.value.trim()), out(f.dataset.labelForm));
    } else if (f.dataset.lightForm) {
      const on = ev.submitter?.value !== "0";
      const args = !on ? { on: false } : f.level ? { on: true, level: +f.level.value } : { on: true };
      command(f.dataset.lightForm, "set", args, out(f.dataset.lightForm));
    } else if (f.dataset.sceneForm) {
      command(f.dataset.sceneForm, "scene", { scene: f.scene.value, fade_ms: Math.round(+f.fade.value * 1000) }, out(f.dataset.sceneForm));
    }
  });
}

// ------------------------------------------------------------------ audit

// The kit's rows (its devices, alerts and routes), and the revocations of the events its doors hold: a
// revocation names an event, not a kit, so the kit filter alone would leave them out.
async function buildAudit(body) {
  body.innerHTML = `<div id="c-audit"></div>`;
  await loadEvents();
  const [r, revs] = await Promise.all([call(`/audit?kit=${enc(ctx.kit.id)}&limit=50`), call("/audit?action=revocations&limit=50")]);
  const box = $("#c-audit");
  if (!r.ok) { box.innerHTML = `<p class="warn">${esc(why(r))}</p>`; return; }
  const held = new Set(ctx.events.map(e => `/api/v1/events/${e}/revocations`));
  const rows = [...r.body, ...(revs.ok ? revs.body.filter(a => held.has(a.target)) : [])]
    .filter((a, n, all) => all.findIndex(x => x.ref === a.ref) === n).sort((x, y) => y.ts - x.ts).slice(0, 50);
  box.innerHTML = rows.length ? `<ul class="c-list c-audit" data-testid="crew-audit-rows">${rows.map(a => `<li data-testid="audit-row">
      <div><strong>${esc(a.what)}</strong> <span class="small muted">${when(a.ts)}</span></div>
      <div class="small">${esc(a.by ?? "—")} → ${esc(a.target)} · ${esc(a.result)}</div></li>`).join("")}</ul>`
    : `<p data-testid="crew-audit-none">Nothing done at this kit yet.</p>`;
}

const BUILD = { doors: buildDoors, revoke: buildRevoke, kitup: buildKitup, controls: buildControls, audit: buildAudit };
const LIVE = { doors: liveDoors, revoke: liveRevoke, kitup: liveKitup };

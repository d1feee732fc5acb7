// Venue lighting pages: every venue (#/venues, with a form to create one) and one venue
// (#/venue/<id>), where a venue user builds and runs its lighting week:
//   - the editors (venue-editor.js: the venue, zones, scenes; venue-week.js: the week planner,
//     publish with its diff, undo), all on a draft (venue-draft.js) compiled by the fleet at each edit;
//   - what runs now: each zone's day or week (GET .../plan), a scene or zone override with its
//     expiry (POST .../overrides), the overrides in force, a preview at any date and time, and each
//     controller's timeline, desired vs applied, and the scene it reports.
// app.js redraws the page every 10 s: only the "now" parts are fetched again, the draft stays.

import { showLogin } from "./login.js";
import { API, call, detailText, enc, esc, load, st } from "./venue-draft.js";
import { onEditorClick, onEditorSubmit, scenesSection, venueForm, zonesSection } from "./venue-editor.js";
import { isDragging, onWeekClick, onWeekSubmit, publishSection, weekSection, wirePlannerDrag } from "./venue-week.js";

export const venueRoute = () => {
  if (location.hash === "#/venues") return { list: true };
  const m = location.hash.match(/^#\/venue\/(.+)$/);
  return m ? { venue: decodeURIComponent(m[1]) } : null;
};

const view = { span: 24 };  // hours the plan shows

async function get(path) {
  const r = await fetch(API + path);
  if (r.status === 401) showLogin("your session ended: sign in again");
  if (!r.ok) throw new Error(`${r.status} ${detailText(await r.json().catch(() => ({})), r.status)}`);
  return r.json();
}

function clock(ms, tz, withDay) {
  return new Date(ms).toLocaleString([], { timeZone: tz, hour: "2-digit", minute: "2-digit",
    ...(withDay ? { weekday: "short" } : {}) });
}

// One row per zone: a bar per segment, as bright as its level, in its colour; the floor hatched.
function planSVG(plan) {
  const W = 1000, row = 26, head = 18, label = 120, n = plan.zones.length;
  const x = t => label + (t - plan.start) / (plan.end - plan.start) * (W - label);
  const hours = (plan.end - plan.start) / 3600_000;
  const step = hours > 48 ? 24 : hours > 12 ? 3 : 1;
  let ticks = "";
  for (let t = Math.ceil(plan.start / 3600_000 / step) * step * 3600_000; t < plan.end; t += step * 3600_000) {
    ticks += `<line class="grid-line" x1="${x(t)}" x2="${x(t)}" y1="${head}" y2="${head + n * row}"/>`
      + `<text x="${x(t) + 2}" y="12">${esc(clock(t, plan.tz, step >= 24))}</text>`;
  }
  const bars = plan.zones.map((z, i) => {
    const y = head + i * row;
    const segs = z.segments.filter(s => s.level > 0).map(s => {
      const rgb = s.rgb ? `rgb(${s.rgb.join(",")})` : "#f5a623";
      return `<rect class="seg ${esc(s.layer)}" data-layer="${esc(s.layer)}" x="${x(s.start)}" y="${y + 3}" width="${Math.max(1, x(s.end) - x(s.start))}"
        height="${row - 6}" fill="${rgb}" fill-opacity="${(0.15 + 0.85 * s.level / 255).toFixed(2)}"><title>${esc(z.name)}: ${
        esc(s.scene ?? s.layer)} at ${s.level} (${esc(s.layer)}), ${esc(clock(s.start, plan.tz, true))}–${esc(clock(s.end, plan.tz, true))}</title></rect>`;
    }).join("");
    return `<g data-testid="zone-${esc(z.id)}"><text x="0" y="${y + row / 2 + 4}">${esc(z.name)}${z.safety ? " ⚑" : ""}</text>${segs}</g>`;
  }).join("");
  const now = Date.now();
  const nowLine = now >= plan.start && now < plan.end
    ? `<line class="now" x1="${x(now)}" x2="${x(now)}" y1="${head - 4}" y2="${head + n * row}"/>` : "";
  return `<svg viewBox="0 0 ${W} ${head + n * row + 4}" role="img" aria-label="what each zone shows">${ticks}${bars}${nowLine}</svg>`;
}

function controllersTable(cs) {
  if (!cs.length) return `<p class="muted small">No controller has a zone of this venue yet.</p>`;
  return `<table data-testid="controllers" class="ve-table"><tr><th scope="col">controller</th><th scope="col">timeline</th><th scope="col">scene</th><th scope="col">runs until</th></tr>${cs.map(c =>
    `<tr data-testid="controller-${esc(c.device_id)}" data-in-sync="${c.in_sync}" data-scene="${esc(c.scene ?? "")}"><td><span class="badge ${c.online ? "online" : "offline"}">${c.online ? "online" : "offline"}</span> ${esc(c.device_id)}</td>
     <td>${c.desired_version == null ? "none pushed" : `v${c.desired_version}`} ${c.desired_version == null ? "" : c.in_sync
       ? `<span class="badge ok">applied</span>` : `<span class="badge pending">device has v${esc(c.applied_version ?? "–")}</span>`}</td>
     <td data-testid="scene-of-${esc(c.device_id)}">${esc(c.scene ?? "")}</td><td class="small">${c.horizon_end_ms ? new Date(c.horizon_end_ms).toLocaleString() : ""}</td></tr>`).join("")}</table>`;
}

function overridesList(v) {
  if (!v.overrides.length) return `<p class="muted small">No override: the schedule runs.</p>`;
  return `<ul class="devices">${v.overrides.map(o => `<li class="device" data-testid="override-${esc(o.id)}">
    <div><strong>${esc(o.scene ?? `${o.zone} at ${o.level?.level}`)}</strong> <span class="muted small">until ${esc(clock(Date.parse(o.expires), v.venue.tz, true))}</span></div>
    <span><button type="button" data-end-override="${esc(o.id)}">end now</button></span></li>`).join("")}</ul>`;
}

function overrideForms(v, st_, zoneSt) {
  return `<form data-testid="override-form" class="controls">
      <select name="scene" aria-label="scene">${v.scenes.map(s => `<option>${esc(s.id)}</option>`).join("")}</select>
      <select name="minutes" aria-label="for">${[[15, "15 min"], [60, "1 h"], [180, "3 h"]].map(([m, t]) => `<option value="${m}">${t}</option>`).join("")}</select>
      <button type="submit">apply now</button> ${st_}
    </form>
    <form data-testid="zone-override-form" class="ve-form">
      <label>Zone <select name="zone">${v.zones.map(z => `<option value="${esc(z.id)}">${esc(z.name)}</option>`).join("")}</select></label>
      <label>Level (0–255) <input type="number" name="level" min="0" max="255" value="255" class="ve-num" required></label>
      <label>for <select name="minutes"><option value="">until…</option>${[[15, "15 min"], [60, "1 h"], [180, "3 h"]].map(([m, t]) => `<option value="${m}" ${m === 60 ? "selected" : ""}>${t}</option>`).join("")}</select></label>
      <label>until (your clock) <input type="datetime-local" name="until"></label>
      <p class="controls"><button type="submit">override the zone</button></p>
      ${zoneSt}
    </form>`;
}

export async function renderVenues(page) {
  const [{ items }, me] = await Promise.all([get(""), fetch("/api/v1/auth/me").then(r => r.json()).catch(() => ({}))]);
  const missing = me.role === "venue" ? (me.venues ?? []).filter(id => !items.some(v => v.id === id)) : [];
  const create = me.role === "ops" || missing.length ? `<section class="card"><h3>Create a venue</h3>
    <form data-testid="venue-create" class="ve-form">
      <label>Venue id ${me.role === "ops" ? `<input name="id" required pattern="[a-z0-9][a-z0-9_\\-]*">`
        : `<select name="id">${missing.map(id => `<option>${esc(id)}</option>`).join("")}</select>`}</label>
      <label>Name <input name="name" required maxlength="120"></label>
      <label>Time zone (IANA) <input name="tz" required value="${esc(Intl.DateTimeFormat().resolvedOptions().timeZone)}"></label>
      <label>Latitude <input name="latitude" type="number" step="any" min="-90" max="90" value="0" required></label>
      <label>Longitude <input name="longitude" type="number" step="any" min="-180" max="180" value="0" required></label>
      ${me.role === "ops" ? `<label>Controllers (comma-separated) <input name="controllers"></label>` : ""}
      <p class="controls"><button type="submit">create</button></p>
      <p class="small ve-status" data-testid="venue-create-status" role="status"></p>
    </form></section>` : "";
  page.innerHTML = `<p><a href="#/">← all kits</a></p><section class="card"><h2>Venues</h2>${items.length
    ? `<ul class="devices">${items.map(v => `<li class="device" data-testid="venue-${esc(v.id)}"><div><a href="#/venue/${enc(v.id)}"><strong>${esc(v.name)}</strong></a>
      <span class="muted small">${esc(v.tz)} · ${v.zones} zones · ${v.schedules} schedules${v.overrides ? ` · ${v.overrides} override(s)` : ""}</span></div></li>`).join("")}</ul>`
    : `<p class="muted">No venue yet.</p>`}</section>${create}`;
}

// ------------------------------------------------------------------ one venue

function redrawEditor() {
  const page = document.querySelector("#venue-page");
  if (!page || !st.draft) return;
  const focus = document.activeElement;
  const key = focus?.form ? [focus.form.dataset.testid, focus.name] : focus?.dataset?.ve || focus?.dataset?.vw ? ["btn", focus.textContent] : null;
  const put = (sel, html) => { const el = page.querySelector(sel); if (el) el.innerHTML = html; };
  put("#ve-venue", venueForm());
  put("#ve-zones", zonesSection());
  put("#ve-scenes", scenesSection());
  put("#ve-week", weekSection());
  put("#ve-publish", publishSection());
  const title = page.querySelector("[data-testid=draft-state]");
  if (title) title.textContent = st.dirty ? "draft: not published yet" : "as published";
  if (key) {
    const el = key[0] === "btn" ? [...page.querySelectorAll("button")].find(b => b.textContent === key[1])
      : page.querySelector(`[data-testid="${key[0]}"] [name="${key[1]}"]`);
    el?.focus();
  }
}

async function renderNow(page, id) {
  const [v, plan] = await Promise.all([get(`/${enc(id)}`), get(`/${enc(id)}/plan?hours=${view.span}`)]);
  const put = (sel, html) => { const el = page.querySelector(sel); if (el) el.innerHTML = html; };
  put("#ve-plan", planSVG(plan));
  page.querySelectorAll("button[data-span]").forEach(b => b.setAttribute("aria-pressed", String(view.span === +b.dataset.span)));
  const live = page.querySelector("#ve-overrides");
  if (live && !live.contains(document.activeElement)) {
    const status = page.querySelector("[data-testid=override-status]")?.outerHTML ?? `<span data-testid="override-status" class="small" role="status"></span>`;
    // the statuses say how the last request went: kept across the redraw
    const zoneStatus = page.querySelector("[data-testid=zone-override-status]")?.outerHTML
      ?? `<p class="small ve-status" data-testid="zone-override-status" role="status"></p>`;
    live.innerHTML = overrideForms(v, status, zoneStatus) + overridesList(v);
  }
  put("#ve-controllers", `<div class="ve-scroll">${controllersTable(v.controllers)}</div>`);
}

export async function renderVenue(page, id) {
  if (isDragging()) return;
  if (st.id !== id || page.dataset.venue !== id || !page.querySelector("#ve-week")) {
    if (st.id !== id || !st.dirty) await load(id);  // back from another page: an unpublished draft stays
    page.dataset.venue = id;
    page.innerHTML = `<p><a href="#/venues">← venues</a></p>
      <article class="card" data-testid="venue-${esc(st.stored.venue.id)}">
        <h2>${esc(st.stored.venue.name)} <span class="muted small">${esc(st.stored.venue.tz)}</span></h2>
        <div class="windows">${[[24, "day"], [168, "week"]].map(([h, t]) =>
          `<button type="button" data-span="${h}" aria-pressed="${view.span === h}">${t}</button>`).join("")}</div>
        <section class="chart plan" data-testid="plan" id="ve-plan"></section>
        <p class="small muted">What runs now, as published. Brighter is higher; ⚑ safety zones never go below their floor while the venue is open (hatched).</p>
      </article>
      <div class="grid">
        <section class="card"><h3>Override</h3><div id="ve-overrides"></div></section>
        <section class="card"><h3>Controllers</h3><div id="ve-controllers"></div>
          <h3>What shows at…</h3>
          <form data-testid="preview-form" class="controls"><label>date and time (your clock) <input type="datetime-local" name="at" required></label>
            <button type="submit">preview</button></form><div data-testid="preview-result"></div></section>
      </div>
      <h2 class="ve-title">Lighting week <span class="muted small" data-testid="draft-state"></span></h2>
      <section class="card ve-card" aria-labelledby="ve-week-h"><h3 id="ve-week-h">Week planner</h3><div id="ve-week"></div></section>
      <section class="card ve-card"><h3>Publish</h3><div id="ve-publish"></div></section>
      <div class="grid">
        <section class="card"><h3>Zones</h3><div id="ve-zones"></div></section>
        <section class="card"><h3>Scenes</h3><div id="ve-scenes"></div></section>
      </div>
      <section class="card ve-card"><h3>Venue</h3><div id="ve-venue"></div></section>`;
    redrawEditor();
  }
  await renderNow(page, id);
}

async function previewAt(f, id) {
  const out = f.parentElement.querySelector("[data-testid=preview-result]");
  const at = new Date(f.at.value);
  const r = await call("GET", `/${enc(id)}/preview?at=${enc(at.toISOString())}`);
  if (!r.ok) { out.textContent = `refused: ${r.text}`; return; }
  out.innerHTML = `<div class="ve-scroll"><table class="ve-table"><tr><th scope="col">zone</th><th scope="col">level</th><th scope="col">scene</th><th scope="col">from</th></tr>${
    Object.entries(r.data.zones).map(([z, p]) => `<tr data-testid="preview-${esc(z)}"><td>${esc(z)}</td><td>${p.level}${p.rgb ? ` rgb(${p.rgb.join(",")})` : ""}</td><td>${esc(p.scene ?? "")}</td><td>${esc(p.layer)}</td></tr>`).join("")}</table></div>`;
}

async function zoneOverride(f, id) {
  const status = f.querySelector("[data-testid=zone-override-status]");
  const body = { zone: f.zone.value, level: { level: +f.level.value } };
  if (f.minutes.value) body.minutes = +f.minutes.value;
  else if (f.until.value) body.expires = new Date(f.until.value).toISOString();
  status.textContent = "sending…";
  const r = await call("POST", `/${enc(id)}/overrides`, body);
  status.textContent = r.ok ? `overridden until ${new Date(r.data.override.expires).toLocaleString()}` : `refused: ${r.text}`;
  status.dataset.ok = String(r.ok);
}

export function wireVenueEvents(rerender) {
  const reload = async discard => { if (discard) st.id = null; else redrawEditor(); await rerender(); };
  document.addEventListener("click", async ev => {
    const b = ev.target.closest("button");
    const r = venueRoute();
    if (!b || !r?.venue) return;
    if (await onEditorClick(b, redrawEditor)) return;
    if (await onWeekClick(b, redrawEditor, reload)) return;
    if (b.dataset.span) { view.span = +b.dataset.span; rerender(); }
    if (b.dataset.endOverride) {
      await fetch(`${API}/${enc(r.venue)}/overrides/${enc(b.dataset.endOverride)}`, { method: "DELETE" });
      b.blur();  // the override list is redrawn only while nothing in it has the focus
      rerender();
    }
  });
  document.addEventListener("submit", async ev => {
    const f = ev.target;
    const r = venueRoute();
    if (r?.list && f.dataset.testid === "venue-create") {
      ev.preventDefault();
      const body = { id: f.id.value, name: f.name.value, tz: f.tz.value, latitude: +f.latitude.value, longitude: +f.longitude.value,
        controllers: (f.controllers?.value ?? "").split(",").map(x => x.trim()).filter(Boolean) };
      const res = await call("PUT", `/${enc(body.id)}`, body);
      if (res.ok) location.hash = `#/venue/${enc(body.id)}`;
      else f.querySelector("[data-testid=venue-create-status]").textContent = `refused: ${res.text}`;
      return;
    }
    if (!r?.venue) return;
    ev.preventDefault();
    if (await onEditorSubmit(f, redrawEditor) || await onWeekSubmit(f, redrawEditor)) return;
    if (f.dataset.testid === "preview-form") return previewAt(f, r.venue);
    if (f.dataset.testid === "zone-override-form") { await zoneOverride(f, r.venue); document.activeElement?.blur(); return rerender(); }
    if (f.dataset.testid !== "override-form") return;
    const status = f.querySelector("[data-testid=override-status]");
    status.textContent = "sending…";
    const res = await call("POST", `/${enc(r.venue)}/overrides`, { scene: f.scene.value, minutes: +f.minutes.value });
    status.textContent = res.ok ? `applied: pushed to ${res.data.pushed.filter(p => p.version != null).length} controller(s)`
      : `refused: ${res.text}`;
    status.dataset.ok = String(res.ok);
    document.activeElement?.blur();
    rerender();
  });
  const page = document.querySelector("#venue-page");
  if (page) wirePlannerDrag(page, redrawEditor);
}

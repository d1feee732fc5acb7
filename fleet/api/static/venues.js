// Venue lighting pages: every venue (#/venues) and one venue (#/venue/<id>): what each zone will
// show over a day or a week (GET .../plan), a manual override (POST .../overrides) that the
// controllers apply at once, the overrides in force, and each controller's timeline, desired vs
// applied. Plain DOM, as app.js.

import { showLogin } from "./login.js";

const API = "/api/v1/venues";
const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const enc = encodeURIComponent;

export const venueRoute = () => {
  if (location.hash === "#/venues") return { list: true };
  const m = location.hash.match(/^#\/venue\/(.+)$/);
  return m ? { venue: decodeURIComponent(m[1]) } : null;
};

const view = { span: 24 };  // hours the plan shows

async function get(path) {
  const r = await fetch(API + path);
  if (r.status === 401) showLogin("your session ended: sign in again");
  if (!r.ok) throw new Error(`${r.status} ${(await r.text()).slice(0, 200)}`);
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
  return `<table data-testid="controllers"><tr><th>controller</th><th>timeline</th><th>scene</th><th>runs until</th></tr>${cs.map(c =>
    `<tr data-testid="controller-${esc(c.device_id)}" data-in-sync="${c.in_sync}"><td><span class="badge ${c.online ? "online" : "offline"}">${c.online ? "online" : "offline"}</span> ${esc(c.device_id)}</td>
     <td>${c.desired_version == null ? "none pushed" : `v${c.desired_version}`} ${c.desired_version == null ? "" : c.in_sync
       ? `<span class="badge ok">applied</span>` : `<span class="badge pending">device has v${esc(c.applied_version ?? "–")}</span>`}</td>
     <td>${esc(c.scene ?? "")}</td><td class="small">${c.horizon_end_ms ? new Date(c.horizon_end_ms).toLocaleString() : ""}</td></tr>`).join("")}</table>`;
}

function overridesList(v) {
  if (!v.overrides.length) return `<p class="muted small">No override: the schedule runs.</p>`;
  return `<ul class="devices">${v.overrides.map(o => `<li class="device" data-testid="override-${esc(o.id)}">
    <div><strong>${esc(o.scene ?? `${o.zone} at ${o.level?.level}`)}</strong> <span class="muted small">until ${esc(clock(Date.parse(o.expires), v.venue.tz, true))}</span></div>
    <span><button type="button" data-end-override="${esc(o.id)}">end now</button></span></li>`).join("")}</ul>`;
}

export async function renderVenues(page) {
  const { items } = await get("");
  page.innerHTML = `<p><a href="#/">← all kits</a></p><section class="card"><h2>Venues</h2>${items.length
    ? `<ul class="devices">${items.map(v => `<li class="device" data-testid="venue-${esc(v.id)}"><div><a href="#/venue/${enc(v.id)}"><strong>${esc(v.name)}</strong></a>
      <span class="muted small">${esc(v.tz)} · ${v.zones} zones · ${v.schedules} schedules${v.overrides ? ` · ${v.overrides} override(s)` : ""}</span></div></li>`).join("")}</ul>`
    : `<p class="muted">No venue yet: <code>PUT ${API}/&lt;id&gt;</code>.</p>`}</section>`;
}

export async function renderVenue(page, id) {
  const [v, plan] = await Promise.all([get(`/${enc(id)}`), get(`/${enc(id)}/plan?hours=${view.span}`)]);
  const st = page.querySelector("[data-testid=override-status]")?.outerHTML ?? `<span data-testid="override-status" class="small"></span>`;
  page.innerHTML = `<p><a href="#/venues">← venues</a></p>
    <article class="card" data-testid="venue-${esc(v.venue.id)}">
      <h2>${esc(v.venue.name)} <span class="muted small">${esc(v.venue.tz)}</span></h2>
      <div class="windows">${[[24, "day"], [168, "week"]].map(([h, t]) =>
        `<button type="button" data-span="${h}" aria-pressed="${view.span === h}">${t}</button>`).join("")}</div>
      <section class="chart plan" data-testid="plan">${planSVG(plan)}</section>
      <p class="small muted">Brighter is higher; ⚑ safety zones never go below their floor while the venue is open (hatched).</p>
    </article>
    <div class="grid">
      <section class="card"><h3>Override</h3>
        <form data-testid="override-form" class="controls">
          <select name="scene" aria-label="scene">${v.scenes.map(s => `<option>${esc(s.id)}</option>`).join("")}</select>
          <select name="minutes" aria-label="for">${[[15, "15 min"], [60, "1 h"], [180, "3 h"]].map(([m, t]) => `<option value="${m}">${t}</option>`).join("")}</select>
          <button type="submit">apply now</button> ${st}
        </form>
        ${overridesList(v)}
      </section>
      <section class="card"><h3>Controllers</h3>${controllersTable(v.controllers)}</section>
    </div>`;
}

export function wireVenueEvents(rerender) {
  document.addEventListener("click", async ev => {
    const b = ev.target.closest("button");
    const r = venueRoute();
    if (!b || !r?.venue) return;
    if (b.dataset.span) { view.span = +b.dataset.span; rerender(); }
    if (b.dataset.endOverride) {
      await fetch(`${API}/${enc(r.venue)}/overrides/${enc(b.dataset.endOverride)}`, { method: "DELETE" });
      rerender();
    }
  });
  document.addEventListener("submit", async ev => {
    const f = ev.target.closest("[data-testid=override-form]");
    const r = venueRoute();
    if (!f || !r?.venue) return;
    ev.preventDefault();
    const status = f.querySelector("[data-testid=override-status]");
    status.textContent = "sending…";
    const res = await fetch(`${API}/${enc(r.venue)}/overrides`, { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ scene: f.scene.value, minutes: +f.minutes.value, by: "dashboard" }) });
    const body = await res.json().catch(() => ({}));
    status.textContent = res.ok ? `applied: pushed to ${body.pushed.filter(p => p.version != null).length} controller(s)`
      : `refused: ${body.detail ?? res.status}`;
    status.dataset.ok = String(res.ok);
    rerender();
  });
}

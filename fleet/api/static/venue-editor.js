// The venue page's editors: the venue itself (time zone, location, weekly opening hours, and, for
// ops only, the controllers it may use), its zones (outputs picked from what each controller has,
// the safety floor) and its scenes (a level and colour per zone, the fade; shown live on the real
// outputs through POST .../scene-preview). Each "save" changes the draft only (venue-draft.js).

import { call, edit, enc, esc, mayAssignControllers, setVenue, st } from "./venue-draft.js";

const DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const hex = rgb => "#" + (rgb ?? [255, 255, 255]).map(v => v.toString(16).padStart(2, "0")).join("");
const unhex = h => [1, 3, 5].map(i => parseInt(h.slice(i, i + 2), 16));

// ------------------------------------------------------------------ venue

function hoursRow(h, i) {
  return `<fieldset class="ve-hours" data-hours="${i}"><legend>Opening hours ${i + 1}</legend>
    ${DAYS.map(d => `<label class="ve-day"><input type="checkbox" name="h${i}-${d}" ${h.days.includes(d) ? "checked" : ""}> ${d}</label>`).join("")}
    <label>opens <input type="time" name="h${i}-open" value="${esc(h.open.slice(0, 5))}" required></label>
    <label>closes <input type="time" name="h${i}-close" value="${esc(h.close.slice(0, 5))}" required></label>
    <button type="button" data-ve="hours-remove" data-i="${i}">remove</button></fieldset>`;
}

export function venueForm() {
  const v = st.draft.venue;
  const ctl = mayAssignControllers()
    ? `<label>Controllers (ops: what this venue may light, comma-separated) <input name="controllers" value="${esc(v.controllers.join(", "))}"></label>`
    : `<p class="small"><span class="muted">Controllers (set by ops, read-only):</span> <span data-testid="venue-controllers">${esc(v.controllers.join(", ") || "none yet")}</span></p>`;
  return `<form data-testid="venue-form" class="ve-form">
    <label>Name <input name="name" value="${esc(v.name)}" required maxlength="120"></label>
    <label>Time zone (IANA) <input name="tz" value="${esc(v.tz)}" required list="ve-tzs"></label>
    <datalist id="ve-tzs">${(Intl.supportedValuesOf?.("timeZone") ?? []).map(z => `<option value="${esc(z)}">`).join("")}</datalist>
    <label>Latitude <input name="latitude" type="number" step="any" min="-90" max="90" value="${v.latitude}" required></label>
    <label>Longitude <input name="longitude" type="number" step="any" min="-180" max="180" value="${v.longitude}" required></label>
    ${ctl}
    ${v.hours.map(hoursRow).join("")}
    <p class="controls"><button type="button" data-ve="hours-add">add opening hours</button>
      <button type="submit">save venue to draft</button></p>
  </form>`;
}

function readVenue(f) {
  const v = structuredClone(st.draft.venue);
  v.name = f.name.value; v.tz = f.tz.value.trim();
  v.latitude = +f.latitude.value; v.longitude = +f.longitude.value;
  if (f.controllers) v.controllers = f.controllers.value.split(",").map(s => s.trim()).filter(Boolean);
  v.hours = v.hours.map((_, i) => ({ days: DAYS.filter(d => f[`h${i}-${d}`].checked),
    open: f[`h${i}-open`].value, close: f[`h${i}-close`].value }));
  return v;
}

// ------------------------------------------------------------------ zones

const zoneEdit = { id: null };

function outputsPicker(z) {
  if (!st.outputs.length) return `<p class="muted small">No controller yet: ops give this venue its controllers.</p>`;
  return st.outputs.map(o => {
    // taken by another zone of the draft (not only of what is published): one output, one zone
    const taken = ch => st.draft.zones.filter(x => x.id !== z.id).map(x => ({ zone: x.id, out: x.outputs }))
      .find(x => x.out.some(u => u.controller === o.device_id && u.kind === "pwm" && u.channel === ch));
    const pwm = o.channels.map(ch => {
      const on = z.outputs.some(x => x.controller === o.device_id && x.kind === "pwm" && x.channel === ch);
      const t = taken(ch);
      return `<label class="ve-out"><input type="checkbox" name="out:${esc(o.device_id)}:${ch}" ${on ? "checked" : ""} ${t ? "disabled" : ""}>
        ${ch}${t ? ` <span class="muted small">(${esc(t.zone)})</span>` : ""}</label>`;
    }).join("");
    const dmx = z.outputs.find(x => x.controller === o.device_id && x.kind === "dmx");
    const dmxIn = o.dmx ? `<label>DMX from slot <input type="number" min="1" max="512" name="dmx:${esc(o.device_id)}:slot" value="${dmx?.slot ?? ""}" class="ve-num"></label>
      <label>slots <input type="number" min="1" max="512" name="dmx:${esc(o.device_id)}:count" value="${dmx?.count ?? 3}" class="ve-num"></label>` : "";
    return `<fieldset class="ve-outputs" data-controller="${esc(o.device_id)}"><legend>${esc(o.device_id)} <span class="muted small">${esc(o.role)}${o.online ? ", online" : ", offline"}</span></legend>${pwm} ${dmxIn}</fieldset>`;
  }).join("");
}

export function zonesSection() {
  const zones = st.draft.zones;
  const z = zones.find(x => x.id === zoneEdit.id) ?? { id: "", name: "", safety: false, floor_level: null, outputs: [] };
  return `<ul class="devices" data-testid="zones">${zones.map(x => `<li class="device" data-testid="zone-item-${esc(x.id)}"><div><strong>${esc(x.name)}</strong>
      <span class="muted small">${esc(x.id)}${x.safety ? ` · safety, floor ${x.floor_level}` : ""} · ${x.outputs.map(o => `${esc(o.controller)} ${o.kind === "pwm" ? o.channel : `DMX ${o.slot}+${o.count}`}`).join(", ")}</span></div>
      <span><button type="button" data-ve="zone-edit" data-id="${esc(x.id)}">edit</button> <button type="button" data-ve="zone-remove" data-id="${esc(x.id)}">remove</button></span></li>`).join("")
    || `<li class="muted small">No zone yet.</li>`}</ul>
    <form data-testid="zone-form" class="ve-form">
      <label>Zone id <input name="id" value="${esc(z.id)}" required maxlength="63" pattern="[a-z0-9][a-z0-9_\\-]*" ${z.id ? "readonly" : ""}></label>
      <label>Name <input name="name" value="${esc(z.name)}" required maxlength="120"></label>
      <label class="ve-inline"><input type="checkbox" name="safety" ${z.safety ? "checked" : ""}> safety zone (ingress/egress)</label>
      <label>Floor while open (0–255) <input type="number" name="floor" min="0" max="255" value="${z.floor_level ?? ""}" class="ve-num"></label>
      ${outputsPicker(z)}
      <p class="controls"><button type="submit">save zone to draft</button>${z.id ? ` <button type="button" data-ve="zone-new">new zone</button>` : ""}</p>
    </form>`;
}

function readZone(f) {
  const outputs = [];
  for (const el of f.querySelectorAll("input[type=checkbox][name^='out:']")) {
    if (!el.checked) continue;
    const [, controller, channel] = el.name.split(":");
    outputs.push({ controller, kind: "pwm", channel });
  }
  for (const o of st.outputs.filter(o => o.dmx)) {
    const slot = f[`dmx:${o.device_id}:slot`]?.value;
    if (slot) outputs.push({ controller: o.device_id, kind: "dmx", slot: +slot, count: +(f[`dmx:${o.device_id}:count`].value || 1) });
  }
  const safety = f.safety.checked;
  return { id: f.id.value.trim(), name: f.name.value, safety, floor_level: safety ? +(f.floor.value || 0) : null, outputs };
}

// ------------------------------------------------------------------ scenes

const sceneEdit = { id: null };

export function scenesSection() {
  const scenes = st.draft.scenes;
  const s = scenes.find(x => x.id === sceneEdit.id) ?? { id: "", levels: {}, fade_ms: 0 };
  const rows = st.draft.zones.map(z => {
    const zl = s.levels[z.id];
    return `<fieldset class="ve-level" data-zone="${esc(z.id)}"><legend>${esc(z.name)}</legend>
      <label>level <input type="range" min="0" max="255" name="lv:${esc(z.id)}" value="${zl?.level ?? 0}"
        oninput="this.nextElementSibling.value=this.value"><output>${zl?.level ?? 0}</output></label>
      <label class="ve-inline"><input type="checkbox" name="tint:${esc(z.id)}" ${zl?.rgb ? "checked" : ""}> colour</label>
      <label>colour <input type="color" name="rgb:${esc(z.id)}" value="${hex(zl?.rgb)}"></label></fieldset>`;
  }).join("");
  return `<ul class="devices" data-testid="scenes">${scenes.map(x => `<li class="device" data-testid="scene-item-${esc(x.id)}"><div><strong>${esc(x.id)}</strong>
      <span class="muted small">${Object.entries(x.levels).map(([z, l]) => `${esc(z)} ${l.level}${l.rgb ? ` ${hex(l.rgb)}` : ""}`).join(", ") || "all off"}${x.fade_ms ? ` · fade ${x.fade_ms / 1000} s` : ""}</span></div>
      <span><button type="button" data-ve="scene-edit" data-id="${esc(x.id)}">edit</button> <button type="button" data-ve="scene-remove" data-id="${esc(x.id)}">remove</button></span></li>`).join("")
    || `<li class="muted small">No scene yet.</li>`}</ul>
    <form data-testid="scene-form" class="ve-form">
      <label>Scene id <input name="id" value="${esc(s.id)}" required maxlength="63" pattern="[a-z0-9][a-z0-9_\\-]*" ${s.id ? "readonly" : ""}></label>
      <label>Fade (seconds) <input type="number" name="fade" min="0" max="3600" step="0.1" value="${s.fade_ms / 1000}" class="ve-num"></label>
      ${rows || `<p class="muted small">Add a zone first.</p>`}
      <p class="controls"><button type="submit">save scene to draft</button>
        <button type="button" data-ve="scene-preview" data-testid="scene-preview">show on the lights now</button>
        <button type="button" data-ve="scene-unpreview">back to the schedule</button>
        ${s.id ? `<button type="button" data-ve="scene-new">new scene</button>` : ""}</p>
      <p class="small" data-testid="scene-preview-status" role="status"></p>
    </form>`;
}

function readScene(f) {
  const levels = {};
  for (const z of st.draft.zones) {
    const level = +f[`lv:${z.id}`].value;
    const tint = f[`tint:${z.id}`].checked;
    if (level > 0 || tint) levels[z.id] = tint ? { level, rgb: unhex(f[`rgb:${z.id}`].value) } : { level };
  }
  return { id: f.id.value.trim(), levels, fade_ms: Math.round(+f.fade.value * 1000) };
}

// ------------------------------------------------------------------ events

// `redraw()`: the page's editor parts again, from the draft. Returns true when it handled the event.
export async function onEditorClick(b, redraw) {
  const a = b.dataset.ve;
  if (!a) return false;
  if (a === "hours-add") {
    const v = readVenue(b.form);
    v.hours.push({ days: [...DAYS], open: "18:00", close: "23:00" });
    st.draft.venue = v;
    redraw();
  } else if (a === "hours-remove") {
    const v = readVenue(b.form);
    v.hours.splice(+b.dataset.i, 1);
    await setVenue(v); redraw();
  } else if (a === "zone-edit") { zoneEdit.id = b.dataset.id; redraw(); }
  else if (a === "zone-new") { zoneEdit.id = null; redraw(); }
  else if (a === "zone-remove") { await edit("zones", null, b.dataset.id); redraw(); }
  else if (a === "scene-edit") { sceneEdit.id = b.dataset.id; redraw(); }
  else if (a === "scene-new") { sceneEdit.id = null; redraw(); }
  else if (a === "scene-remove") { await edit("scenes", null, b.dataset.id); redraw(); }
  else if (a === "scene-preview" || a === "scene-unpreview") {
    const f = b.form, out = f.querySelector("[data-testid=scene-preview-status]");
    const s = readScene(f);
    const r = await call("POST", `/${enc(st.id)}/scene-preview`, a === "scene-preview"
      ? { levels: s.levels, fade_ms: s.fade_ms, zones: st.draft.zones } : { levels: null });
    out.textContent = r.ok ? (a === "scene-preview" ? `showing on ${r.data.map(x => x.device_id).join(", ") || "no controller"}; it holds until the schedule next changes`
      : "back to what the schedule shows") : `refused: ${r.text}`;
    out.dataset.ok = String(r.ok);
  } else return false;
  return true;
}

export async function onEditorSubmit(f, redraw) {
  const t = f.dataset.testid;
  if (t === "venue-form") await setVenue(readVenue(f));
  else if (t === "zone-form") { const z = readZone(f); zoneEdit.id = z.id; await edit("zones", z); }
  else if (t === "scene-form") { const s = readScene(f); sceneEdit.id = s.id; await edit("scenes", s); }
  else return false;
  redraw();
  return true;
}

// The venue page's draft: the whole set a venue user edits (venue, zones, scenes, schedules), kept
// here until published. Every edit is compiled by the fleet without storing (POST .../draft), which
// answers the compiler's own refusal (a conflict names both schedules and the overlap in local
// time), the week's windows and, per controller, what a publish would change. Publish and undo are
// one call each. Errors are shown as text: a 422's list of field messages one per line.

export const API = "/api/v1/venues";
export const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
export const enc = encodeURIComponent;

// One venue's editing state; kept across the page's periodic redraws (app.js polls).
export const st = {
  id: null, role: null, stored: null, draft: null, outputs: [], check: null, week: null,
  dirty: false, status: "", statusOk: null,
};

// A refusal's detail as readable lines: FastAPI's 422 is a list of {loc, msg}, others a string.
export function detailText(body, status) {
  const d = body?.detail;
  if (Array.isArray(d)) return d.map(e => (typeof e === "string" ? e : e.msg ?? JSON.stringify(e))).join("\n");
  if (d && typeof d === "object") return d.msg ?? JSON.stringify(d);
  return d ?? `HTTP ${status}`;
}

export async function call(method, path, body) {
  const r = await fetch(API + path, { method, headers: body === undefined ? {} : { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await r.json().catch(() => ({}));
  return { ok: r.ok, status: r.status, data, text: r.ok ? "" : detailText(data, r.status) };
}

const clone = x => JSON.parse(JSON.stringify(x));

export async function load(id) {
  const [v, outs, me] = await Promise.all([call("GET", `/${enc(id)}`), call("GET", `/${enc(id)}/outputs`),
    fetch("/api/v1/auth/me").then(r => r.json()).catch(() => ({}))]);
  if (!v.ok) throw new Error(v.text);
  st.id = id;
  st.role = me.role ?? null;
  st.stored = v.data;
  st.outputs = outs.ok ? outs.data : [];
  st.draft = { venue: clone(v.data.venue), zones: clone(v.data.zones), scenes: clone(v.data.scenes),
    schedules: clone(v.data.schedules) };
  st.dirty = false;
  await check();
}

// Compile the draft (nothing stored); the answer drives the planner, the conflict line and the diff.
export async function check() {
  const q = st.week ? `?week=${st.week}` : "";
  const r = await call("POST", `/${enc(st.id)}/draft${q}`, st.draft);
  st.check = r.ok ? r.data : { problem: r.text, conflict: null, windows: st.check?.windows ?? [], diff: [] };
  return st.check;
}

// Replace (or add) one item of the draft by id; null removes `removeId`.
export async function edit(kind, item, removeId) {
  const key = item ? item.id : removeId;
  const list = st.draft[kind].filter(x => x.id !== key);
  if (item) list.push(item);
  st.draft[kind] = list;
  st.dirty = true;
  return check();
}

export async function setVenue(venue) {
  st.draft.venue = venue;
  st.dirty = true;
  return check();
}

export async function publish() {
  const r = await call("POST", `/${enc(st.id)}/publish`, st.draft);
  if (r.ok) await load(st.id);
  return r;
}

export async function undo() {
  const r = await call("POST", `/${enc(st.id)}/undo`);
  if (r.ok) await load(st.id);
  return r;
}

export const mayAssignControllers = () => st.role === "ops";

// The venue page's week: a planner of the draft's schedule windows (what POST .../draft answers,
// sun windows included), in the venue's local time. Drag down an empty stretch of a day to make a
// weekly window there; drag a window's lower edge to move its end; click a window (or Tab to it and
// press Enter) to edit it in the form below, which is also the keyboard way to make one (weekly,
// one-off, or from sunrise/sunset ± minutes). A conflict is the compiler's own sentence, inline, and
// both schedules are outlined. Then publish, with the diff per controller, or undo the last change.

import { edit, esc, publish, st, undo, check } from "./venue-draft.js";

const DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const HOUR_PX = 20, SNAP_MIN = 15;
const sel = { id: null, draftNew: null };
let drag = null;  // {kind: "new"|"resize", ...} while the pointer is down

export const isDragging = () => drag !== null;

// ------------------------------------------------------------------ local dates

const dayMs = 86400_000;
const toDate = s => new Date(s + "T00:00:00Z");
const ymd = d => d.toISOString().slice(0, 10);
const addDays = (s, n) => ymd(new Date(toDate(s).getTime() + n * dayMs));
export function todayIn(tz) { return new Intl.DateTimeFormat("en-CA", { timeZone: tz }).format(new Date()); }
export function mondayOf(s) { const wd = (toDate(s).getUTCDay() + 6) % 7; return addDays(s, -wd); }
const weekStart = () => st.week ?? mondayOf(todayIn(st.draft.venue.tz));
const hhmm = m => `${String(Math.floor(m / 60) % 24).padStart(2, "0")}:${String(m % 60).padStart(2, "0")}`;
const minutesOf = t => +t.slice(0, 2) * 60 + +t.slice(3, 5);

// ------------------------------------------------------------------ planner

function pieces(w, first) {
  // a window as one block per local day it touches
  const [sd, st_] = w.start_local.split("T"), [ed, et] = w.end_local.split("T");
  const out = [];
  let day = sd, from = minutesOf(st_);
  for (let guard = 0; guard < 9; guard++) {
    const last = day === ed;
    const to = last ? minutesOf(et) : 1440;
    const i = Math.round((toDate(day) - toDate(first)) / dayMs);
    if (i >= 0 && i < 7 && to > from) out.push({ i, from, to, last });
    if (last) break;
    day = addDays(day, 1); from = 0;
  }
  return out;
}

function plannerHTML() {
  const first = weekStart();
  const conflict = new Set(st.check?.conflict ?? []);
  const cols = DAYS.map((d, i) => {
    const date = addDays(first, i);
    const blocks = (st.check?.windows ?? []).flatMap(w => pieces(w, first).filter(p => p.i === i).map(p => {
      const editable = st.draft.schedules.find(s => s.id === w.schedule)?.kind !== "sun";
      return `<button type="button" class="vw-block${conflict.has(w.schedule) ? " conflict" : ""}${sel.id === w.schedule ? " selected" : ""}"
        data-vw="select" data-id="${esc(w.schedule)}" data-testid="window-${esc(w.schedule)}-${i}"
        style="top:${p.from / 60 * HOUR_PX}px;height:${Math.max(8, (p.to - p.from) / 60 * HOUR_PX)}px">
        <span>${esc(w.schedule)}</span> <span class="vw-meta">${esc(w.scene)} · p${w.priority}</span>
        <span class="sr-only">(priority ${w.priority}), ${esc(w.start_local.replace("T", " "))} to ${esc(w.end_local.replace("T", " "))}</span>
        ${p.last && editable ? `<span class="vw-resize" data-vw="resize" data-id="${esc(w.schedule)}" data-day="${i}" aria-hidden="true"></span>` : ""}</button>`;
    })).join("");
    return `<div class="vw-col" data-day="${i}" data-date="${date}" data-testid="day-${d}"><div class="vw-head">${d} ${date.slice(5)}</div>
      <div class="vw-track" data-vw-track="${i}" style="height:${24 * HOUR_PX}px">${blocks}</div></div>`;
  }).join("");
  const hours = Array.from({ length: 24 }, (_, h) => `<div style="height:${HOUR_PX}px">${String(h).padStart(2, "0")}</div>`).join("");
  return `<div class="vw-nav controls"><button type="button" data-vw="prev">← week</button>
      <span data-testid="week-of">week of ${first}</span> <button type="button" data-vw="next">week →</button>
      <span class="muted small">${esc(st.draft.venue.tz)} local time</span></div>
    <div class="vw-grid" data-testid="planner"><div class="vw-hours"><div class="vw-head"></div>${hours}</div>${cols}</div>`;
}

// ------------------------------------------------------------------ schedule form

function scheduleForm() {
  const s = st.draft.schedules.find(x => x.id === sel.id) ?? sel.draftNew ?? { id: "", kind: "weekly", scene: st.draft.scenes[0]?.id ?? "", priority: 0, days: [...DAYS], start: "19:00", end: "23:00" };
  const scenes = st.draft.scenes.map(x => `<option ${x.id === s.scene ? "selected" : ""}>${esc(x.id)}</option>`).join("");
  const kinds = [["weekly", "every week"], ["once", "once"], ["sun", "sunrise/sunset"]].map(([k, t]) => `<option value="${k}" ${s.kind === k ? "selected" : ""}>${t}</option>`).join("");
  const days = s.days ?? DAYS;
  const edge = e => e && typeof e === "object" ? e : { event: "sunset", offset_min: 0 };
  const sStart = edge(s.kind === "sun" ? s.start : null), sEnd = s.kind === "sun" ? s.end : "23:00";
  const edgeSel = (name, e) => `<select name="${name}" aria-label="${name.replace("_", " ")}">${["sunrise", "sunset"].map(x => `<option ${e.event === x ? "selected" : ""}>${x}</option>`).join("")}</select>`;
  return `<form data-testid="schedule-form" class="ve-form" data-kind="${esc(s.kind)}">
    <label>Schedule id <input name="id" value="${esc(s.id)}" required maxlength="63" pattern="[a-z0-9][a-z0-9_\\-]*" ${st.draft.schedules.some(x => x.id === s.id) ? "readonly" : ""}></label>
    <label>Kind <select name="kind">${kinds}</select></label>
    <label>Scene <select name="scene" required>${scenes}</select></label>
    <label>Priority (0–254, higher wins) <input type="number" name="priority" min="0" max="254" value="${s.priority}" class="ve-num"></label>
    <fieldset class="ve-when" data-kind="weekly sun"><legend>Days</legend>${DAYS.map(d => `<label class="ve-day"><input type="checkbox" name="d-${d}" ${days.includes(d) ? "checked" : ""}> ${d}</label>`).join("")}</fieldset>
    <fieldset class="ve-when" data-kind="weekly once"><legend>Local time</legend>
      <label>date (once) <input type="date" name="date" value="${esc(s.date ?? (s.start_at ?? "").slice(0, 10) ?? "")}"></label>
      <label>from <input type="time" name="start" value="${esc(typeof s.start === "string" ? s.start.slice(0, 5) : (s.start_at ?? "").slice(11, 16))}"></label>
      <label>to <input type="time" name="end" value="${esc(typeof s.end === "string" ? s.end.slice(0, 5) : (s.end_at ?? "").slice(11, 16))}"></label></fieldset>
    <fieldset class="ve-when" data-kind="sun"><legend>Sun</legend>
      <label>from ${edgeSel("sun_start", sStart)}</label>
      <label>± minutes <input type="number" name="sun_offset" min="-720" max="720" value="${sStart.offset_min}" class="ve-num"></label>
      <label>until (local time) <input type="time" name="sun_end" value="${esc(typeof sEnd === "string" ? sEnd.slice(0, 5) : "23:00")}"></label></fieldset>
    <p class="controls"><button type="submit">save schedule to draft</button>
      ${s.id ? `<button type="button" data-vw="remove" data-id="${esc(s.id)}">remove</button> <button type="button" data-vw="new">new schedule</button>` : ""}</p>
  </form>`;
}

function readSchedule(f) {
  const base = { id: f.id.value.trim(), kind: f.kind.value, scene: f.scene.value, priority: +f.priority.value };
  const days = DAYS.filter(d => f[`d-${d}`].checked);
  if (base.kind === "weekly") return { ...base, days, start: f.start.value, end: f.end.value };
  if (base.kind === "once") {
    const end = f.end.value, start = f.start.value;
    return { ...base, date: f.date.value, start, end };
  }
  return { ...base, days, start: { event: f.sun_start.value, offset_min: +f.sun_offset.value }, end: f.sun_end.value };
}

// ------------------------------------------------------------------ publish

function diffHTML() {
  const c = st.check;
  if (!c) return "";
  if (c.problem) return `<p class="ve-problem" role="alert" data-testid="draft-problem">${esc(c.problem)}</p>`;
  const changed = c.diff.filter(d => d.changed);
  if (!changed.length) return `<p class="muted small" data-testid="diff">Nothing to publish: the controllers already have this.</p>`;
  return `<div data-testid="diff">${changed.map(d => `<div class="vw-diff" data-testid="diff-${esc(d.device_id)}"><strong>${esc(d.device_id)}</strong><ul class="small">
    ${d.windows_added.map(w => `<li class="add">+ ${esc(w.text)}</li>`).join("")}
    ${d.windows_removed.map(w => `<li class="del">− ${esc(w.text)}</li>`).join("")}
    ${d.scenes_changed.map(s => `<li>scene ${esc(s)} changes its levels</li>`).join("")}
    ${d.floor_changed ? "<li>the safety floor or opening hours change</li>" : ""}
    ${d.new ? "<li>gets this venue's timeline for the first time</li>" : ""}${d.gone ? "<li>no zone uses it any more: it keeps its last timeline</li>" : ""}</ul></div>`).join("")}
    <p class="muted small">What each controller is given: the next 48 h, pushed again as they pass.</p></div>`;
}

export function weekSection() {
  return `${plannerHTML()}<div data-testid="draft-check" aria-live="polite">${st.check?.problem ? diffHTML() : ""}</div>${scheduleForm()}`;
}

export function publishSection() {
  const blocked = !!st.check?.problem;
  return `${st.check?.problem ? "" : diffHTML()}
    <p class="controls"><button type="button" data-vw="publish" data-testid="publish" ${blocked ? "disabled" : ""}>publish</button>
      <button type="button" data-vw="undo" data-testid="undo">undo the last change</button>
      <button type="button" data-vw="discard" ${st.dirty ? "" : "disabled"}>discard the draft</button></p>
    <p class="small" data-testid="publish-status" role="status" data-ok="${st.statusOk ?? ""}">${esc(st.status)}</p>`;
}

// ------------------------------------------------------------------ events

export async function onWeekClick(b, redraw, reload) {
  const a = b.dataset.vw;
  if (!a) return false;
  if (a === "select") { sel.id = b.dataset.id; sel.draftNew = null; redraw(); }
  else if (a === "new") { sel.id = null; sel.draftNew = null; redraw(); }
  else if (a === "remove") { await edit("schedules", null, b.dataset.id); sel.id = null; redraw(); }
  else if (a === "prev" || a === "next") { st.week = addDays(weekStart(), a === "prev" ? -7 : 7); await check(); redraw(); }
  else if (a === "publish" || a === "undo") {
    const r = await (a === "publish" ? publish() : undo());
    const n = r.ok ? r.data.pushed.filter(p => p.version != null).length : 0;
    st.status = r.ok ? `${a === "publish" ? "published" : "undone"}: pushed to ${n} controller(s)` : `refused: ${r.text}`;
    st.statusOk = r.ok;
    await reload();
  } else if (a === "discard") { await reload(true); }
  else return false;
  return true;
}

// The schedule form shows the fields of its kind only.
document.addEventListener("change", ev => {
  const f = ev.target.form;
  if (f?.dataset.testid === "schedule-form" && ev.target.name === "kind") f.dataset.kind = ev.target.value;
});

export async function onWeekSubmit(f, redraw) {
  if (f.dataset.testid !== "schedule-form") return false;
  const s = readSchedule(f);
  sel.id = s.id; sel.draftNew = null;
  await edit("schedules", s);
  redraw();
  return true;
}

// Drag on a day's track: down on empty space makes a weekly window; down on a lower edge resizes.
const snap = y => Math.max(0, Math.min(1440, Math.round(y / HOUR_PX * 60 / SNAP_MIN) * SNAP_MIN));

export function wirePlannerDrag(root, redraw) {
  root.addEventListener("pointerdown", ev => {
    const handle = ev.target.closest(".vw-resize");
    const track = ev.target.closest("[data-vw-track]");
    if (!track || ev.button !== 0) return;
    const rect = track.getBoundingClientRect();
    if (handle) {
      drag = { kind: "resize", id: handle.dataset.id, track, rect };
    } else if (!ev.target.closest(".vw-block")) {
      const m = snap(ev.clientY - rect.top);
      const ghost = document.createElement("div");
      ghost.className = "vw-ghost";
      track.append(ghost);
      drag = { kind: "new", day: +track.dataset.vwTrack, from: m, to: m, track, rect, ghost };
    } else return;
    ev.preventDefault();
    track.setPointerCapture?.(ev.pointerId);
  });
  root.addEventListener("pointermove", ev => {
    if (!drag) return;
    const m = snap(ev.clientY - drag.rect.top);
    if (drag.kind === "new") {
      drag.to = m;
      const a = Math.min(drag.from, drag.to), b = Math.max(drag.from, drag.to);
      Object.assign(drag.ghost.style, { top: `${a / 60 * HOUR_PX}px`, height: `${(b - a) / 60 * HOUR_PX}px` });
    } else drag.to = m;
  });
  root.addEventListener("pointerup", async ev => {
    if (!drag) return;
    const d = drag;
    drag = null;
    const m = snap(ev.clientY - d.rect.top);
    if (d.kind === "new") {
      d.ghost.remove();
      const a = Math.min(d.from, m), b = Math.max(d.from, m);
      if (b - a < SNAP_MIN) return;
      const day = DAYS[d.day];
      let id = `${day}-${hhmm(a).replace(":", "")}`;
      while (st.draft.schedules.some(s => s.id === id)) id += "b";
      const s = { id, kind: "weekly", scene: st.draft.scenes[0]?.id ?? "", priority: 0, days: [day], start: hhmm(a), end: hhmm(b) };
      sel.id = id;
      await edit("schedules", s);
    } else {
      const s = structuredClone(st.draft.schedules.find(x => x.id === d.id));
      if (!s || m < SNAP_MIN) return;
      if (s.kind === "weekly") s.end = hhmm(m);
      else if (s.kind === "once" && s.date) s.end = hhmm(m);
      else if (s.kind === "once") s.end_at = s.end_at.slice(0, 11) + hhmm(m);
      else if (s.kind === "sun") s.end = hhmm(m);
      sel.id = s.id;
      await edit("schedules", s);
    }
    redraw();
  });
}

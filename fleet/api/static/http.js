// What every dashboard page needs to ask the fleet and to show its answer, in one place.

import { showLogin } from "./login.js";

export const $ = (sel, root = document) => root.querySelector(sel);
export const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

// Never throws: a fleet out of reach answers like a refusal (status 0), said where the answer goes.
// A string body goes as text/plain (a kit's manifest), anything else as JSON; a 401 asks to sign in.
export async function request(url, method = "GET", body) {
  const opts = { method };
  if (typeof body === "string") Object.assign(opts, { headers: { "content-type": "text/plain" }, body });
  else if (body !== undefined) Object.assign(opts, { headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  let r;
  try {
    r = await fetch(url, opts);
  } catch (e) {
    return { ok: false, status: 0, body: { detail: `fleet unreachable: ${e.message || e}` } };
  }
  if (r.status === 401) showLogin("your session ended: sign in again");
  return { ok: r.ok, status: r.status, body: r.status === 204 ? null : await r.json().catch(() => null) };
}

// A refusal as a sentence: FastAPI's detail is a string, or a list of {loc, msg} for a 422.
export function why(r) {
  const d = r.body?.detail;
  if (typeof d === "string") return d;
  if (Array.isArray(d)) return d.map(e => `${(e.loc ?? []).filter(x => x !== "body").join(".")}: ${e.msg}`).join("; ");
  return r.status ? `refused (${r.status})` : "fleet unreachable";
}

// A form's outcome line: its text, and whether it went well (the page's CSS colours it).
export function say(el, text, ok) {
  el.textContent = text;
  el.dataset.ok = String(ok);
}

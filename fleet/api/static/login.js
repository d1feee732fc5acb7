// Signing in to the fleet API from the dashboard. The token lives in an HttpOnly cookie the API sets
// (POST /api/v1/auth/token): no script ever holds it, nothing goes to localStorage, and the page's
// fetches and its EventSource carry it by themselves. A 401 from any call shows the sign-in form.

const AUTH = "/api/v1/auth";
const $ = sel => document.querySelector(sel);

// Who is signed in ({name, role, kits, venues}), or null after showing the sign-in form.
export async function whoAmI() {
  const r = await fetch(`${AUTH}/me`);
  if (r.status === 401) { showLogin(); return null; }
  if (!r.ok) throw new Error(`${r.status} ${(await r.text()).slice(0, 200)}`);
  const me = await r.json();
  const who = $("#whoami");
  who.hidden = false;
  who.querySelector("[data-testid=user-name]").textContent = `${me.name} (${me.role})`;
  return me;
}

// The sign-in form instead of the page (the session ended, or there was none).
export function showLogin(message = "") {
  const form = $("#login");
  if (!form.hidden && !message) return;
  $("main").hidden = true;
  $("#whoami").hidden = true;
  form.hidden = form.parentElement.hidden = false;
  $("#login-status").textContent = message;
  form.querySelector("input[name=username]").focus();
}

async function signIn(ev) {
  ev.preventDefault();
  const form = ev.target, status = $("#login-status");
  status.textContent = "signing in…";
  const r = await fetch(`${AUTH}/token`, { method: "POST", body: new URLSearchParams(new FormData(form)) });
  form.querySelector("input[name=password]").value = "";
  if (r.ok) { location.reload(); return; }  // the cookie is set: start the page afresh, signed in
  let detail = `${r.status}`;
  try { detail = (await r.json()).detail; } catch { /* not JSON */ }
  status.textContent = detail;
  status.dataset.error = "true";
}

async function signOut() {
  await fetch(`${AUTH}/logout`, { method: "POST" });
  location.reload();
}

export function wireLogin() {
  $("#login").addEventListener("submit", signIn);
  $("#logout").addEventListener("click", signOut);
}

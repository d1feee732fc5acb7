// Machine tokens (ops, #/ops/machines; docs/security.md "Machine tokens", docs/monitoring.md):
// make a token for Prometheus or a script, see every token (never the secret), revoke one.
//
// The token is in the one answer that made it (POST /api/v1/machine-tokens): it stays on screen,
// with a copy button, until ops press "done" or leave the page, and is never stored by the page.

import { $, esc, request, say, why } from "./http.js";

const API = "/api/v1/machine-tokens";
const when = ms => ms == null ? "" : new Date(ms).toLocaleString();

const call = (path, method, body) => request(API + path, method, body);


export function machinesPage(body) {
  body.innerHTML = `<section class="card" data-testid="machines"><h2>Machine tokens</h2>
    <p class="small">For Prometheus and scripts: a token that lasts until revoked (or its expiry), reads only,
      and only what its scope says. The fleet keeps its hash: the token is shown once, here.</p>
    <form id="m-new" class="o-filters" data-testid="machines-form">
      <label>Name <input name="name" required maxlength="63" pattern="[a-z0-9][a-z0-9._@\\-]{0,62}" autocomplete="off"
        placeholder="prometheus" title="lower case: letters, digits, . _ @ -"></label>
      <label>Scope <select name="scope">
        <option value="metrics">metrics: GET /metrics only</option>
        <option value="read">read: everything ops can read</option>
        <option value="kit">one kit: what its crew can read</option></select></label>
      <label>Kit <input name="kit" maxlength="63" autocomplete="off" placeholder="for the kit scope" disabled></label>
      <label>Expires after (days) <input name="days" type="number" min="1" max="3650" inputmode="numeric"
        placeholder="never"></label>
      <button type="submit" data-testid="machines-create">create</button>
    </form>
    <div id="m-secret" class="card" data-testid="machines-secret" hidden>
      <p><strong>Copy this token now</strong>: it is not shown again. Send it as
        <code>Authorization: Bearer …</code> (for Prometheus: its <code>credentials_file</code>).</p>
      <p><code id="m-token" data-testid="machines-token"></code></p>
      <p><button type="button" id="m-copy" data-testid="machines-copy">copy</button>
        <button type="button" id="m-done" data-testid="machines-done">done</button></p>
    </div>
    <p id="m-status" class="small" role="status" data-testid="machines-status"></p>
    <div class="o-scroll"><table data-testid="machines-table"><thead><tr>
      <th>name</th><th>scope</th><th>token</th><th>created</th><th>last used</th><th>expires</th><th>state</th>
      <th>action</th></tr></thead>
      <tbody id="m-rows"></tbody></table></div></section>`;
  const form = $("#m-new", body);
  form.scope.addEventListener("change", () => {
    form.kit.disabled = form.scope.value !== "kit";
    form.kit.required = !form.kit.disabled;
  });
  form.addEventListener("submit", ev => { ev.preventDefault(); create(body); });
  $("#m-copy", body).addEventListener("click", () => copy(body));
  $("#m-done", body).addEventListener("click", () => forget(body));
  $("#m-rows", body).addEventListener("click", ev => {
    const b = ev.target.closest("button[data-revoke]");
    if (b) revoke(body, b.dataset.revoke, b.dataset.name);
  });
  load(body);
}

async function load(body) {
  const r = await call("");
  const status = $("#m-status", body);
  if (!r.ok) { say(status, why(r), false); return; }
  $("#m-rows", body).innerHTML = r.body.map(t => `<tr data-testid="machine-${t.id}" data-active="${t.active}">
    <td>${esc(t.name)}</td><td><code>${esc(t.scope)}</code></td><td><code>${esc(t.prefix)}…</code></td>
    <td>${esc(when(t.created_ms))}<div class="small muted">by ${esc(t.created_by)}</div></td>
    <td>${esc(when(t.last_used_ms)) || "never"}</td><td>${esc(when(t.expires_ms)) || "never"}</td>
    <td>${t.revoked_ms != null ? `revoked<div class="small muted">${esc(when(t.revoked_ms))} by ${esc(t.revoked_by)}</div>`
      : t.active ? "active" : "expired"}</td>
    <td>${t.active ? `<button type="button" data-revoke="${t.id}" data-name="${esc(t.name)}"
      data-testid="machine-revoke-${t.id}" aria-label="revoke ${esc(t.name)}">revoke</button>` : ""}</td></tr>`).join("");
  if (!r.body.length) say(status, "no machine token yet", true);
}

async function create(body) {
  const form = $("#m-new", body), status = $("#m-status", body);
  const f = new FormData(form);
  const scope = f.get("scope") === "kit" ? `kit:${String(f.get("kit") ?? "").trim()}` : f.get("scope");
  const req = { name: String(f.get("name") ?? "").trim(), scope };
  const days = String(f.get("days") ?? "").trim();
  if (days) req.expires_in_days = Number(days);
  const r = await call("", "POST", req);
  if (!r.ok) { say(status, why(r), false); return; }
  $("#m-token", body).textContent = r.body.token;
  $("#m-secret", body).hidden = false;
  say(status, `token ${r.body.name} (${r.body.scope}) created: copy it now`, true);
  form.reset();
  form.kit.disabled = true;
  $("#m-copy", body).focus();
  load(body);
}

async function copy(body) {
  const token = $("#m-token", body).textContent, status = $("#m-status", body);
  try {
    await navigator.clipboard.writeText(token);
    say(status, "token copied", true);
  } catch {
    // No clipboard (plain HTTP on a network address): the token selected, for Ctrl-C.
    const range = document.createRange();
    range.selectNodeContents($("#m-token", body));
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    say(status, "the clipboard is not available here: the token is selected, copy it with Ctrl-C", false);
  }
}

function forget(body) {
  $("#m-token", body).textContent = "";
  $("#m-secret", body).hidden = true;
  say($("#m-status", body), "", true);
}

async function revoke(body, id, name) {
  const r = await call(`/${encodeURIComponent(id)}/revoke`, "POST");
  const status = $("#m-status", body);
  if (!r.ok) { say(status, why(r), false); return; }
  say(status, `token ${name} revoked: it no longer works`, true);
  load(body);
}

// Notifications (ops, #/ops/notify; docs/alerts.md "Notifications"): where alerts are sent (webhooks,
// emails) and how they escalate. The escalation policy (grace period, repeat interval, repeats before the next
// target); the targets in escalation order, each with its filters (kits, rules, least severity),
// its audience and its own repeat settings if any: add, edit, send a test, delete; and the recent
// sends with their outcome, refreshed every few seconds while the page is open (the fleet's
// notifier sends on its own clock, which the live stream does not announce).

import { $, esc, request, say, why } from "./http.js";

const API = "/api/v1/notify";
const POLL_MS = 3000;
const when = ms => ms == null ? "" : new Date(ms).toLocaleString();
const list = s => s.split(/[\s,]+/).map(x => x.trim()).filter(Boolean);
const seconds = s => s == null ? "" : s >= 3600 && s % 3600 === 0 ? `${s / 3600} h` : s >= 60 && s % 60 === 0 ? `${s / 60} min` : `${s} s`;

// The alert rules the fleet evaluates (fleet/alerts/rules.py RULES; the API refuses any other).
const RULES = ["low_soc", "forecast_short", "device_offline", "paper_out", "bms_protection", "scanner_errors",
  "kit_not_ready", "config_not_applied", "clock_unset", "clock_drift", "orders_not_uploaded", "double_entry"];

const ctx = { targets: [], editing: null, timer: null };

const call = (path, method, body) => request(API + path, method, body);


// ------------------------------------------------------------------ the page

export function notifyPage(body) {
  body.innerHTML = `<section class="card" data-testid="notify"><h2>Notifications</h2>
    <p class="small">An alert still open and unacknowledged after the grace period goes to the first target that
      hears of it (its kits, rules and least severity), again every repeat interval; after the repeats it goes to the
      next target. Back to normal goes to every target that was told. Acknowledging an alert stops it.</p>
    <h3>Escalation policy</h3>
    <form id="n-policy" class="o-filters" data-testid="notify-policy-form">
      <label>Grace period (seconds) <input name="grace_s" type="number" min="0" max="86400" step="any" required></label>
      <label>Repeat every (seconds) <input name="repeat_s" type="number" min="1" max="604800" step="any" required></label>
      <label>Repeats before the next target <input name="repeats" type="number" min="0" max="100" required></label>
      <button type="submit" data-testid="notify-policy-save">save policy</button>
    </form>
    <p id="n-policy-status" class="small" role="status" data-testid="notify-policy-status"></p>
    <h3>Targets, in escalation order</h3>
    <div class="o-scroll"><table data-testid="notify-targets"><thead><tr>
      <th>order</th><th>name</th><th>address</th><th>audience</th><th>kits</th><th>rules</th><th>least severity</th>
      <th>repeats</th><th>state</th><th><span class="o-sr">actions</span></th></tr></thead>
      <tbody id="n-rows"></tbody></table></div>
    <p id="n-status" class="small" role="status" data-testid="notify-status"></p>
    <h3 id="n-form-title">Add a target</h3>
    <form id="n-target" class="o-form" data-testid="notify-target-form">
      <div class="o-row">
        <label>Name <input name="name" required maxlength="63" autocomplete="off" placeholder="ops-pager"></label>
        <label>Order <input name="position" type="number" min="0" max="10000" value="0" required
          title="lower first in the escalation"></label>
        <label>Audience <select name="audience">
          <option value="ops">ops</option><option value="crew">crew (names its kits)</option>
          <option value="venue">venue (names its kits)</option></select></label>
      </div>
      <div class="o-row">
        <label>Kind <select name="kind"><option value="webhook">webhook (a JSON POST)</option>
          <option value="email">email (through the fleet's SMTP server)</option></select></label>
        <label class="n-wide">Address <input name="url" type="url" required maxlength="500" autocomplete="off"
          placeholder="https://hooks.example.com/popkit or mailto:ops@example.com"></label>
      </div>
      <div class="o-row">
        <label>Kits <input name="kits" autocomplete="off" placeholder="every kit" title="kit ids, separated by commas"></label>
        <label>Rules <select name="rules" multiple size="4" title="none selected: every rule">
          ${RULES.map(r => `<option value="${r}">${r.replaceAll("_", " ")}</option>`).join("")}</select></label>
        <label>Least severity <select name="min_severity">
          <option value="warning">warning</option><option value="critical">critical only</option></select></label>
      </div>
      <div class="o-row">
        <label>Repeat every (seconds) <input name="repeat_s" type="number" min="1" max="604800" step="any"
          placeholder="the policy's"></label>
        <label>Repeats before the next <input name="repeats" type="number" min="0" max="100" placeholder="the policy's"></label>
        <label class="n-check"><input name="enabled" type="checkbox" checked> enabled</label>
      </div>
      <p><button type="submit" data-testid="notify-target-save">add target</button>
        <button type="button" id="n-cancel" data-testid="notify-target-cancel" hidden>cancel</button></p>
    </form>
    <h3>Recent sends</h3>
    <p><button type="button" id="n-refresh" data-testid="notify-sends-refresh">refresh</button></p>
    <div class="o-scroll"><table data-testid="notify-sends"><thead><tr>
      <th>made</th><th>target</th><th>event</th><th>alert</th><th>kit</th><th>outcome</th><th>attempts</th><th>done</th>
      </tr></thead><tbody id="n-sends"></tbody></table></div>
  </section>`;
  const section = $("[data-testid=notify]", body);
  $("#n-policy", body).addEventListener("submit", ev => { ev.preventDefault(); savePolicy(body); });
  $("#n-target", body).addEventListener("submit", ev => { ev.preventDefault(); saveTarget(body); });
  $("#n-cancel", body).addEventListener("click", () => editTarget(body, null));
  $("#n-refresh", body).addEventListener("click", () => loadSends(body));
  $("#n-rows", body).addEventListener("click", ev => targetAction(body, ev));
  clearInterval(ctx.timer);
  ctx.editing = null;
  // Only while this page is on screen (and the tab visible): the section leaves the DOM with the page.
  ctx.timer = setInterval(() => {
    if (!section.isConnected) { clearInterval(ctx.timer); return; }
    if (document.visibilityState === "visible") loadSends(body);
  }, POLL_MS);
  loadPolicy(body);
  loadTargets(body);
  loadSends(body);
}

// ------------------------------------------------------------------ policy

async function loadPolicy(body) {
  const r = await call("/policy");
  const form = $("#n-policy", body), status = $("#n-policy-status", body);
  if (!r.ok) { say(status, why(r), false); return; }
  for (const k of ["grace_s", "repeat_s", "repeats"]) form[k].value = r.body[k];
  say(status, r.body.saved ? "" : "Not saved yet: the fleet's settings apply.", true);
}

async function savePolicy(body) {
  const form = $("#n-policy", body), status = $("#n-policy-status", body);
  const r = await call("/policy", "PUT", { grace_s: +form.grace_s.value, repeat_s: +form.repeat_s.value, repeats: +form.repeats.value });
  if (!r.ok) { say(status, `Not saved: ${why(r)}`, false); return; }
  say(status, `Saved: ${seconds(r.body.grace_s)} grace, then every ${seconds(r.body.repeat_s)}, ${r.body.repeats} `
    + `repeat${r.body.repeats === 1 ? "" : "s"} before the next target.`, true);
}

// ------------------------------------------------------------------ targets

async function loadTargets(body) {
  const r = await call("/targets");
  const rows = $("#n-rows", body);
  if (!r.ok) { say($("#n-status", body), why(r), false); return; }
  ctx.targets = r.body;
  rows.innerHTML = r.body.length ? r.body.map(t => `<tr data-testid="notify-target-${esc(t.name)}" data-id="${t.id}">
    <td>${t.position}</td><td>${esc(t.name)}</td><td>${t.kind === "email" ? "email " : ""}<code>${esc(t.url)}</code></td><td>${esc(t.audience)}</td>
    <td>${t.kits.length ? esc(t.kits.join(", ")) : "every kit"}</td>
    <td>${t.rules.length ? esc(t.rules.join(", ")) : "every rule"}</td><td>${esc(t.min_severity)}</td>
    <td>${t.repeats ?? "policy"}${t.repeat_s ? `, every ${seconds(t.repeat_s)}` : ""}</td>
    <td>${t.enabled ? "enabled" : "disabled"}</td>
    <td class="o-actions">
      <button type="button" data-act="edit" data-testid="notify-edit-${esc(t.name)}" aria-label="edit ${esc(t.name)}">edit</button>
      <button type="button" data-act="test" data-testid="notify-test-${esc(t.name)}" aria-label="send a test to ${esc(t.name)}">test</button>
      <button type="button" data-act="delete" data-testid="notify-delete-${esc(t.name)}" aria-label="delete ${esc(t.name)}">delete</button>
    </td></tr>`).join("") : `<tr><td colspan="10">No target yet: alerts are not sent anywhere.</td></tr>`;
}

function formBody(form) {
  const num = v => v === "" ? null : +v;
  return {
    name: form.name.value.trim(), url: form.url.value.trim(), audience: form.audience.value, kind: form.kind.value,
    kits: list(form.kits.value), rules: [...form.rules.selectedOptions].map(o => o.value),
    min_severity: form.min_severity.value, position: +form.position.value, enabled: form.enabled.checked,
    repeat_s: num(form.repeat_s.value), repeats: num(form.repeats.value),
  };
}

function editTarget(body, t) {
  const form = $("#n-target", body);
  ctx.editing = t ? t.id : null;
  $("#n-form-title", body).textContent = t ? `Edit target ${t.name}` : "Add a target";
  $("[data-testid=notify-target-save]", form).textContent = t ? "save target" : "add target";
  $("#n-cancel", body).hidden = !t;
  form.reset();
  if (!t) return;
  for (const k of ["name", "kind", "url", "audience", "min_severity", "position"]) form[k].value = t[k];
  form.kits.value = t.kits.join(", ");
  for (const o of form.rules.options) o.selected = t.rules.includes(o.value);
  form.repeat_s.value = t.repeat_s ?? "";
  form.repeats.value = t.repeats ?? "";
  form.enabled.checked = t.enabled;
  form.name.focus();
}

async function saveTarget(body) {
  const form = $("#n-target", body), status = $("#n-status", body);
  const t = formBody(form);
  const r = ctx.editing ? await call(`/targets/${ctx.editing}`, "PUT", t) : await call("/targets", "POST", t);
  if (!r.ok) { say(status, `Not saved: ${why(r)}`, false); return; }
  say(status, `${ctx.editing ? "Saved" : "Added"} target ${r.body.name}.`, true);
  editTarget(body, null);
  await loadTargets(body);
}

async function targetAction(body, ev) {
  const b = ev.target.closest("button[data-act]");
  if (!b) return;
  const t = ctx.targets.find(x => x.id === +b.closest("tr").dataset.id);
  if (!t) return;
  const status = $("#n-status", body);
  if (b.dataset.act === "edit") { editTarget(body, t); return; }
  if (b.dataset.act === "test") {
    say(status, `Sending a test to ${t.name}…`, true);
    const r = await call(`/targets/${t.id}/test`, "POST");
    if (!r.ok) { say(status, `Test not sent: ${why(r)}`, false); return; }
    const s = r.body;
    say(status, s.state === "sent" ? `Test sent to ${t.name}: ${s.outcome}.`
      : s.state === "pending" ? `Test to ${t.name} failed (${s.outcome}); it will be tried again.`
        : `Test to ${t.name} failed: ${s.outcome}.`, s.state === "sent");
    loadSends(body);
    return;
  }
  if (b.dataset.act === "delete" && window.confirm(`Delete target ${t.name}? Its sends stay listed.`)) {
    const r = await call(`/targets/${t.id}`, "DELETE");
    if (!r.ok) { say(status, `Not deleted: ${why(r)}`, false); return; }
    say(status, `Deleted target ${t.name}.`, true);
    if (ctx.editing === t.id) editTarget(body, null);
    await loadTargets(body);
  }
}

// ------------------------------------------------------------------ sends

async function loadSends(body) {
  const r = await call("/sends?limit=50");
  const rows = $("#n-sends", body);
  if (!rows) return;
  if (!r.ok) { rows.innerHTML = `<tr><td colspan="8">${esc(why(r))}</td></tr>`; return; }
  rows.innerHTML = r.body.items.length ? r.body.items.map(s => `<tr data-testid="notify-send-${s.id}" data-state="${s.state}"
      data-event="${s.event}" data-target="${esc(s.target)}" data-alert="${s.alert_id ?? ""}">
    <td>${when(s.created_ms)}</td><td>${esc(s.target)}</td><td>${esc(s.event)}</td>
    <td>${s.alert_id ? `#${s.alert_id}` : "test"}</td><td>${esc(s.kit_id ?? "")}</td>
    <td><span class="n-${s.state}">${esc(s.state)}</span>${s.outcome ? `: ${esc(s.outcome)}` : ""}</td>
    <td>${s.attempts}</td><td>${when(s.done_ms)}</td></tr>`).join("")
    : `<tr><td colspan="8">Nothing sent yet.</td></tr>`;
}

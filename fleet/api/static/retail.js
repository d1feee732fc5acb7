// The stalls' sales on the dashboard (docs/retail.md): every kit's takings per event (#/retail), and
// one kit's event (#/retail/<kit>/<event>): sales per product and payment method, stock left with
// what sold below zero flagged, refunds, conflicting uploads, the oldest order the kit has not
// uploaded (with its alert), CSV exports, and labels printed on the kit's printer (docs/labels.md).
// For ops (every kit) and crew (their kits); venue users have no retail. Plain DOM, as app.js.
//
// The page is built once per kit and event, so the labels form keeps what is being typed; its data
// parts are redrawn when the live stream says the kit changed (its orders arrive through ingest).

import { $, esc, request } from "./http.js";
import { reasonText } from "./updates.js";
import { bars } from "./charts.js";

const API = "/api/v1";
const enc = encodeURIComponent;
// The fleet's built-in label templates (kits/retail/labels.py); a name it does not know is refused with the list.
const TEMPLATES = ["shelf-40x30", "price-50x25", "tag-62"];
const ACK_WAIT_MS = 120_000;
const REFRESH_MS = 3000;  // a kit's devices report every few seconds: redraw at most this often

// route: the route the page was built for; view: "<kit>/<event>" shown (the route may leave the event out).
const ctx = { me: null, page: null, route: null, view: null, event: null, busy: false, again: false, last: 0, timer: null };

export const retailRoute = () => {
  if (location.hash === "#/retail") return { list: true };
  const m = location.hash.match(/^#\/retail\/([^/]+)(?:\/([^/]+))?$/);
  return m ? { kit: decodeURIComponent(m[1]), event: m[2] ? decodeURIComponent(m[2]) : null } : null;
};

export function initRetail(me) {
  ctx.me = me;
  const link = $("[data-testid=retail-link]");
  if (link) link.hidden = me.role === "venue";
}

// ------------------------------------------------------------------ API and formatting

const call = (path, method, body) => request(API + path, method, body);

async function get(path) {
  const r = await call(path);
  if (!r.ok) throw new Error(`${r.status} ${reasonText(r.body, r.status)}`);
  return r.body;
}

// Integer minor units as the currency writes them (EUR 2 decimals, JPY none).
function money(minor, currency) {
  if (minor == null) return "";
  if (!currency) return String(minor);
  const f = new Intl.NumberFormat(undefined, { style: "currency", currency });
  return f.format(minor / 10 ** f.resolvedOptions().maximumFractionDigits);
}

function since(s) {
  if (s == null) return "";
  return s >= 172800 ? `${(s / 86400).toFixed(1)} days` : s >= 5400 ? `${(s / 3600).toFixed(1)} h` : s >= 90 ? `${Math.round(s / 60)} min` : `${Math.round(s)} s`;
}

const kitHref = (kit, event) => `#/retail/${enc(kit)}` + (event ? `/${enc(event)}` : "");
const q = event => event ? `?event=${enc(event)}` : "";

// ------------------------------------------------------------------ #/retail: every kit

async function renderList(page) {
  page.innerHTML = `<p><a href="#/">← all kits</a></p><section class="card" data-testid="retail-list"><h2>Retail</h2><div id="retail-rows">loading…</div></section>`;
  const [sales, kits] = await Promise.all([get("/retail/sales"), get("/kits?limit=500")]);
  const rows = sales.sales.map(s => `<tr data-testid="retail-row-${esc(s.kit)}-${esc(s.event)}"${s.conflicts ? ' class="warn"' : ""}>
      <td><a href="${kitHref(s.kit, s.event)}">${esc(s.kit)}</a></td><td>${esc(s.event)}</td><td>${s.orders}</td>
      <td>${money(s.sold.gross, s.currency)}</td><td>${s.refunds ? money(s.refunded.gross, s.currency) : ""}</td>
      <td><strong>${money(s.gross, s.currency)}</strong></td><td>${s.conflicts || ""}</td>
      <td>${pendingText(sales.pending[s.kit])}</td></tr>`).join("");
  const others = kits.items.filter(k => !sales.sales.some(s => s.kit === k.id));
  $("#retail-rows", page).innerHTML = (rows
    ? `<div class="u-scroll"><table data-testid="retail-sales"><tr><th>kit</th><th>event</th><th>orders</th><th>sold</th><th>refunded</th><th>kept</th><th>conflicts</th><th>not uploaded</th></tr>${rows}</table></div>`
    : `<p class="muted">No sales uploaded yet.</p>`)
    + (others.length ? `<p class="small">Kits with no sales yet: ${others.map(k => `<a href="${kitHref(k.id)}" data-testid="retail-kit-${esc(k.id)}">${esc(k.id)}</a>`).join(", ")}</p>` : "");
}

function pendingText(p) {
  if (!p || !p.reported) return `<span class="muted">no report</span>`;
  if (!p.orders) return "all uploaded";
  return `<span class="${p.late ? "warn" : ""}" data-testid="pending-${p.late ? "late" : "ok"}">${p.orders} order${p.orders === 1 ? "" : "s"}, oldest ${since(p.age_s)} ago${p.late ? " · ALERT" : ""}</span>`;
}

// ------------------------------------------------------------------ #/retail/<kit>/<event>

function kitSkeleton(kit, event, events, printers) {
  const isCrew = ctx.me?.role === "crew";
  return `<p><a href="#/retail">← retail</a> · <a href="#/kit/${enc(kit)}">kit ${esc(kit)}</a></p>
    <article class="card" data-testid="retail-kit" data-kit="${esc(kit)}" data-event="${esc(event ?? "")}">
      <h2>${esc(kit)}${event ? ` · ${esc(event)}` : ""}</h2>
      <nav class="windows" aria-label="event">${events.map(e =>
        `<a class="chip" href="${kitHref(kit, e)}" aria-current="${e === event}" data-testid="retail-event-${esc(e)}">${esc(e)}</a>`).join("")}</nav>
      ${event ? "" : `<p class="muted">No catalog and no sales for this kit yet${isCrew ? "" : `: import a catalog (<code>popkit retail import --fleet</code>)`}.</p>`}
      <div id="retail-head" data-testid="retail-head"></div>
      <p class="small" data-testid="retail-exports">CSV:
        <a href="${API}/kits/${enc(kit)}/orders.csv${q(event)}" data-testid="csv-orders" download>orders</a> ·
        <a href="${API}/kits/${enc(kit)}/sales.csv${q(event)}" data-testid="csv-sales" download>sales</a> ·
        <a href="${API}/kits/${enc(kit)}/catalog.csv${q(event)}" data-testid="csv-catalog" download>catalog</a></p>
    </article>
    <div class="grid">
      <section class="card" data-testid="retail-sales"><h3>Sales</h3><div id="retail-sales">loading…</div></section>
      <section class="card" data-testid="retail-stock"><h3>Stock</h3><div id="retail-stock">loading…</div></section>
      <section class="card" data-testid="retail-refunds"><h3>Refunds and conflicts</h3><div id="retail-refunds">loading…</div></section>
      <section class="card" data-testid="retail-labels"><h3>Labels</h3>
        <form id="labels-form" data-testid="labels-form" class="u-form" novalidate>
          <fieldset class="r-modes"><legend class="small muted">Print</legend>
            <label class="u-check"><input type="radio" name="mode" value="all" checked> all stock (one label per unit carried)</label>
            <label class="u-check"><input type="radio" name="mode" value="one"> one product's stock</label>
            <label class="u-check"><input type="radio" name="mode" value="reprint"> a reprint of damaged labels</label>
          </fieldset>
          <label>Product <select name="sku" data-testid="labels-sku" disabled></select></label>
          <label>How many <input name="count" type="number" inputmode="numeric" min="1" max="999" value="1" data-testid="labels-count" disabled></label>
          <div class="u-row">
            <label>Template <select name="template">${TEMPLATES.map(t => `<option>${t}</option>`).join("")}</select></label>
            <label>Printer <select name="printer" data-testid="labels-printer">${printers.map(p => `<option>${esc(p)}</option>`).join("")
              || `<option value="">the kit's printer</option>`}</select></label>
          </div>
          <div><button type="submit" data-testid="labels-print"${event ? "" : " disabled"}>print labels</button></div>
          <p id="labels-status" data-testid="labels-status" role="status" aria-live="polite"></p>
        </form>
      </section>
    </div>`;
}

function headHTML(s) {
  const t = s.totals, cur = s.currency;
  const p = s.pending;
  const pending = !p.reported ? `<span class="muted">the kit has not reported its uploads yet</span>`
    : !p.orders ? "every order uploaded"
      : `<span class="${p.late ? "warn" : ""}">${p.orders} order${p.orders === 1 ? "" : "s"} not uploaded, the oldest from ${new Date(p.oldest_ms).toLocaleString()} (${since(p.age_s)} ago)</span>`
        + (p.late ? ` <span class="badge error" data-testid="pending-alert">alert: past ${since(p.alert_after_s)}</span>` : "");
  return `<div class="r-totals">
      <div><span class="small muted">orders</span><strong data-testid="total-orders">${s.orders}</strong></div>
      <div><span class="small muted">sold</span><strong data-testid="total-sold">${money(t.sold.gross, cur)}</strong></div>
      <div><span class="small muted">refunded</span><strong data-testid="total-refunded">${money(t.refunded.gross, cur)}</strong></div>
      <div><span class="small muted">kept</span><strong data-testid="total-kept">${money(t.gross, cur)}</strong></div>
    </div>
    <p class="small" data-testid="pending" data-late="${!!p.late}">Uploads: ${pending}</p>
    ${s.conflicts ? `<p class="warn small" data-testid="conflicts">${s.conflicts} upload${s.conflicts === 1 ? "" : "s"} conflicting with an order or refund already received: the first stands, see below</p>` : ""}`;
}

// What stayed sold per product: a bar chart (drawn by salesChart once in the page), then the table.
function salesHTML(s) {
  const cur = s.currency;
  if (!s.products.length) return `<p class="muted small">No sales yet.</p>`;
  const rows = s.products.map(p => `<tr data-testid="sales-${esc(p.sku)}"><td><strong>${esc(p.name ?? p.sku)}</strong><div class="small muted">${esc(p.sku)}</div></td>
      <td>${p.sold.qty}${p.refunded.qty ? ` <span class="small muted">−${p.refunded.qty}</span>` : ""}</td>
      <td>${money(p.gross, cur)}</td></tr>`).join("");
  const pay = s.payments.map(m => `<tr data-testid="payment-${esc(m.payment)}"><td>${esc(m.payment)}</td><td>${m.orders}</td><td>${m.refunds || ""}</td><td>${money(m.gross, cur)}</td></tr>`).join("");
  return `<div class="r-plot" data-testid="sales-chart"></div>
    <div class="u-scroll"><table><tr><th>product</th><th>sold</th><th>kept</th></tr>${rows}</table></div>
    <h3 class="r-sub">By payment</h3>
    <div class="u-scroll"><table data-testid="payments"><tr><th>method</th><th>orders</th><th>refunds</th><th>kept</th></tr>${pay}</table></div>`;
}

// Best sellers first; what was refunded whole (kept below zero) counts as nothing kept.
function salesChart(el, s) {
  if (!el) return;
  const top = [...s.products].sort((a, b) => b.gross - a.gross).slice(0, 12);
  const more = s.products.length - top.length;
  const names = top.map(p => p.name ?? p.sku);
  const format = v => money(Math.round(v), s.currency);
  bars(el, { names, values: top.map(p => Math.max(0, p.gross)), format,
    summary: `kept per product${more > 0 ? `, the ${top.length} best sellers` : ""}: `
      + top.map((p, i) => `${names[i]} ${money(p.gross, s.currency)}`).join(", ") });
}

function stockHTML(stock) {
  if (!stock.products.length) return `<p class="muted small">No catalog for this event.</p>`;
  return `<div class="u-scroll"><table><tr><th>product</th><th>carried</th><th>sold</th><th>back</th><th>left</th></tr>${stock.products.map(p =>
    `<tr data-testid="stock-${esc(p.sku)}" data-oversold="${p.oversold}"${p.oversold ? ' class="warn"' : ""}><td>${esc(p.name ?? p.sku)}${p.oversold ? ` <span class="badge error" title="sold below zero: the count carried was wrong, or a sale was scanned twice">oversold</span>` : ""}
      <div class="small muted">${esc(p.sku)}${p.in_catalog ? "" : " · not in the catalog"}</div></td>
      <td>${p.carried}</td><td>${p.sold}</td><td>${p.restocked || ""}</td><td><strong>${p.left}</strong></td></tr>`).join("")}</table></div>`;
}

function refundsHTML(orders, cur) {
  const refunds = [...orders.orders.flatMap(o => o.refunds.map(r => ({ ...r, payment: o.payment }))), ...orders.unmatched_refunds];
  const conflicted = [...orders.orders.filter(o => o.conflict), ...refunds.filter(r => r.conflict)];
  const list = refunds.length ? `<ul class="devices">${refunds.map(r => `<li class="device" data-testid="refund-${esc(r.id)}">
      <div><strong>${esc(r.kind)}</strong> ${money(r.gross, r.currency ?? cur)} <span class="small muted">${r.lines.map(x => `${x.qty}× ${esc(x.sku)}`).join(", ")}</span></div>
      <span class="small">${orders.unmatched_refunds.includes(r) ? `<span class="badge warning">order not received</span>` : ""}</span>
      <div class="meta small muted">order ${esc(r.order.slice(0, 8))} · by ${esc(r.by)} · ${new Date(r.ts).toLocaleString()}${r.reason ? ` · ${esc(r.reason)}` : ""}${r.restock === false ? " · not restocked" : ""}</div></li>`).join("")}</ul>`
    : `<p class="muted small">No refunds.</p>`;
  const conflicts = conflicted.length ? `<h3 class="r-sub warn">Conflicts</h3><ul class="alerts" data-testid="conflict-list">${conflicted.map(c =>
    `<li data-testid="conflict-${esc(c.id)}">${c.order ? "refund" : "order"} <code>${esc(c.id)}</code> from till ${esc(c.till)} #${c.n}: ${c.conflicting.length} other bod${c.conflicting.length === 1 ? "y" : "ies"} uploaded under its id (the first stands)</li>`).join("")}</ul>` : "";
  const more = orders.total > orders.orders.length ? `<p class="small muted">Refunds of the latest ${orders.orders.length} of ${orders.total} orders; the orders CSV has them all.</p>` : "";
  return list + conflicts + more;
}

async function refreshKit(page, kit, event) {
  if (!event) return;
  const [sales, stock, orders] = await Promise.all([get(`/kits/${enc(kit)}/sales${q(event)}`),
    get(`/kits/${enc(kit)}/stock${q(event)}`), get(`/kits/${enc(kit)}/orders${q(event)}&limit=500`)]);
  if (ctx.view !== `${kit}/${event}`) return;  // moved on meanwhile
  $("#retail-head", page).innerHTML = headHTML(sales);
  $("#retail-sales", page).innerHTML = salesHTML(sales);
  salesChart($("[data-testid=sales-chart]", page), sales);
  $("#retail-stock", page).innerHTML = stockHTML(stock);
  $("#retail-refunds", page).innerHTML = refundsHTML(orders, sales.currency);
  const sel = $("select[name=sku]", page);
  if (!sel.options.length) {
    sel.innerHTML = stock.products.filter(p => p.in_catalog).map(p => `<option value="${esc(p.sku)}">${esc(p.name ?? p.sku)} · ${esc(p.sku)} (${p.carried} carried)</option>`).join("");
  }
}

// Built once per route (the kit's events and printers looked up then); redrawn as data after.
async function renderKit(page, kit, wanted) {
  const route = `${kit}/${wanted ?? ""}`;
  if (ctx.route !== route) {
    const [catalog, sales, view] = await Promise.all([get(`/kits/${enc(kit)}/catalog`), get(`/kits/${enc(kit)}/sales`),
      get(`/kits/${enc(kit)}`)]);
    const events = [...new Set([...catalog.products.map(p => p.event), ...sales.products.map(p => p.event)])].sort();
    ctx.event = wanted ?? events[events.length - 1] ?? null;
    page.innerHTML = kitSkeleton(kit, ctx.event, events, view.devices.filter(d => d.role === "printer").map(d => d.id));
    ctx.route = route;
    ctx.view = `${kit}/${ctx.event}`;
  }
  await refreshKit(page, kit, ctx.event);
}

// ------------------------------------------------------------------ labels

function labelsBody(f, event) {
  const mode = f.mode.value;
  const body = { event, template: f.template.value };
  if (f.printer.value) body.printer = f.printer.value;
  if (mode === "all") body.all = true;
  if (mode === "one") Object.assign(body, { sku: f.sku.value, all: true });
  if (mode === "reprint") Object.assign(body, { sku: f.sku.value, count: +f.count.value });
  return body;
}

async function printLabels(f) {
  const r = retailRoute();
  const kitEl = $("[data-testid=retail-kit]");
  if (!r?.kit || !kitEl) return;
  const status = $("#labels-status", f);
  status.dataset.ok = "";
  status.dataset.state = "sending";
  status.textContent = "sending…";
  const res = await call(`/kits/${enc(r.kit)}/labels`, "POST", labelsBody(f, kitEl.dataset.event));
  if (!res.ok) {
    status.dataset.ok = "false";
    status.dataset.state = "refused";
    status.textContent = `refused (${res.status}): ${reasonText(res.body, res.status)}`;
    return;
  }
  const out = res.body;
  const skipped = out.skipped.length ? ` (no stock, skipped: ${out.skipped.join(", ")})` : "";
  status.dataset.state = "pending";
  status.textContent = `${out.labels} label${out.labels === 1 ? "" : "s"} of ${out.skus} product${out.skus === 1 ? "" : "s"} sent to ${out.agent} for ${out.printer}${skipped}: waiting for the kit…`;
  // The agent's ack settles each command (through ingest); ask until they all have or the wait ends.
  const ids = new Set(out.commands.map(c => c.id));
  const until = Date.now() + ACK_WAIT_MS;
  for (let n = 0; Date.now() < until; n++) {
    await new Promise(done => setTimeout(done, n < 10 ? 500 : 2000));
    const list = await call(`/devices/${enc(out.agent)}/commands?limit=100`);
    if (!list.ok) continue;
    const mine = list.body.filter(c => ids.has(c.id));
    if (mine.length < ids.size || mine.some(c => c.status === "pending")) continue;
    const good = mine.every(c => c.status === "ok");
    status.dataset.ok = String(good);
    status.dataset.state = good ? "queued" : "failed";
    status.textContent = (good ? "queued at the kit: " : "the kit did not print: ") + mine.map(c => c.status === "ok" ? c.detail : `${c.status}: ${c.detail ?? ""}`).join("; ");
    return;
  }
  status.dataset.state = "no-answer";
  status.textContent += " no answer yet (is the kit online?); the kit gets it when it comes back, until it expires.";
}

function modeChanged(f) {
  const mode = f.mode.value;
  f.sku.disabled = mode === "all";
  f.count.disabled = mode !== "reprint";
}

// ------------------------------------------------------------------ entry points for app.js

// Draw the page for the route: once per kit and event, then only its data. Re-entrant calls (the
// stream's news while a redraw is under way) are folded into one more redraw.
export async function renderRetail(page) {
  ctx.page = page;
  if (ctx.busy) { ctx.again = true; return; }
  ctx.busy = true;
  try {
    do {
      ctx.again = false;
      const r = retailRoute();
      if (!r) return;
      if (ctx.me?.role === "venue") { page.innerHTML = `<p data-testid="retail-forbidden">Retail is for ops and crew users.</p>`; ctx.route = ctx.view = null; return; }
      try {
        if (r.list) { ctx.route = ctx.view = null; await renderList(page); } else await renderKit(page, r.kit, r.event);
      } catch (e) {
        ctx.route = ctx.view = null;
        page.innerHTML = `<p><a href="#/retail">← retail</a></p><p data-testid="retail-error">${String(e.message).startsWith("404")
          ? `No kit <code>${esc(r.kit)}</code>.` : `retail unavailable: ${esc(e.message || e)}`}</p>`;
      }
    } while (ctx.again);
  } finally {
    ctx.busy = false;
  }
}

// The live stream's news: redraw the data when it is about the kit on screen, at most every REFRESH_MS.
export function retailChanged(change) {
  const r = retailRoute();
  if (!r || !ctx.page || ctx.timer || !(r.list || change.all || change.kits.includes(r.kit))) return;
  ctx.timer = setTimeout(() => {
    ctx.timer = null;
    ctx.last = Date.now();
    if (retailRoute()) renderRetail(ctx.page);
  }, Math.max(0, ctx.last + REFRESH_MS - Date.now()));
}

export function wireRetailEvents() {
  document.addEventListener("submit", ev => {
    const f = ev.target.closest("#labels-form");
    if (!f) return;
    ev.preventDefault();
    printLabels(f);
  });
  document.addEventListener("change", ev => {
    const f = ev.target.closest("#labels-form");
    if (f && ev.target.name === "mode") modeChanged(f);
  });
}

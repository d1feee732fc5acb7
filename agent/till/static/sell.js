// The Sell tab: the code field (typed, or a keyboard-wedge scanner's code + Enter), the open order
// with +/-, its total, the pay buttons, the last receipt's state, and the product grid.
import { api, atStation } from "./api.js";
import { $, h, say, twoTaps } from "./dom.js";

let products = [];

// "Night-market tee, black / M" for a SKU of the catalog (the orders list shows names, not codes).
export function productName(sku) {
  const p = products.find((x) => x.sku === sku);
  return p ? [p.name, p.variant].filter(Boolean).join(", ") : sku;
}
let shownCart = "";
let busy = 0; // a change of ours in flight: the poll does not draw a cart older than it

let left = {}; // sku -> stock left, shown on its button

export async function loadProducts() {
  const [catalog, stock] = await Promise.all([api("GET", "/catalog"), api("GET", "/stock")]);
  products = catalog.products;
  left = Object.fromEntries(stock.stock.map((s) => [s.sku, s.left]));
  drawProducts();
}

function drawProducts() {
  const q = $("#search").value.trim().toLowerCase();
  const shown = products.filter((p) => !q || `${p.name} ${p.variant} ${p.sku}`.toLowerCase().includes(q));
  $("#products").replaceChildren(...shown.map((p) =>
    h("button", { type: "button", "data-testid": `product-${p.sku}`, onclick: () => add({ sku: p.sku }) },
      h("span", {}, p.name), h("small", {}, p.variant || p.sku), h("strong", {}, `${p.price_text} ${p.currency}`),
      h("small", { class: "left", "data-low": String((left[p.sku] ?? 1) <= 0) }, `${left[p.sku] ?? "?"} left`))));
  if (!products.length) $("#products").append(h("p", { class: "empty" }, "No catalog at this till yet: it comes from the fleet, or load a CSV under Stock."));
}

export function drawCart(cart) {
  const key = JSON.stringify(cart);
  if (key === shownCart) return;
  shownCart = key;
  $("#lines").replaceChildren(...cart.lines.map((l) =>
    h("li", { "data-testid": `line-${l.sku}`, "data-qty": l.qty },
      h("span", { class: "name" }, l.name || l.sku, h("small", {}, l.variant || (l.name ? l.sku : "no longer in the catalog"))),
      h("span", { class: "qty" },
        h("button", { type: "button", "aria-label": "one less", "data-testid": `minus-${l.sku}`, onclick: () => setQty(l.sku, l.qty - 1) }, "−"),
        h("span", {}, String(l.qty)),
        h("button", { type: "button", "aria-label": "one more", "data-testid": `plus-${l.sku}`, onclick: () => setQty(l.sku, l.qty + 1) }, "+")),
      h("span", { class: "amount" }, l.gross_text ?? "–"))));
  $("#empty").hidden = cart.lines.length > 0;
  $("#total").textContent = `${cart.gross_text} ${cart.currency}`;
  $("#tax").textContent = cart.lines.length ? `incl. tax ${cart.tax_text}` : "";
  for (const b of document.querySelectorAll(".pay button")) b.disabled = !cart.lines.length;
}

async function change(fn) {
  busy++;
  try {
    const cart = await fn();
    drawCart(cart);
    return cart;
  } catch (e) {
    say(e.message, true);
    return null;
  } finally {
    busy--;
  }
}

async function add(body) {
  await change(async () => {
    const res = await api("POST", atStation("/cart/lines"), body);
    const p = products.find((x) => x.sku === res.added.sku);
    say(`Added ${p ? p.name : res.added.sku} (${res.added.qty} on the order)`);
    return res.cart;
  });
}

const setQty = (sku, qty) => change(() => api("PUT", atStation(`/cart/lines/${encodeURIComponent(sku)}`), { qty }));

export async function pollCart() {
  if (busy) return;
  const cart = await api("GET", atStation("/cart"));
  if (!busy) drawCart(cart);
}

async function pay(payment, button) {
  for (const b of document.querySelectorAll(".pay button")) b.disabled = true;
  busy++;
  try {
    const res = await api("POST", atStation("/pay"), { payment });
    drawCart(res.cart);
    const o = res.order;
    say(`Order #${o.n} paid: ${o.gross_text} ${o.currency} (${button.textContent.toLowerCase()})`);
    followReceipt(o);
    loadProducts().catch(() => {}); // the stock left on the buttons
  } catch (e) {
    say(e.message, true);
    pollCart().catch(() => {});
  } finally {
    busy--;
  }
}

// The receipt of the last order, until the printer took it (or could not: it waits in the queue).
let following = null;
const RECEIPT_WORDS = {
  queued: "waiting for the printer", printing: "printing", done: "printed", failed: "failed",
  unknown: "state unknown",
};

function showReceipt(o) {
  const el = $("#receipt");
  const r = o.receipt;
  const state = r ? r.state : "none";
  el.hidden = false;
  el.dataset.state = state;
  el.dataset.order = o.id;
  const why = r && r.error ? ` (${r.error})` : "";
  el.textContent = `Receipt #${o.n}: ${r ? RECEIPT_WORDS[state] || state : "no receipt printer on this kit"}${why}`;
  return state;
}

function followReceipt(order) {
  clearTimeout(following);
  let tries = 0;
  const step = async (o) => {
    const state = showReceipt(o);
    if (state === "done" || state === "failed" || state === "none" || ++tries > 120) return;
    following = setTimeout(async () => {
      try { step(await api("GET", `/orders/${order.id}`)); } catch { /* the next pay follows its own */ }
    }, 1000);
  };
  step(order);
}

export function setUpSell() {
  const code = $("#code");
  $("#code-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = code.value.trim();
    if (!text) return;
    code.value = "";
    await add({ code: text });
    code.focus();
  });
  // A keyboard-wedge scanner types into whatever has focus: keys typed outside any field go to the
  // code field, so a scan is never lost to a tap elsewhere on the page.
  document.addEventListener("keydown", (ev) => {
    const t = ev.target;
    if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.key.length !== 1) return;
    if (t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement || $("#tab-sell").hidden) return;
    code.focus();
  });
  $("#search").addEventListener("input", drawProducts);
  for (const b of document.querySelectorAll(".pay button")) b.addEventListener("click", () => pay(b.dataset.payment, b));
  twoTaps($('[data-testid="clear-cart"]'), "Tap again to clear", () => change(() => api("DELETE", atStation("/cart"))));
}

// The Orders tab: recent orders, newest first, each with its receipt, upload and refund state; a
// line refunded one at a time, or the whole order voided (both are new records: an order is never
// edited).
import { api } from "./api.js";
import { $, clock, h, say, twoTaps } from "./dom.js";
import { productName } from "./sell.js";

const PAYMENT = { cash: "cash", card_terminal: "card terminal", other: "other" };
let oldest = null; // the station number to page back from

export async function loadOrders(more = false) {
  const q = more && oldest ? `?before_n=${oldest}` : "";
  const list = (await api("GET", `/orders${q}`)).orders;
  if (list.length) oldest = list[list.length - 1].n;
  const items = list.map(drawOrder);
  if (more) $("#orders").append(...items);
  else $("#orders").replaceChildren(...items);
  if (!more && !list.length) $("#orders").append(h("li", { class: "empty" }, "No orders yet."));
  $("#orders").querySelector(".more")?.remove();
  if (list.length === 50) {
    $("#orders").append(h("li", { class: "more" },
      h("button", { type: "button", class: "more", onclick: () => loadOrders(true) }, "Older orders")));
  }
}

function drawOrder(o) {
  const tags = [PAYMENT[o.payment] || o.payment, o.by, clock(o.ts) + (o.clock === "unset" ? " (kit clock unset)" : ""),
    o.receipt ? `receipt ${o.receipt.state === "done" ? "printed" : o.receipt.state}` : null,
    o.uploaded ? "at the fleet" : "not uploaded yet",
    o.voided ? "VOID" : o.refunded ? `refunded ${o.refunded_text}` : null,
    o.oversold && o.oversold.length ? `sold past zero: ${o.oversold.join(", ")}` : null].filter(Boolean);
  const li = h("li", { "data-testid": `order-${o.id}`, "data-voided": String(!!o.voided), "data-refunded": o.refunded || 0 },
    h("div", { class: "head" }, h("strong", {}, `#${o.n}`), h("span", {}, `${o.gross_text} ${o.currency}`)),
    h("div", { class: "tags" }, tags.join(" · ")),
    h("ul", {}, o.lines.map((l) => lineRow(o, l))));
  if (!o.voided && !o.refunded) {
    const b = h("button", { type: "button", class: "void", "data-testid": `void-${o.id}` }, "Void order");
    twoTaps(b, "Tap again to void", () => act(o, () => api("POST", `/orders/${o.id}/void`, { reason: "voided at the till" }), "voided"));
    li.append(b);
  }
  return li;
}

function lineRow(o, l) {
  const row = h("li", {}, h("span", {}, `${l.qty} × ${productName(l.sku)}`, h("small", {}, l.sku)),
    h("span", { class: "amount" }, l.gross_text));
  if (!o.voided) {
    const b = h("button", { type: "button", "data-testid": `refund-${o.id}-${l.sku}` }, "Refund 1");
    twoTaps(b, "Tap again to refund", () => act(o, () => api("POST", `/orders/${o.id}/refunds`,
      { lines: [{ sku: l.sku, qty: 1 }], reason: "refunded at the till" }), `refunded 1 × ${l.sku}`));
    row.append(b);
  }
  return row;
}

async function act(o, call, what) {
  try {
    const res = await call();
    say(`Order #${o.n} ${what}: ${res.refund.gross_text} ${res.refund.currency} back`);
    await loadOrders();
  } catch (e) {
    say(e.message, true);
  }
}

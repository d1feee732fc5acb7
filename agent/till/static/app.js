// The till page: signed in or not, which tab, and what is polled while it is open.
// The cart is polled every second so a line added by a till-mode scanner shows at once.
import { api, whenSignedOut } from "./api.js";
import { $, clock, say } from "./dom.js";
import { loadOrders } from "./orders.js";
import { loadProducts, pollCart, setUpSell } from "./sell.js";
import { loadStock, setUpCatalogUpload } from "./stock.js";

const CART_MS = 1000;
const PENDING_MS = 5000;
let timers = [];
let tab = "sell";

function signedOut(text = "") {
  for (const t of timers) clearInterval(t);
  timers = [];
  $("#till").hidden = true;
  $("#offline").hidden = true;
  $("#signin").hidden = false;
  const status = $('[data-testid="signin-status"]');
  status.textContent = text;
  status.dataset.error = String(!!text);
  $("#signin-form").login.focus();
}

async function signedIn(name) {
  $("#signin").hidden = true;
  $("#till").hidden = false;
  $('[data-testid="who"]').textContent = name;
  say("");
  await Promise.all([loadProducts(), pollCart(), pending()]).catch((e) => say(e.message, true));
  show(tab);
  timers = [
    setInterval(() => { if (tab === "sell") pollCart().catch(() => {}); }, CART_MS),
    setInterval(() => pending().catch(() => {}), PENDING_MS),
  ];
}

// Orders the fleet has not confirmed: a banner while there are any (the kit is offline from the
// fleet, or catching up). They are safe on the kit either way.
async function pending() {
  const p = await api("GET", "/pending");
  const banner = $("#offline");
  banner.hidden = !p.orders;
  banner.dataset.pending = p.orders;
  if (p.orders) {
    banner.textContent = `Offline from the fleet: ${p.orders} order${p.orders === 1 ? "" : "s"} not uploaded yet`
      + (p.oldest_ms ? ` (oldest ${clock(p.oldest_ms)})` : "") + ". Keep selling: they are safe on the kit.";
  }
}

function show(name) {
  tab = name;
  for (const b of document.querySelectorAll(".tabs button")) {
    if (b.dataset.tab === name) b.setAttribute("aria-current", "page");
    else b.removeAttribute("aria-current");
  }
  for (const t of ["sell", "orders", "stock"]) $(`#tab-${t}`).hidden = t !== name;
  const load = { sell: () => Promise.all([loadProducts(), pollCart()]), orders: loadOrders, stock: loadStock }[name];
  load().catch((e) => say(e.message, true));
}

function setUp() {
  whenSignedOut(() => signedOut("Signed out: sign in again."));
  $("#signin-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target;
    const status = $('[data-testid="signin-status"]');
    status.textContent = "Signing in…";
    status.dataset.error = "false";
    try {
      const s = await api("POST", "/session", { name: f.login.value.trim(), passphrase: f.passphrase.value.trim() });
      f.passphrase.value = "";
      status.textContent = "";
      await signedIn(s.name);
    } catch (e) {
      status.textContent = e.message;
      status.dataset.error = "true";
    }
  });
  $('[data-testid="signout"]').addEventListener("click", async () => {
    await api("DELETE", "/session").catch(() => {});
    signedOut();
  });
  for (const b of document.querySelectorAll(".tabs button")) b.addEventListener("click", () => show(b.dataset.tab));
  setUpSell();
  setUpCatalogUpload(() => Promise.all([loadProducts(), loadStock()]));
}

setUp();
api("GET", "/session").then((s) => signedIn(s.name), () => signedOut());

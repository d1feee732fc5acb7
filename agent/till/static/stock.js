// The Stock tab: per product, carried, sold, back (refunded) and left; a catalog CSV loaded at the
// till when the fleet cannot send one.
import { api } from "./api.js";
import { $, h } from "./dom.js";

export async function loadStock() {
  const [rows, catalog] = await Promise.all([api("GET", "/stock").then((r) => r.stock), api("GET", "/catalog")]);
  const i = catalog.info || {};
  $("#catalog-info").textContent = i.products
    ? `Catalog: ${i.products} products for ${i.event}, ${i.source === "fleet" ? `from the fleet (version ${i.version})` : "loaded at the till"}.`
    : "No catalog at this till yet.";
  $("#stock").replaceChildren(...rows.map((s) =>
    h("tr", { "data-testid": `stock-${s.sku}`, "data-left": s.left, "data-oversold": String(s.left < 0) },
      h("td", {}, s.name || s.sku), h("td", {}, s.carried), h("td", {}, s.sold), h("td", {}, s.refunded),
      h("td", { class: "left" }, s.left))));
}

export function setUpCatalogUpload(reload) {
  $("#catalog-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const status = $("#catalog-status");
    const file = ev.target.csv.files[0];
    if (!file) { status.textContent = "Choose a CSV file first."; status.dataset.error = "true"; return; }
    try {
      const res = await api("PUT", "/catalog", { csv: await file.text() });
      status.textContent = `Loaded ${res.products} products.`;
      status.dataset.error = "false";
      await reload();
    } catch (e) {
      const problems = e.detail && e.detail.problems ? `\n${e.detail.problems.join("\n")}` : "";
      status.textContent = e.message + problems;
      status.dataset.error = "true";
    }
  });
}

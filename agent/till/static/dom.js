// A tiny element builder: h("li", {class: "x", "data-testid": "y"}, "text", child).
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

export const $ = (sel) => document.querySelector(sel);

// The crew sees what happened on the line under the header; errors in red.
export function say(text, error = false) {
  const m = $("#message");
  m.textContent = text;
  m.dataset.error = String(error);
}

// A destructive tap (refund, void, clear) asks for a second tap within a few seconds: a phone in a
// busy hand taps things by accident, and a confirm() dialog is easy to dismiss blind.
export function twoTaps(button, label, action) {
  const before = button.textContent;
  let armed = null;
  const disarm = () => { clearTimeout(armed); armed = null; button.textContent = before; delete button.dataset.armed; };
  button.addEventListener("click", async () => {
    if (!armed) {
      button.textContent = label;
      button.dataset.armed = "true";
      armed = setTimeout(disarm, 4000);
      return;
    }
    disarm();
    button.disabled = true;
    try { await action(); } finally { button.disabled = false; }
  });
}

export function clock(ms) {
  return ms ? new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
}

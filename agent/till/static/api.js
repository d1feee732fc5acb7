// The till's JSON API (/till/api). Every call sends the session cookie; a 401 anywhere means the
// session ended (expired, signed out elsewhere, login removed) and the page shows the sign-in form.

export class ApiError extends Error {
  constructor(status, detail) {
    super(describe(detail) || `the till answered ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

// FastAPI's detail is text, {message, ...}, or a list of field errors: shown to the crew as one line.
function describe(detail) {
  if (typeof detail === "string") return detail;
  if (detail && typeof detail.message === "string") return detail.message;
  if (Array.isArray(detail)) return detail.map((e) => e.msg || String(e)).join("; ");
  return "";
}

let onSignedOut = () => {};
export function whenSignedOut(fn) { onSignedOut = fn; }

export async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(`/till/api${path}`, init);
  } catch (e) {
    throw new ApiError(0, "the kit does not answer: is this phone on the kit's Wi-Fi?");
  }
  if (res.status === 204) return null;
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    if (res.status === 401 && path !== "/session") onSignedOut();
    throw new ApiError(res.status, data.detail);
  }
  return data;
}

// The station this phone sells for: ?station=bar2 in the address, else main.
export const station = new URLSearchParams(location.search).get("station") || "main";
export const atStation = (path) => `${path}${path.includes("?") ? "&" : "?"}station=${encodeURIComponent(station)}`;

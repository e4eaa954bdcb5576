// The REST API, as the screen calls it: the session cookie goes with every call, the
// session's CSRF token with every state-changing one, and every error comes back in words.

let session = null; // GET /auth/me's answer, set by app.js

export function setSession(me) {
  session = me;
}

export class ApiError extends Error {
  constructor(status, code, message, requestId) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }

  describe() {
    const id = this.requestId ? `, request ${this.requestId}` : "";
    return `${this.message} (${this.code}, HTTP ${this.status}${id})`;
  }
}

const CHANGES = new Set(["POST", "PUT", "PATCH", "DELETE"]);

function toLogin(code) {
  const next = encodeURIComponent(location.hash || "#/line");
  location.assign(`/ui/login?next=${next}&why=${encodeURIComponent(code)}`);
}

export async function api(method, path, { json, form, query, raw, login = true } = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v === undefined || v === null || v === "") continue;
    for (const one of Array.isArray(v) ? v : [v]) url.searchParams.append(k, one);
  }
  const headers = { Accept: "application/json" };
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form; // FormData: the browser sets the multipart boundary
  }
  if (CHANGES.has(method) && session && session.csrf_token) {
    headers["X-CSRF-Token"] = session.csrf_token;
  }
  let response;
  try {
    response = await fetch(url, { method, headers, body, credentials: "same-origin" });
  } catch (err) {
    throw new ApiError(0, "unreachable", `the API does not answer (${err.message})`, null);
  }
  if (response.status === 401 && login) {
    const err = await errorOf(response);
    toLogin(err.code);
    throw err;
  }
  if (!response.ok) throw await errorOf(response);
  if (raw) return response;
  if (response.status === 204) return null;
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.text();
}

export async function errorOf(response) {
  let code = "http_error";
  let message = `${response.status} ${response.statusText}`;
  let requestId = response.headers.get("X-Request-ID");
  try {
    const body = await response.json(); // {"error": code, "detail": words, "request_id"}
    if (body && typeof body.error === "string") {
      code = body.error;
      message = body.detail || message;
      requestId = body.request_id || requestId;
      if (Array.isArray(body.errors) && body.errors.length) {
        const first = body.errors[0];
        message += `: ${(first.loc || []).join(".")} ${first.msg || ""}`.trimEnd();
      }
    }
  } catch {
    // not JSON: the status line says what there is to say
  }
  return new ApiError(response.status, code, message, requestId);
}

function describe(err) {
  if (err instanceof ApiError) return err.describe();
  return String((err && err.message) || err);
}

export function showError(err, where = "") {
  const box = document.getElementById("errors");
  const text = (where ? `${where}: ` : "") + describe(err);
  console.error(text);
  if (!box) return;
  const line = document.createElement("div");
  line.className = "error-line";
  line.setAttribute("data-testid", "error-line");
  const words = document.createElement("span");
  words.textContent = text;
  const close = document.createElement("button");
  close.className = "btn small";
  close.textContent = "Dismiss";
  close.addEventListener("click", () => line.remove());
  line.append(words, close);
  box.append(line);
  while (box.children.length > 4) box.firstElementChild.remove();
}

export function toast(text) {
  const box = document.getElementById("toasts");
  if (!box) return;
  const note = document.createElement("div");
  note.className = "toast";
  note.textContent = text;
  box.append(note);
  setTimeout(() => note.remove(), 4000);
}

// Building the page from data without ever parsing data as HTML.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style" && typeof value === "object") Object.assign(el.style, value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export function emptyState(title, hint) {
  return h("div", { class: "empty", "data-testid": "empty" },
    h("strong", {}, title), hint ? h("p", {}, hint) : null);
}

export function fmtTime(value) {
  if (value === undefined || value === null || value === "") return "—";
  const d = typeof value === "number" ? new Date(value) : new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  const time = d.toLocaleTimeString([], { hour12: false });
  return sameDay ? time : `${d.toISOString().slice(0, 10)} ${time}`;
}

export function fmtNum(x, digits = 2) {
  if (x === undefined || x === null || Number.isNaN(x)) return "—";
  if (typeof x !== "number") return String(x);
  return Number.isInteger(x) && digits <= 2 ? String(x) : x.toFixed(digits);
}

export function verdictBadge(verdict) {
  const v = String(verdict || "?");
  return h("span", { class: `badge ${v.toLowerCase()}`, "data-verdict": v }, v.replace("_", " "));
}

export function field(label, value) {
  return h("div", { class: "field" }, h("span", { class: "label" }, label),
    h("span", { class: "value" }, value ?? "—"));
}

// --- Models and Datasets pages: full dates, and a confirm dialog naming what changes ---

export function fmtDate(value) {
  if (value === undefined || value === null || value === "") return "—";
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return String(value);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} `
    + `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

// Resolves true when the user confirms; Escape, Cancel or a click outside resolve false.
// The confirm button carries `data-testid=testid`, the dialog `${testid}-dialog`.
export function confirmDialog({ title, body, confirm = "Confirm", danger = false, testid = "confirm" }) {
  return new Promise((resolve) => {
    let answer = false;
    const yes = h("button", { type: "button", class: `btn ${danger ? "danger" : "primary"}`,
      "data-testid": testid }, confirm);
    const no = h("button", { type: "button", class: "btn", "data-testid": `${testid}-cancel` },
      "Cancel");
    const dialog = h("dialog", { class: "confirm", "data-testid": `${testid}-dialog` },
      h("h3", {}, title), body ? h("p", {}, body) : null, h("div", { class: "toolbar end" }, no, yes));
    yes.addEventListener("click", () => { answer = true; dialog.close(); });
    no.addEventListener("click", () => dialog.close());
    dialog.addEventListener("click", (event) => { if (event.target === dialog) dialog.close(); });
    dialog.addEventListener("close", () => { dialog.remove(); resolve(answer); });
    document.body.append(dialog);
    dialog.showModal();
    no.focus(); // the safe choice is the default one
  });
}

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

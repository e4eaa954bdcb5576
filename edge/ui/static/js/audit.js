// The Models page's audit-log card (GET /audit, engineers): who did what when, newest first.
import { ApiError, api, showError } from "./api.js";
import { clear, emptyState, fmtDate, h } from "./dom.js";

const STEP = 100;
const MAX = 1000; // the API's largest limit

const ROUTINE = new Set(["method", "route", "via"]); // the action says as much

function detailText(detail) {
  const parts = Object.entries(detail || {}).filter(([k]) => !ROUTINE.has(k)).map(([k, v]) =>
    `${k}=${typeof v === "object" && v !== null ? JSON.stringify(v) : v}`);
  const text = parts.join(" ");
  return text.length > 160 ? `${text.slice(0, 157)}…` : text;
}

function row(e) {
  const ok = e.outcome < 400;
  return h("tr", { "data-testid": "audit-row", dataset: { action: e.action, user: e.user || "" } },
    h("td", { class: "nowrap", title: e.at }, fmtDate(e.at_ms)),
    h("td", {}, e.user || h("span", { class: "muted" }, "nobody")),
    h("td", {}, e.role || "—"),
    h("td", {}, h("code", {}, e.action)),
    h("td", {}, e.target || "—"),
    h("td", {}, h("span", { class: `badge ${ok ? "ok" : "ng"}`, title: ok ? "done" : "refused or failed" },
      String(e.outcome))),
    h("td", { class: "muted small", title: JSON.stringify(e.detail || {}) }, detailText(e.detail)));
}

export function auditCard({ engineer }) {
  const el = h("div", { class: "card", "data-testid": "audit-card" }, h("h3", {}, "Audit log"));
  if (!engineer) {
    el.append(h("p", { class: "muted", "data-testid": "audit-engineers-only" },
      "Only engineers see the audit log (who trained, rolled back, changed datasets and plans, and when)."));
    return el;
  }
  let limit = STEP;
  const user = h("input", { type: "text", placeholder: "any user", "data-testid": "audit-user",
    "aria-label": "user" });
  const action = h("input", { type: "text", placeholder: "any action (e.g. rollback)",
    "data-testid": "audit-action", "aria-label": "action" });
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const more = h("button", { class: "btn", "data-testid": "audit-more", hidden: true }, "Show older");
  const filter = h("form", { class: "toolbar" }, user, action,
    h("button", { class: "btn", type: "submit", "data-testid": "audit-filter" }, "Filter"),
    h("button", { class: "btn", type: "button", "data-testid": "audit-refresh", onclick: load }, "Refresh"));
  filter.addEventListener("submit", (event) => {
    event.preventDefault();
    limit = STEP;
    load();
  });
  more.addEventListener("click", () => {
    limit = Math.min(MAX, limit + STEP);
    load();
  });
  el.append(filter, body, more);

  async function load() {
    let entries;
    try {
      ({ entries } = await api("GET", "/audit", {
        query: { limit, user: user.value.trim(), action: action.value.trim() } }));
    } catch (err) {
      more.hidden = true;
      const why = err instanceof ApiError ? err.describe() : String(err);
      clear(body).append(emptyState("The audit log could not be read", why));
      if (!(err instanceof ApiError && err.code === "trace_unavailable")) showError(err, "the audit log");
      return;
    }
    clear(body);
    if (!entries.length) {
      body.append(emptyState("No audit entries",
        user.value || action.value ? "Nothing matches the filter." : "Every change made over the API is listed here."));
    } else {
      body.append(h("div", { class: "scroll" }, h("table", { class: "data", "data-testid": "audit-table" },
        h("thead", {}, h("tr", {}, ["When", "User", "Role", "Action", "Target", "Outcome", "Detail"]
          .map((t) => h("th", {}, t)))),
        h("tbody", {}, entries.map(row)))));
    }
    more.hidden = entries.length < limit || limit >= MAX;
  }

  load();
  return el;
}

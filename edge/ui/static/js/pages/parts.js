// Parts: a disc by its serial (its verdict, each ROI's crop with heatmap, regions and
// provenance), or, before a serial is typed, the newest decided parts.
import { ApiError, api, showError } from "../api.js";
import { clear, emptyState, fmtTime, h, verdictBadge } from "../dom.js";
import { frameView } from "../frame_view.js";

const REFRESH_MS = 10000;
const SEVERITY = { NG: 0, ERROR: 1, NO_MODEL: 2, INCOMPLETE: 3, OK: 4 };

function searchBar(serial, navigate) {
  const input = h("input", {
    type: "search", value: serial || "", placeholder: "Serial number, e.g. SN-000123",
    "data-testid": "parts-search", "aria-label": "serial number", autocomplete: "off", class: "grow",
  });
  const go = () => {
    const wanted = input.value.trim();
    navigate(wanted ? `#/parts?serial=${encodeURIComponent(wanted)}` : "#/parts");
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") go();
  });
  const bar = h("div", { class: "toolbar" }, input,
    h("button", { class: "btn primary", "data-testid": "parts-search-go", onclick: go }, "Find part"));
  if (serial) {
    bar.append(h("button", { class: "btn", "data-testid": "parts-back", onclick: () => navigate("#/parts") },
      "Recent parts"));
  }
  return { bar, input };
}

function inPlace(box, err, what) {
  const words = err instanceof ApiError ? err.describe() : String(err.message || err);
  if (err instanceof ApiError && err.code === "trace_unavailable") {
    clear(box).append(emptyState("No trace yet", `${err.message}. Start the line with "bdi up" ` +
      "(or run \"bdi trace\") and parts appear here as they are judged."));
    return;
  }
  clear(box).append(emptyState(`Could not load ${what}`, words));
  showError(err, what);
}

// --- the newest parts --------------------------------------------------------------------
function recentTable(parts, navigate, ngFirst) {
  const rows = ngFirst
    ? [...parts].sort((a, b) => (SEVERITY[a.verdict] ?? 5) - (SEVERITY[b.verdict] ?? 5))
    : parts;
  const open = (p) => navigate(`#/parts?serial=${encodeURIComponent(p.part_id)}`);
  return h("table", { class: "data parts-recent", "data-testid": "parts-recent" },
    h("thead", {}, h("tr", {}, ["Verdict", "Serial", "Decided", "Recipe", "Plan", "Frames not OK", "Reason"]
      .map((t) => h("th", {}, t)))),
    h("tbody", {}, rows.map((p) => h("tr", {
      class: `clickable ${p.verdict === "OK" ? "" : "bad"}`, tabindex: 0,
      "data-testid": "parts-recent-item", "data-part-id": p.part_id, "data-verdict": p.verdict || "",
      onclick: () => open(p), onkeydown: (e) => { if (e.key === "Enter") open(p); },
    },
    h("td", {}, verdictBadge(p.verdict)),
    h("td", { class: "mono serial" }, p.part_id),
    h("td", {}, fmtTime(p.decided_at)),
    h("td", {}, p.recipe_id || "—"),
    h("td", { class: "mono" }, p.plan_version || "—"),
    h("td", {}, `${p.not_ok} / ${p.frames}${p.missing.length ? `, ${p.missing.length} missing` : ""}`),
    h("td", { class: "muted reason" }, p.reason || "")))));
}

function mountRecent(box, navigate) {
  const only = h("select", { "data-testid": "parts-filter", "aria-label": "which parts" },
    h("option", { value: "" }, "All parts"),
    h("option", { value: "NG,ERROR,NO_MODEL,INCOMPLETE" }, "Not OK only"),
    h("option", { value: "NG" }, "NG only"));
  const ngFirst = h("input", { type: "checkbox", "data-testid": "parts-ng-first" });
  const stamp = h("span", { class: "muted small", "data-testid": "parts-updated" });
  const list = h("div", { class: "scroll tall" }, h("p", { class: "muted" }, "Loading the newest parts…"));
  let parts = [];
  let failed = false;
  const render = () => {
    if (!parts.length) {
      clear(list).append(only.value
        ? emptyState("No such parts among the newest", "Choose \"All parts\" to see every part.")
        : emptyState("No parts decided yet",
          "Parts appear here as the line judges them (the camera sends frames, \"bdi up\" runs the line). " +
          "A part needs an inspection plan for its recipe (Models page)."));
      return;
    }
    clear(list).append(recentTable(parts, navigate, ngFirst.checked));
  };
  const load = async () => {
    try {
      const answer = await api("GET", "/parts", { query: { verdict: only.value, limit: 100 } });
      parts = answer.parts;
      failed = false;
      stamp.textContent = `updated ${fmtTime(Date.now())}`;
      render();
    } catch (err) {
      if (!failed) inPlace(list, err, "the newest parts"); // once, not every 10 s
      failed = true;
    }
  };
  only.addEventListener("change", load);
  ngFirst.addEventListener("change", render);
  box.append(h("div", { class: "card" },
    h("div", { class: "toolbar" }, h("h2", { class: "grow" }, "Newest parts"), only,
      h("label", { class: "inline" }, ngFirst, "NG first"), stamp),
    list));
  load();
  const timer = setInterval(() => { if (!document.hidden) load(); }, REFRESH_MS);
  return () => clearInterval(timer);
}

// --- one part ------------------------------------------------------------------------------
function partHeader(part) {
  const fact = (label, value, testid) => h("div", { class: "stat small-stat" },
    h("div", { class: "label" }, label), h("div", { class: "value", "data-testid": testid }, value ?? "—"));
  const missing = part.missing.map((m) => `${m.role_id || "?"}/${m.roi_id || "?"}`);
  return h("section", { class: `card part-head ${String(part.verdict || "open").toLowerCase()}` },
    h("div", { class: "part-title" },
      h("h2", {}, h("span", { class: "muted" }, "Part "), h("span", { class: "mono", "data-testid": "part-id" }, part.part_id)),
      h("div", { class: "part-verdict", "data-testid": "part-verdict", "data-verdict": part.verdict || "" },
        part.decided ? verdictBadge(part.verdict) : h("span", { class: "badge warn" }, "NOT DECIDED"))),
    h("p", { class: "reason", "data-testid": "part-reason" }, part.reason || ""),
    h("div", { class: "stats" },
      fact("Decided", part.decided_at ? fmtTime(part.decided_at) : "not yet", "part-decided"),
      fact("Recipe", part.recipe_id, "part-recipe"),
      fact("Plan", part.plan_version, "part-plan"),
      fact("Frames", String(part.frames.length), "part-frames"),
      missing.length ? fact("Missing ROIs", missing.join(", "), "part-missing") : null));
}

async function mountPart(box, serial) {
  clear(box).append(h("p", { class: "muted" }, `Looking up ${serial}…`));
  let part;
  try {
    part = await api("GET", `/parts/${encodeURIComponent(serial)}`);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      clear(box).append(emptyState(`No part "${serial}" in the trace`,
        "Check the serial (it is matched exactly, as the camera sent it), or pick one of the newest parts."));
      return () => {};
    }
    inPlace(box, err, `part ${serial}`);
    return () => {};
  }
  const views = [];
  const section = (title, frames, hint) => {
    if (!frames.length) return null;
    return h("section", { class: "stack" }, h("h3", {}, title), hint ? h("p", { class: "muted" }, hint) : null,
      frames.map((f) => {
        const view = frameView(f);
        views.push(view);
        return view.el;
      }));
  };
  const bad = (f) => (f.verdict === "OK" ? 1 : 0);
  const judged = [...part.frames].sort((a, b) => bad(a) - bad(b));
  const parts = [partHeader(part),
    section("Frames of the verdict", judged, null) ||
      (part.decided ? emptyState("No frame counted", "The part was decided without frames (see the reason).") : null),
    section("Not counted (unexpected ROIs)", part.unexpected, "Frames of this part for ROIs the plan does not name."),
    section("Frames without a part record", part.other_frames, "The part is open, or its recipe has no inspection plan."),
    section("Late frames", part.late, "Frames that came after the part was decided: not in its verdict.")];
  clear(box).append(...parts.filter(Boolean));
  return () => views.forEach((v) => v.close());
}

export async function mount(root, params, ctx) {
  const serial = (params.get("serial") || "").trim();
  const { bar, input } = searchBar(serial, ctx.navigate);
  const box = h("div", { class: "stack", "data-testid": "parts-body" });
  root.append(h("h1", { class: "page-title" }, "Parts"), bar, box);
  if (!serial) {
    input.focus();
    return mountRecent(box, ctx.navigate);
  }
  return mountPart(box, serial);
}

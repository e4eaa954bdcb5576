// The Models page's inspection-plan card: a recipe's plan (GET /recipes/{id}/plan), and for
// engineers its JSON in a textarea, stored with PUT (docs/PARTS.md).
import { ApiError, api, showError, toast } from "./api.js";
import { clear, emptyState, fmtDate, h } from "./dom.js";

const REASONS = {
  no_model: "no model",
  no_threshold: "no threshold",
  unreadable: "unreadable",
};

function planTable(plan) {
  const warned = new Map(plan.warnings.map((w) => [`${w.role_id}\u0000${w.roi_id}`, w]));
  return h("table", { class: "data" },
    h("thead", {}, h("tr", {}, h("th", {}, "Role"), h("th", {}, "ROI"), h("th", {}, "Required"),
      h("th", {}, "Can be judged now"))),
    h("tbody", {}, plan.rois.map((roi) => {
      const w = warned.get(`${roi.role_id}\u0000${roi.roi_id}`);
      return h("tr", { "data-testid": "plan-roi", dataset: { role: roi.role_id, roi: roi.roi_id } },
        h("td", {}, roi.role_id), h("td", {}, roi.roi_id),
        h("td", {}, roi.required ? "required" : h("span", { class: "muted" }, "optional")),
        h("td", {}, w
          ? h("span", { title: w.detail }, h("span", { class: "badge ng" }, REASONS[w.reason] || w.reason),
            " ", h("span", { class: "muted small" }, w.detail))
          : h("span", { class: "badge ok" }, "yes")));
    })));
}

function viewOf(plan) {
  return h("div", { "data-testid": "plan-view", dataset: { version: plan.version } },
    h("p", { class: "muted" }, `Version ${plan.version}, stored ${fmtDate(plan.created_at * 1000)}. `
      + `A part is complete when its required frames arrive within ${plan.deadline_ms} ms of its first.`),
    planTable(plan),
    plan.warnings.length
      ? h("p", { class: "banner bad", "data-testid": "plan-warnings" },
        `${plan.warnings.length} ROI(s) of this plan cannot be judged OK or NG now, so its parts `
          + "cannot be OK: train and calibrate their models.")
      : null);
}

function draft(plan, models) {
  if (plan) return { rois: plan.rois, deadline_ms: plan.deadline_ms };
  const rois = models.map((m) => ({ role_id: m.role_id, roi_id: m.roi_id, required: true }));
  return { rois, deadline_ms: 5000 };
}

// `models`: the recipe's manifest entries (a first plan's draft); `onSaved()` after a save;
// `plan`: the plan already read (null: none stored), or undefined to read it here.
export function planCard(recipeId, models, { engineer, onSaved, plan }) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading the plan…"));
  const el = h("div", { class: "card", "data-testid": "plan-card" },
    h("h3", {}, "Inspection plan ", h("span", { class: "muted small" }, `recipe ${recipeId}`)), body);
  const path = `/recipes/${encodeURIComponent(recipeId)}/plan`;

  function editor(plan) {
    const text = h("textarea", { class: "json", "data-testid": "plan-edit", spellcheck: "false",
      "aria-label": "The inspection plan as JSON" });
    text.value = JSON.stringify(draft(plan, models), null, 2);
    const error = h("div", { class: "form-error", "data-testid": "plan-error", role: "alert" });
    const save = h("button", { class: "btn primary", "data-testid": "plan-save" }, "Save plan");
    save.addEventListener("click", async () => {
      error.textContent = "";
      let json;
      try {
        json = JSON.parse(text.value);
      } catch (err) {
        error.textContent = `Not valid JSON: ${err.message}`;
        return;
      }
      save.disabled = true;
      try {
        const saved = await api("PUT", path, { json });
        toast(`Plan of ${recipeId} saved: version ${saved.version}`);
        render(saved);
        onSaved();
      } catch (err) {
        error.textContent = err instanceof ApiError ? err.describe() : String(err);
      } finally {
        save.disabled = false;
      }
    });
    return h("div", {},
      h("h3", { class: "section-head" }, plan ? "Edit the plan" : "Write a plan"),
      h("p", { class: "muted small" }, "JSON: ", h("code", {}, "rois"), " (each ",
        h("code", {}, "role_id"), ", ", h("code", {}, "roi_id"), ", ", h("code", {}, "required"),
        ") and ", h("code", {}, "deadline_ms"), " (1 to 3,600,000). Saving stores a new version."),
      text, h("div", { class: "toolbar end" }, save), error);
  }

  function render(plan) {
    clear(body);
    if (plan) body.append(viewOf(plan));
    else {
      body.append(h("div", { "data-testid": "plan-view", dataset: { version: "" } },
        emptyState(`No inspection plan for recipe ${recipeId}`, engineer
          ? "Write one below: the ROIs that make up a part. Without one, parts are not assembled."
          : "An engineer writes it here: the ROIs that make up a part.")));
    }
    if (engineer) body.append(editor(plan));
  }

  if (plan !== undefined) {
    render(plan);
    return el;
  }
  (async () => {
    try {
      render(await api("GET", path));
    } catch (err) {
      if (err instanceof ApiError && err.code === "plan_not_found") render(null);
      else {
        clear(body).append(emptyState("The plan could not be read",
          err instanceof ApiError ? err.describe() : String(err)));
        showError(err, `the plan of ${recipeId}`);
      }
    }
  })();
  return el;
}

// Models: per recipe, each role / ROI's readiness (model, threshold, α and n, drift), the
// selected model's revisions (roll back), its training from the stored dataset, the
// recipe's inspection plan, and the audit log. docs/UI.md, "Models page".
import { ApiError, api, showError, toast } from "../api.js";
import { auditCard } from "../audit.js";
import { clear, confirmDialog, emptyState, fmtDate, fmtNum, h } from "../dom.js";
import { planCard } from "../plan.js";
import { trainCard } from "../training.js";

const METHODS = { conformal: "conformal", ok_ng: "balanced (OK + NG)", ok_percentile: "legacy percentile" };

const keyOf = (m) => `${m.role_id}\u0000${m.roi_id}\u0000${m.model_key}`;
const refOf = (m) => ({ recipe_id: m.recipe_id, role_id: m.role_id, roi_id: m.roi_id, model_key: m.model_key });

function statusBadge(m) {
  if (m.error) return h("span", { class: "badge error", title: m.error }, "ERROR");
  if (m.ready) return h("span", { class: "badge ok" }, "READY");
  if (m.has_memory) return h("span", { class: "badge warn", title: "a model without a threshold gives NO_MODEL verdicts" }, "NO THRESHOLD");
  return h("span", { class: "badge no_model" }, "NO MODEL");
}

// α and n of a conformal threshold, and whether n backs α (needed(α) = ⌈1/α − 1⌉)
function alphaCell(m) {
  if (m.threshold_method !== "conformal" || m.target_frr === null || m.target_frr === undefined) {
    return h("span", { class: "muted" }, "—");
  }
  const needed = Math.ceil(1 / m.target_frr - 1 - 1e-9);
  const n = m.n_held_out ?? "?";
  return h("span", {}, `α ${m.target_frr} · n ${n} `, m.frr_guaranteed
    ? h("span", { class: "badge ok", title: `${n} held-out OK scores back α` }, "guaranteed")
    : h("span", { class: "badge warn", title: `α needs ${needed} held-out OK images (train on ${2 * needed})` },
      `unguaranteed: ${needed} needed`));
}

function driftCell(state) {
  if (!state) return h("span", { class: "muted" }, "…");
  if (state.failed) return h("span", { class: "badge error", title: state.failed }, "?");
  if (state.drift === null || state.drift === undefined) {
    return h("span", { class: "muted", title: "no consumer reports on this model version" }, "no report");
  }
  if (!state.drift) return h("span", { class: "badge ok" }, "stable");
  const since = state.drift_reports.filter((r) => r.drift && r.since).map((r) => r.since).sort()[0];
  return h("span", { title: "a consumer finds this model's p-values drifting from its calibration (docs/DRIFT.md)" },
    h("span", { class: "badge ng" }, "DRIFT"), since ? h("span", { class: "sub" }, `since ${fmtDate(since)}`) : null);
}

function modelsOf(recipe, plan) {
  const models = [...recipe.models];
  const known = new Set(models.map((m) => `${m.role_id}\u0000${m.roi_id}`));
  for (const roi of plan ? plan.rois : []) { // ROIs of the plan with nothing stored yet
    if (known.has(`${roi.role_id}\u0000${roi.roi_id}`)) continue;
    models.push({ recipe_id: recipe.recipe_id, role_id: roi.role_id, roi_id: roi.roi_id,
      model_key: roi.roi_id, has_memory: false, ready: false, dataset: { ok: 0, ng: 0 },
      threshold: null, version: null, threshold_method: null, error: null });
  }
  return models;
}

export async function mount(root, params, ctx) {
  const engineer = ctx.me.role === "engineer";
  let alive = true;
  let training = null; // the selected model's train card
  let renders = 0; // a render that a newer one overtook stops
  const finished = new Map(); // model key -> its last training job finished here
  let manifest = await api("GET", "/manifest");
  if (!alive) return undefined;
  let recipeId = params.get("recipe");
  let selected = null; // key of the selected model

  const head = h("div", { class: "toolbar" }, h("h2", { class: "grow" }, "Models"));
  const content = h("div", { class: "stack" });
  root.append(head, content);

  function remember(m) {
    const q = new URLSearchParams({ recipe: recipeId });
    if (m) for (const [k, v] of Object.entries({ role: m.role_id, roi: m.roi_id, key: m.model_key })) q.set(k, v);
    history.replaceState(null, "", `#/models?${q}`);
  }

  async function reload() {
    try {
      manifest = await api("GET", "/manifest");
    } catch (err) {
      showError(err, "reloading the models");
      return;
    }
    if (alive) render();
  }

  function render() {
    const gen = ++renders;
    if (training) training.stop();
    training = null;
    clear(head).append(h("h2", { class: "grow" }, "Models"));
    clear(content);
    const recipes = manifest.recipes;
    if (!recipes.length) {
      content.append(emptyState("No models or datasets yet", engineer
        ? "Add OK images of a role / ROI on the Datasets page, then train its model here."
        : "An engineer adds images on the Datasets page and trains the models here."),
      auditCard({ engineer }));
      return;
    }
    if (!recipes.some((r) => r.recipe_id === recipeId)) recipeId = recipes[0].recipe_id;
    const recipe = recipes.find((r) => r.recipe_id === recipeId);
    const pick = h("select", { "data-testid": "models-recipe", "aria-label": "recipe" },
      recipes.map((r) => h("option", { value: r.recipe_id, selected: r.recipe_id === recipeId }, r.recipe_id)));
    pick.addEventListener("change", () => {
      recipeId = pick.value;
      selected = null;
      remember(null);
      render();
    });
    head.append(h("label", {}, "Recipe", pick),
      h("button", { class: "btn", "data-testid": "models-refresh", onclick: reload }, "Refresh"));
    renderRecipe(recipe, gen);
  }

  async function renderRecipe(recipe, gen) {
    let plan = null; // null: none stored; undefined: unreadable (the plan card says why)
    try {
      plan = await api("GET", `/recipes/${encodeURIComponent(recipe.recipe_id)}/plan`);
    } catch (err) {
      if (!(err instanceof ApiError && err.code === "plan_not_found")) plan = undefined;
    }
    if (!alive || gen !== renders) return;
    const models = modelsOf(recipe, plan);
    const inPlan = new Map((plan ? plan.rois : []).map((r) => [`${r.role_id}\u0000${r.roi_id}`, r]));
    const states = new Map(); // key -> GET /state (drift)
    const detail = h("div", { class: "split wide-left" });
    const rows = new Map();
    if (!selected && params.get("role") && recipe.recipe_id === params.get("recipe")) {
      selected = `${params.get("role")}\u0000${params.get("roi")}\u0000${params.get("key") || params.get("roi")}`;
    }
    if (!models.some((m) => keyOf(m) === selected)) { // a stored model first
      const first = models.find((m) => m.has_memory) || models[0];
      selected = first ? keyOf(first) : null;
    }

    const tbody = h("tbody", {}, models.map((m) => {
      const planRoi = inPlan.get(`${m.role_id}\u0000${m.roi_id}`);
      const tr = h("tr", { class: "clickable", tabindex: "0", "data-testid": "model-row",
        dataset: { recipe: m.recipe_id, role: m.role_id, roi: m.roi_id, key: m.model_key,
          ready: String(Boolean(m.ready)) } },
      h("td", {}, m.role_id),
      h("td", { class: "nowrap" }, m.roi_id, m.model_key !== m.roi_id ? h("span", { class: "sub" }, `key ${m.model_key}`) : null),
      h("td", { class: "nowrap" }, statusBadge(m)),
      h("td", { class: "mono" }, m.version || "—"),
      h("td", { class: "num" }, fmtNum(m.threshold, 3)),
      h("td", {}, METHODS[m.threshold_method] || m.threshold_method || "—"),
      h("td", {}, alphaCell(m)),
      h("td", { class: "nowrap", "data-testid": "model-drift" }, driftCell(null)),
      h("td", { class: "num" }, `${m.dataset.ok ?? 0} / ${m.dataset.ng ?? 0}`),
      h("td", {}, planRoi ? (planRoi.required ? "required" : "optional") : h("span", { class: "muted" }, "—")),
      engineer ? h("td", { class: "nowrap" }, trainButtons(m)) : null);
      const choose = () => select(m);
      tr.addEventListener("click", choose);
      tr.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); choose(); } });
      rows.set(keyOf(m), tr);
      return tr;
    }));
    const ready = models.filter((m) => m.ready).length;
    content.append(
      h("div", { class: "card" },
        h("h3", {}, "Readiness", h("span", { class: "grow" }),
          h("span", { class: "muted small" }, `${ready} of ${models.length} ready`
            + (recipe.mm_per_px ? ` · ${recipe.mm_per_px} mm/px` : ""))),
        models.length
          ? h("div", { class: "scroll" }, h("table", { class: "data", "data-testid": "models-table" },
            h("thead", {}, h("tr", {}, ["Role", "ROI", "Status", "Version", "Threshold", "Method",
              "α · n (held out)", "Drift", "Dataset OK / NG", "Plan", engineer ? "Training" : null]
              .filter(Boolean).map((t) => h("th", {}, t)))),
            tbody))
          : emptyState(`Nothing stored for recipe ${recipe.recipe_id}`,
            "Add images on the Datasets page, or name its ROIs in the plan below.")),
      detail,
      planCard(recipe.recipe_id, recipe.models, { engineer, onSaved: reload, plan }),
      auditCard({ engineer }));

    function trainButtons(m) {
      const go = (mode) => (event) => {
        event.stopPropagation(); // the row's own click selects only
        if (selected !== keyOf(m)) select(m);
        training.start(mode);
      };
      return [
        h("button", { class: "btn small primary", "data-testid": "train", onclick: go("fit"),
          title: `Train a new model of ${m.role_id} / ${m.roi_id} from its ${m.dataset.ok ?? 0} stored OK images` }, "Train"),
        " ",
        h("button", { class: "btn small", "data-testid": "append", onclick: go("append"), disabled: !m.has_memory,
          title: m.has_memory ? "Add the stored OK images to this model" : "no stored model to append to" }, "Append"),
      ];
    }

    function select(m) {
      selected = keyOf(m);
      remember(m);
      for (const [k, tr] of rows) tr.classList.toggle("selected", k === selected);
      if (training) training.stop();
      const onDone = (job) => {
        finished.set(keyOf(m), job);
        reload();
      };
      training = trainCard(m, { engineer, onDone, last: finished.get(keyOf(m)) });
      clear(detail).append(revisionsCard(m), training.el);
    }
    const first = models.find((m) => keyOf(m) === selected);
    if (first) select(first);

    // drift is per model version, from GET /state (the manifest leaves it empty)
    for (const m of models.filter((x) => x.has_memory)) {
      api("GET", "/state", { query: refOf(m) }).then(
        (state) => states.set(keyOf(m), state),
        (err) => states.set(keyOf(m), { failed: err instanceof ApiError ? err.describe() : String(err) }),
      ).then(() => {
        const cell = rows.get(keyOf(m)).querySelector("[data-testid=model-drift]");
        clear(cell).append(driftCell(states.get(keyOf(m))));
      });
    }
    for (const m of models.filter((x) => !x.has_memory)) {
      clear(rows.get(keyOf(m)).querySelector("[data-testid=model-drift]")).append(h("span", { class: "muted" }, "—"));
    }
  }

  function revisionsCard(m) {
    const body = h("div", {}, h("p", { class: "muted" }, "Loading the revisions…"));
    const el = h("div", { class: "card", "data-testid": "model-revisions", dataset: { roi: m.roi_id } },
      h("h3", {}, "Revisions ", h("span", { class: "muted small" }, `${m.role_id} / ${m.roi_id}`)), body);

    function show(answer) {
      clear(body);
      if (!answer.revisions.length) {
        body.append(emptyState("No stored revisions", engineer
          ? "Train this model (Training) to store its first revision."
          : "An engineer trains this model from its dataset."));
        return;
      }
      const current = answer.revisions.find((r) => r.current);
      body.append(h("div", { class: "hscroll" }, h("table", { class: "data" },
        h("thead", {}, h("tr", {}, ["Saved", "Revision", "Model version", "Threshold", "Calibration", ""]
          .map((t) => h("th", {}, t)))),
        h("tbody", {}, answer.revisions.map((r) => h("tr", { "data-testid": "revision-row",
          class: r.current ? "selected" : null, dataset: { revision: r.revision, current: String(r.current) } },
        h("td", { class: "nowrap" }, fmtDate(r.saved_at * 1000)),
        h("td", { class: "mono" }, r.revision),
        h("td", { class: "mono" }, r.version || "—"),
        h("td", { class: "num" }, fmtNum(r.threshold, 3)),
        h("td", {}, METHODS[r.calibration] || r.calibration || "none"),
        h("td", {}, r.current
          ? h("span", { class: "badge ok" }, "CURRENT")
          : engineer
            ? h("button", { class: "btn small danger", "data-testid": "rollback",
              onclick: () => rollback(r, current) }, "Roll back")
            : null)))))));
    }

    async function rollback(r, current) {
      const ok = await confirmDialog({
        title: `Roll ${m.role_id} / ${m.roi_id} back to revision ${r.revision}?`,
        body: `Revision ${r.revision} (saved ${fmtDate(r.saved_at * 1000)}, threshold ${fmtNum(r.threshold, 3)}, `
          + `${METHODS[r.calibration] || r.calibration || "no calibration"}) becomes the model the line uses`
          + (current ? `, instead of ${current.revision}. Rolling back to ${current.revision} undoes it.` : "."),
        confirm: `Roll back to ${r.revision}`, danger: true, testid: "rollback-confirm",
      });
      if (!ok || !alive) return;
      const form = new FormData();
      for (const [k, v] of Object.entries({ ...refOf(m), revision: r.revision })) form.append(k, v);
      try {
        show(await api("POST", "/models/rollback", { form }));
        toast(`${m.role_id} / ${m.roi_id} rolled back to ${r.revision}`);
        reload();
      } catch (err) {
        showError(err, `rolling back to ${r.revision}`);
      }
    }

    api("GET", "/models/revisions", { query: refOf(m) }).then(show, (err) => {
      clear(body).append(emptyState("The revisions could not be read",
        err instanceof ApiError ? err.describe() : String(err)));
      showError(err, "the revisions");
    });
    return el;
  }

  render();
  return () => {
    alive = false;
    if (training) training.stop();
  };
}

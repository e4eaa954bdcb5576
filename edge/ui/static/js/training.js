// The Models page's training card: Train / Append one model from its stored dataset as a
// job (POST /jobs/train), its progress polled from GET /jobs/{job_id}.
import { ApiError, api, showError, toast } from "./api.js";
import { clear, fmtNum, h } from "./dom.js";

const POLL_MS = 500;
const LIVE = new Set(["queued", "running"]);

function ids(model) {
  return { recipe_id: model.recipe_id, role_id: model.role_id, roi_id: model.roi_id,
    model_key: model.model_key };
}

function sameModel(job, model) {
  return job.recipe_id === model.recipe_id && job.role_id === model.role_id
    && job.roi_id === model.roi_id && (job.model_key || job.roi_id) === model.model_key;
}

function describeResult(job) {
  const r = job.result;
  const lines = [
    `${job.mode === "append" ? "Appended" : "Trained"}: model version ${r.model_version}, `
      + `threshold ${fmtNum(r.threshold, 3)} (${r.calibration_method || "no threshold"}).`,
    `${r.n_images} OK images, ${r.n_calibration} held out for the threshold`
      + (r.conformal ? `, α ${r.conformal.target_frr} ${r.conformal.guaranteed
        ? "guaranteed" : `not guaranteed (${r.conformal.n} held out, ${r.conformal.needed} needed)`}`
        : "") + ".",
  ];
  return h("div", {},
    lines.map((line) => h("div", {}, line)),
    r.warnings && r.warnings.length
      ? h("ul", {}, r.warnings.map((w) => h("li", {}, h("span", { class: "badge warn" }, "WARN"), " ", w)))
      : null);
}

// `model`: a manifest entry; `onDone(job)` after a training finished here (reload the page's
// data); `last`: such a job, shown again. Returns { el, start(mode), stop } — start("fit" |
// "append") starts a training (the Train / Append buttons of the model's row), stop() ends
// the polling (the job itself runs on in the API).
export function trainCard(model, { engineer, onDone, last }) {
  let timer = null;
  let stopped = false;
  let busy = false;
  const bar = h("div", { class: "bar", style: { width: "0%" } });
  const progress = h("div", { class: "progress", "data-testid": "train-progress", role: "progressbar",
    "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": "0", hidden: true }, bar);
  const stage = h("div", { class: "progress-line", "data-testid": "train-stage", hidden: true });
  const result = h("div", { class: "result", "data-testid": "train-result", "aria-live": "polite" });
  const frr = h("input", { type: "number", min: "0.0001", max: "0.9999", step: "any",
    placeholder: "default (BDI_TARGET_FRR)", "data-testid": "train-frr" });
  const n = model.dataset || {};
  const datasetLink = `#/datasets?recipe=${encodeURIComponent(model.recipe_id)}`
    + `&role=${encodeURIComponent(model.role_id)}&roi=${encodeURIComponent(model.roi_id)}`;

  const el = h("div", { class: "card", "data-testid": "train-card" },
    h("h3", {}, "Training"),
    h("p", { class: "muted" }, `From the stored dataset: ${n.ok ?? 0} OK / ${n.ng ?? 0} NG images. `,
      h("a", { href: datasetLink, "data-testid": "train-dataset-link" }, "Open the dataset")),
    engineer
      ? [
        h("div", { class: "toolbar" }, h("label", {}, "Target false-reject rate α of the next Train", frr)),
        h("p", { class: "muted small" }, "Train (in the model's row): a new model from the stored OK "
          + "images. Append: adds them to the stored model, which keeps its threshold method."),
      ]
      : h("p", { class: "muted", "data-testid": "train-engineers-only" },
        "Only engineers train models; a training in progress shows here."),
    stage, progress, result);

  function buttons(now) {
    busy = now;
    el.dataset.busy = String(now);
  }

  function show(job) {
    const p = job.progress || {};
    const pct = Math.round((job.state === "done" ? 1 : p.fraction || 0) * 100);
    progress.hidden = false;
    stage.hidden = false;
    bar.style.width = `${pct}%`;
    progress.setAttribute("aria-valuenow", String(pct));
    progress.dataset.state = job.state;
    const steps = p.total > 0 ? ` ${p.done}/${p.total}` : "";
    const now = LIVE.has(job.state) && p.stage && p.stage !== job.state ? `, ${p.stage}${steps}` : "";
    clear(stage).append(
      h("span", {}, `${job.mode === "append" ? "Append" : "Training"} by ${job.user || "?"}: `
        + `${job.state}${now}`),
      h("span", {}, `${pct}%`));
  }

  function finish(job) {
    showFinished(job);
    if (job.state === "done") {
      toast(`${job.mode === "append" ? "Append" : "Training"} of ${model.role_id} / ${model.roi_id} done`);
    }
    onDone(job);
  }

  function showFinished(job) {
    buttons(false);
    clear(result);
    show(job);
    if (job.state === "done") {
      result.dataset.state = "done";
      result.append(describeResult(job));
    } else {
      const e = job.error || {};
      result.dataset.state = "failed";
      result.append(h("div", { class: "form-error" },
        `The ${job.mode === "append" ? "append" : "training"} failed: ${e.message || "unknown error"}`
          + ` (${e.code || "?"}, HTTP ${e.status || "?"})`));
    }
  }

  async function poll(jobId) {
    if (stopped) return;
    let job;
    try {
      job = await api("GET", `/jobs/${encodeURIComponent(jobId)}`);
    } catch (err) {
      if (stopped) return;
      buttons(false);
      clear(result).append(h("div", { class: "form-error" }, `Lost the job's progress: ${
        err instanceof ApiError ? err.describe() : String(err)}`));
      showError(err, "training progress");
      return;
    }
    if (stopped) return;
    show(job);
    if (LIVE.has(job.state)) timer = setTimeout(() => poll(jobId), POLL_MS);
    else finish(job);
  }

  async function start(mode) {
    if (busy) {
      toast(`A training of ${model.role_id} / ${model.roi_id} is already running`);
      return;
    }
    const body = { ...ids(model), mode };
    if (mode === "fit" && frr.value !== "") body.target_frr = Number(frr.value);
    buttons(true);
    clear(result);
    delete result.dataset.state;
    let job;
    try {
      job = await api("POST", "/jobs/train", { json: body });
    } catch (err) {
      buttons(false);
      result.dataset.state = "refused";
      clear(result).append(h("div", { class: "form-error" },
        err instanceof ApiError ? err.describe() : String(err)));
      showError(err, mode === "append" ? "appending" : "training");
      return;
    }
    show(job);
    timer = setTimeout(() => poll(job.job_id), POLL_MS);
  }

  if (last) showFinished(last);

  // a training of this model already running (started here before, or by someone else)
  (async () => {
    try {
      const { jobs } = await api("GET", "/jobs", { query: { limit: 20 } });
      const running = jobs.find((job) => LIVE.has(job.state) && sameModel(job, model));
      if (running && !stopped) {
        buttons(true);
        show(running);
        timer = setTimeout(() => poll(running.job_id), POLL_MS);
      }
    } catch (err) {
      if (!stopped) showError(err, "the running trainings");
    }
  })();

  return {
    el,
    start,
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

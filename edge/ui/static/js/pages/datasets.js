// Datasets: the stored OK / NG images of one recipe / role / ROI as thumbnails, their counts,
// upload by drag-and-drop or a file picker, download and delete. docs/UI.md, "Datasets page".
import { ApiError, api, showError, toast } from "../api.js";
import { clear, confirmDialog, emptyState, fmtDate, h } from "../dom.js";

const PAGE = 60; // thumbnails per label until "Show more"
const LABELS = ["ok", "ng"];
const NAMES = { ok: "OK", ng: "NG" };

// the stored name starts with the upload time (UTC): 20261127-164343-177380_ec2ff064.png
function uploadedAt(name, short = false) {
  const m = /^(\d{4})(\d{2})(\d{2})-(\d{2})(\d{2})(\d{2})/.exec(name);
  if (!m) return name;
  const local = fmtDate(Date.UTC(m[1], m[2] - 1, m[3], m[4], m[5], m[6]));
  return short ? local.slice(5) : local;
}

function describe(err) {
  return err instanceof ApiError ? err.describe() : String((err && err.message) || err);
}

// recipe -> role -> Set(roi), from the manifest (every model and every dataset)
function treeOf(manifest) {
  const tree = new Map();
  for (const recipe of manifest.recipes) {
    const roles = tree.get(recipe.recipe_id) || new Map();
    tree.set(recipe.recipe_id, roles);
    for (const m of recipe.models) {
      if (!roles.has(m.role_id)) roles.set(m.role_id, new Set());
      roles.get(m.role_id).add(m.roi_id);
    }
  }
  return tree;
}

function add(tree, { recipe, role, roi }) {
  if (!recipe || !role || !roi) return;
  if (!tree.has(recipe)) tree.set(recipe, new Map());
  const roles = tree.get(recipe);
  if (!roles.has(role)) roles.set(role, new Set());
  roles.get(role).add(roi);
}

export async function mount(root, params, ctx) {
  const engineer = ctx.me.role === "engineer";
  let alive = true;
  const tree = treeOf(await api("GET", "/manifest"));
  const pick = { recipe: params.get("recipe"), role: params.get("role"), roi: params.get("roi") };
  add(tree, pick);
  let listing = null;
  let showing = null; // the ids (JSON) of the dataset on the page
  const shown = { ok: PAGE, ng: PAGE };

  const picker = h("div", { class: "toolbar", "data-testid": "datasets-pick" });
  const counts = h("div", { class: "stats" });
  const uploader = h("div");
  const body = h("div");
  root.append(h("div", { class: "toolbar" }, h("h2", { class: "grow" }, "Datasets")), picker, counts,
    uploader, body);

  // a file dropped outside the drop zone must not replace the page
  const stray = (event) => { if (!event.target.closest || !event.target.closest(".dropzone")) event.preventDefault(); };
  window.addEventListener("dragover", stray);
  window.addEventListener("drop", stray);

  function ids() {
    return { recipe_id: pick.recipe, role_id: pick.role, roi_id: pick.roi };
  }

  function fileUrl(label, name) {
    const q = new URLSearchParams({ ...ids(), label, name });
    return `/datasets/file?${q}`;
  }

  function select(testid, label, values, value, onchange) {
    const el = h("select", { "data-testid": testid, "aria-label": label },
      values.map((v) => h("option", { value: v, selected: v === value }, v)));
    el.addEventListener("change", () => onchange(el.value));
    return h("label", {}, label, el);
  }

  function renderPicker() {
    clear(picker);
    const recipes = [...tree.keys()].sort();
    if (!tree.has(pick.recipe)) pick.recipe = recipes[0] ?? null;
    const roles = pick.recipe ? [...tree.get(pick.recipe).keys()].sort() : [];
    if (!roles.includes(pick.role)) pick.role = roles[0] ?? null;
    const rois = pick.role ? [...tree.get(pick.recipe).get(pick.role)].sort() : [];
    if (!rois.includes(pick.roi)) pick.roi = rois[0] ?? null;
    const changed = (key) => (value) => {
      pick[key] = value;
      if (key === "recipe") pick.role = null;
      if (key !== "roi") pick.roi = null;
      choose();
    };
    if (recipes.length) {
      picker.append(
        select("datasets-recipe", "Recipe", recipes, pick.recipe, changed("recipe")),
        select("datasets-role", "Role", roles, pick.role, changed("role")),
        select("datasets-roi", "ROI", rois, pick.roi, changed("roi")));
    }
    if (engineer) picker.append(another(!recipes.length));
    if (pick.roi) {
      picker.append(h("span", { class: "grow" }),
        h("a", { class: "btn", href: `/datasets/download?${new URLSearchParams(ids())}`,
          "data-testid": "dataset-download-zip", download: "" }, "Download all (zip)"));
    }
  }

  // engineers start the dataset of a role / ROI nothing is stored for yet
  function another(open) {
    const input = (testid, label, value) => h("input", { type: "text", "data-testid": testid,
      "aria-label": label, placeholder: label, value: value || "", required: true, maxlength: "64" });
    const recipe = input("datasets-new-recipe", "recipe", pick.recipe || "default");
    const role = input("datasets-new-role", "role");
    const roi = input("datasets-new-roi", "ROI");
    const error = h("span", { class: "form-error", "data-testid": "datasets-new-error", role: "alert" });
    const form = h("form", { class: "toolbar" }, recipe, role, roi,
      h("button", { class: "btn", type: "submit", "data-testid": "datasets-new-open" }, "Open"), error);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.textContent = "";
      const query = { recipe_id: recipe.value.trim(), role_id: role.value.trim(), roi_id: roi.value.trim() };
      let answer;
      try { // the API checks the ids (and answers them normalised)
        answer = await api("GET", "/datasets/list", { query });
      } catch (err) {
        error.textContent = describe(err);
        return;
      }
      const next = { recipe: answer.recipe_id, role: answer.role_id, roi: answer.roi_id };
      add(tree, next);
      Object.assign(pick, next);
      choose();
    });
    return h("details", { "data-testid": "datasets-new", open: open || null },
      h("summary", {}, "Another role / ROI…"), form);
  }

  function choose() {
    shown.ok = PAGE;
    shown.ng = PAGE;
    renderPicker();
    if (pick.roi) {
      history.replaceState(null, "", `#/datasets?${new URLSearchParams({ recipe: pick.recipe, role: pick.role, roi: pick.roi })}`);
    }
    load();
  }

  // (re)list the picked dataset; the drop zone and its results stay while the ids do
  async function load() {
    const want = pick.roi ? JSON.stringify(ids()) : null;
    if (want !== showing) {
      showing = null;
      clear(counts);
      clear(uploader);
      clear(body).append(want ? h("p", { class: "muted" }, "Loading…") : emptyState("No datasets yet", engineer
        ? "Open “Another role / ROI…” above, name the recipe, role and ROI, then drop images there."
        : "An engineer adds the images of a role / ROI here."));
    }
    if (!want) return;
    let answer;
    try {
      answer = await api("GET", "/datasets/list", { query: ids() });
    } catch (err) {
      if (!alive || want !== JSON.stringify(ids())) return;
      showing = null;
      clear(counts);
      clear(uploader);
      clear(body).append(emptyState("The dataset could not be listed", describe(err)));
      showError(err, "listing the dataset");
      return;
    }
    if (!alive || want !== JSON.stringify(ids())) return; // the user picked another meanwhile
    listing = answer;
    renderCounts();
    if (engineer && showing !== want) uploader.append(dropzone());
    showing = want;
    renderThumbs();
  }

  function renderCounts() {
    const need = listing.min_ok_samples;
    const ok = listing.counts.ok ?? 0;
    clear(counts).append(
      h("div", { class: "stat ok" }, h("div", { class: "value", "data-testid": "dataset-count-ok" }, String(ok)),
        h("div", { class: "label" }, "OK images")),
      h("div", { class: "stat ng" }, h("div", { class: "value", "data-testid": "dataset-count-ng" },
        String(listing.counts.ng ?? 0)), h("div", { class: "label" }, "NG images")),
      h("div", { class: "stat" }, h("div", { class: "value", "data-testid": "dataset-need" },
        ok >= need ? "✓" : String(need - ok)),
      h("div", { class: "label" }, ok >= need ? `enough OK images to train (${need})`
        : `more OK images to train (${need} needed)`)));
  }

  function renderThumbs() {
    clear(body);
    if (!listing.ok.length && !listing.ng.length) {
      body.append(emptyState(`No images stored for ${pick.role} / ${pick.roi}`, engineer
        ? `Drop PNG or JPEG images on the zone above (or choose files), labelled OK or NG. `
          + `Training needs at least ${listing.min_ok_samples} OK images; NG images calibrate the threshold.`
        : `An engineer adds images here; training needs at least ${listing.min_ok_samples} OK images.`));
    }
    for (const label of LABELS) body.append(section(label));
  }

  function section(label) {
    const items = listing[label];
    const grid = h("div", { class: "thumbs dataset", "data-testid": `thumbs-${label}` },
      items.slice(0, shown[label]).map((item) => thumb(label, item)));
    const head = h("div", { class: "section-head" }, h("h3", {}, `${NAMES[label]} images`),
      h("span", { class: "muted" }, items.length > shown[label]
        ? `${shown[label]} of ${items.length} shown` : `${items.length}`));
    if (engineer && items.length) {
      head.append(h("button", { class: "btn small danger", "data-testid": `dataset-clear-${label}`,
        onclick: () => clearLabel(label) }, `Delete all ${NAMES[label]}…`));
    }
    const more = items.length > shown[label]
      ? h("div", { class: "toolbar end" }, h("button", { class: "btn", "data-testid": `thumbs-more-${label}`,
        onclick: () => { shown[label] += PAGE; renderThumbs(); } }, `Show ${Math.min(PAGE, items.length - shown[label])} more`))
      : null;
    return h("section", {}, head,
      items.length ? grid : h("div", {}, grid, h("p", { class: "muted" }, `No ${NAMES[label]} images.`)), more);
  }

  function thumb(label, item) {
    const url = fileUrl(label, item.name);
    const caption = h("figcaption", {}, h("span", { title: `${item.name}, uploaded ${uploadedAt(item.name)}` },
      uploadedAt(item.name, true)),
      h("span", { class: "actions" },
        h("a", { class: "btn small", href: url, download: item.name, "data-testid": "thumb-download",
          title: `Download ${item.name}` }, "↓"),
        engineer ? h("button", { class: "btn small danger", "data-testid": "thumb-delete",
          title: `Delete ${item.name}`, onclick: () => remove(label, item, figure) }, "✕") : null));
    const img = h("img", { src: url, alt: `${NAMES[label]} image ${item.name}`, loading: "lazy", decoding: "async" });
    img.addEventListener("error", async () => { // the API's words for an image it would not give
      try {
        await api("GET", url, { raw: true });
      } catch (err) {
        caption.prepend(h("span", { class: "form-error", title: describe(err) }, describe(err)));
      }
    }, { once: true });
    const figure = h("figure", { "data-testid": "thumb", dataset: { name: item.name, label } }, img, caption);
    return figure;
  }

  async function remove(label, item, figure) {
    const ok = await confirmDialog({
      title: `Delete this ${NAMES[label]} image?`,
      body: `${item.name} (uploaded ${uploadedAt(item.name)}) of ${pick.role} / ${pick.roi} is deleted with its `
        + "metadata; models already trained keep what they learnt from it.",
      confirm: "Delete", danger: true, testid: "thumb-delete-confirm",
    });
    if (!ok || !alive) return;
    try {
      const answer = await api("DELETE", "/datasets/file", { query: { ...ids(), label, name: item.name } });
      listing[label] = listing[label].filter((x) => x.name !== item.name);
      listing.counts = answer.counts;
      figure.remove();
      renderCounts();
      renderThumbs();
      toast(`Deleted ${item.name}`);
    } catch (err) {
      showError(err, `deleting ${item.name}`);
    }
  }

  async function clearLabel(label) {
    const n = listing.counts[label] ?? listing[label].length;
    const ok = await confirmDialog({
      title: `Delete all ${n} ${NAMES[label]} images of ${pick.role} / ${pick.roi}?`,
      body: "They cannot be restored (download the zip first to keep a copy).",
      confirm: `Delete ${n} images`, danger: true, testid: "dataset-clear-confirm",
    });
    if (!ok || !alive) return;
    try {
      const answer = await api("DELETE", "/datasets/clear", { query: { ...ids(), label } });
      toast(`Deleted ${answer.deleted} ${NAMES[label]} images`);
    } catch (err) {
      showError(err, `deleting the ${NAMES[label]} images`);
    }
    load();
  }

  function dropzone() {
    const label = h("select", { "data-testid": "upload-label", "aria-label": "label" },
      h("option", { value: "ok" }, "OK"), h("option", { value: "ng" }, "NG"));
    const mm = h("input", { type: "number", min: "0", step: "any", placeholder: "recipe's (optional)",
      "data-testid": "upload-mm", "aria-label": "mm per pixel" });
    const input = h("input", { type: "file", multiple: true, accept: "image/png,image/jpeg", hidden: true,
      "data-testid": "upload-input" });
    const results = h("ul", { class: "upload-results", "data-testid": "upload-results", "aria-live": "polite" });
    const zone = h("div", { class: "dropzone", "data-testid": "dropzone", tabindex: "0", role: "button",
      "aria-label": "Drop images here or choose files" },
    h("strong", {}, "Drop PNG or JPEG images here"), " or ",
    h("button", { type: "button", class: "btn small", "data-testid": "upload-choose",
      onclick: (e) => { e.stopPropagation(); input.click(); } }, "choose files"),
    h("div", { class: "muted small" }, "Each file is checked by the server; a rejected one says why below."));
    zone.addEventListener("click", () => input.click());
    zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
    zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("over");
      upload([...e.dataTransfer.files], label.value, mm.value, results);
    });
    input.addEventListener("change", () => {
      const files = [...input.files];
      input.value = ""; // the same file may be chosen again
      upload(files, label.value, mm.value, results);
    });
    return h("div", { class: "card", "data-testid": "upload-card" },
      h("div", { class: "toolbar" }, h("label", {}, "Label of the images", label),
        h("label", {}, "mm per pixel", mm)), zone, input, results);
  }

  // one request per file, so that each rejected file gets the API's own words
  async function upload(files, label, mm, results) {
    if (!files.length) return;
    clear(results);
    let stored = 0;
    for (const file of files) {
      const line = h("li", { "data-testid": "upload-result", dataset: { file: file.name, status: "sending" } },
        h("span", { class: "badge" }, "…"), h("span", {}, file.name));
      results.append(line);
      const form = new FormData();
      for (const [k, v] of Object.entries({ ...ids(), label })) form.append(k, v);
      if (mm) form.append("mm_per_px", mm);
      form.append("images", file, file.name);
      try {
        await api("POST", "/datasets/upload", { form });
        stored += 1;
        line.dataset.status = "stored";
        clear(line).append(h("span", { class: `badge ${label}` }, NAMES[label]), h("span", {}, `${file.name}: stored`));
      } catch (err) {
        line.dataset.status = "rejected";
        clear(line).append(h("span", { class: "badge error" }, "REJECTED"), h("span", {}, file.name),
          h("span", { class: "why" }, describe(err)));
      }
      if (!alive) return;
    }
    const rejected = files.length - stored;
    if (stored) toast(`${stored} ${NAMES[label]} image(s) stored`);
    if (rejected) showError(new Error(`${rejected} of ${files.length} file(s) rejected: see the list under the drop zone`), "upload");
    await load();
  }

  choose();
  return () => {
    alive = false;
    window.removeEventListener("dragover", stray);
    window.removeEventListener("drop", stray);
  };
}

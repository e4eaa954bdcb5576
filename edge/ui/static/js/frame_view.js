// One frame as a person judges it: the crop, its heatmap on top (toggle, opacity), the
// defect regions outlined with their area, score against threshold, p-value, and the
// provenance the verdict names. Used by the Parts and Review pages.
import { ApiError, api } from "./api.js";
import { fmtNum, fmtTime, h, verdictBadge } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

// The bytes of an image endpoint as an object URL; an API error comes back as ApiError
// (its words are shown in place of the image, never a broken image).
async function imageUrl(path, urls) {
  const response = await api("GET", path, { raw: true });
  const url = URL.createObjectURL(await response.blob());
  urls.push(url);
  return url;
}

function inWords(err) {
  if (err instanceof ApiError) return `${err.message} (${err.code})`;
  return String((err && err.message) || err);
}

function regionLabel(region) {
  if (typeof region.area_mm2 === "number") return `${fmtNum(region.area_mm2, 2)} mm²`;
  if (typeof region.area_px === "number") return `${region.area_px} px`;
  return "";
}

// Rects over the crop, in its own pixels: the SVG's viewBox is the image's natural size.
function regionsLayer(regions, width, height) {
  const layer = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", "data-testid": "frame-regions",
  });
  regions.forEach((region, i) => {
    const [x, y, w, hh] = region.bbox || [];
    if (![x, y, w, hh].every((n) => typeof n === "number")) return;
    const label = regionLabel(region);
    const group = svg("g", { "data-testid": "frame-region", "data-area-mm2": region.area_mm2 ?? "" },
      svg("rect", { x, y, width: w, height: hh }),
      svg("title", {}, `region ${i + 1}: ${label || "no scale"}, max score ${fmtNum(region.max_score, 2)}`));
    if (label) {
      const above = y > height * 0.08;
      // sized in the crop's pixels, so about 14 screen pixels whatever the crop's size
      const size = height / 36;
      group.append(svg("text", { x, y: above ? y - size / 3 : y + hh + size, "font-size": size }, label));
    }
    layer.append(group);
  });
  return layer;
}

function scoreLine(frame) {
  const { score, threshold } = frame;
  if (typeof score !== "number") return h("span", { class: "muted" }, "no score");
  const ratio = typeof threshold === "number" && threshold > 0 ? score / threshold : null;
  const pct = ratio === null ? 0 : Math.min(100, (ratio / 2) * 100);
  return h("div", { class: "score-line", "data-testid": "frame-score" },
    h("div", {}, h("span", { class: "big" }, fmtNum(score, 2)), h("span", { class: "muted" }, " / threshold "),
      h("span", {}, fmtNum(threshold, 2)),
      ratio === null ? null : h("span", { class: ratio >= 1 ? "ratio over" : "ratio" }, ` ×${fmtNum(ratio, 2)}`)),
    ratio === null ? null : h("div", { class: "progress score-bar", title: "score / (2 × threshold)" },
      h("div", { class: ratio >= 1 ? "bar over" : "bar", style: { width: `${pct}%` } }),
      h("div", { class: "mark" })));
}

function provenance(frame) {
  const row = (label, value, mono = true) => h("tr", {}, h("th", {}, label),
    h("td", { class: mono ? "mono" : "" }, value ?? "—"));
  return h("table", { class: "data provenance", "data-testid": "frame-provenance" },
    row("model version", frame.model_version),
    row("calibration (threshold) version", frame.calibration_version),
    row("settings fingerprint", frame.settings_fingerprint),
    row("code version", frame.code_version),
    row("image SHA-256", frame.image_sha256 ? `${frame.image_sha256.slice(0, 16)}…` : null),
    row("frame", frame.frame_id),
    row("judged at", fmtTime(frame.produced_at), false));
}

// The picture: the crop with its heatmap and regions, or, in its place, why there is none.
function picture(frame, urls, alive) {
  const box = h("div", { class: "frame-picture" }, h("p", { class: "muted" }, "Loading the crop…"));
  const controls = h("div", { class: "toolbar frame-controls" });
  if (!frame.crop_url) {
    box.replaceChildren(h("div", { class: "no-image", "data-testid": "frame-crop-missing" },
      h("strong", {}, "No crop"), h("p", {}, frame.no_crop || "the crop of this frame is not kept")));
    return { box, controls };
  }
  imageUrl(frame.crop_url, urls).then((src) => {
    if (!alive()) return;
    const crop = h("img", { src, alt: `crop of ${frame.frame_id}`, "data-testid": "frame-crop" });
    const stack = h("div", { class: "overlay" }, crop);
    box.replaceChildren(stack);
    crop.addEventListener("load", () => {
      const regions = frame.regions || [];
      if (regions.length) stack.append(regionsLayer(regions, crop.naturalWidth, crop.naturalHeight));
    }, { once: true });
    heatmap(frame, stack, controls, urls, alive);
  }).catch((err) => {
    if (!alive()) return;
    box.replaceChildren(h("div", { class: "no-image", "data-testid": "frame-crop-missing" },
      h("strong", {}, "No crop"), h("p", {}, inWords(err))));
  });
  return { box, controls };
}

function heatmap(frame, stack, controls, urls, alive) {
  const note = h("span", { class: "muted small heat-controls", "data-testid": "frame-heatmap-note" });
  controls.append(note);
  if (!frame.heatmap_url) {
    note.textContent = frame.verdict === "ERROR" || frame.verdict === "NO_MODEL"
      ? `No heatmap: no model scored this frame (${frame.verdict}).`
      : "No heatmap for this frame.";
    return;
  }
  note.textContent = "Drawing the heatmap…";
  imageUrl(frame.heatmap_url, urls).then((src) => {
    if (!alive()) return;
    const heat = h("img", { src, class: "heat", alt: "heatmap", "data-testid": "frame-heatmap" });
    heat.style.opacity = "0.6";
    stack.insertBefore(heat, stack.children[1] || null); // under the regions
    const toggle = h("input", { type: "checkbox", checked: true, "data-testid": "frame-heatmap-toggle",
      onchange: () => { heat.hidden = !toggle.checked; opacity.disabled = !toggle.checked; } });
    const opacity = h("input", { type: "range", min: 0, max: 100, value: 60, "data-testid": "frame-heatmap-opacity",
      "aria-label": "heatmap opacity", oninput: () => { heat.style.opacity = String(opacity.value / 100); } });
    note.replaceChildren(
      h("label", { class: "inline" }, toggle, "Heatmap"),
      h("label", { class: "inline" }, "Opacity", opacity));
  }).catch((err) => {
    if (!alive()) return;
    note.textContent = `No heatmap: ${inWords(err)}`;
  });
}

// A frame as a card. `frame`: a frame of GET /parts/{id}, or GET /frames/{id}'s verdict
// document with crop_url, heatmap_url and no_crop. Returns { el, close } (close frees the
// images).
export function frameView(frame, { title } = {}) {
  const urls = [];
  let open = true;
  const alive = () => open;
  const { box, controls } = picture(frame, urls, alive);
  const regions = frame.regions || [];
  const el = h("section", { class: "card frame", "data-testid": "part-frame", "data-frame-id": frame.frame_id,
    "data-verdict": frame.verdict || "" },
    h("div", { class: "frame-head" },
      h("h3", {}, title || `${frame.role_id || "?"} / ${frame.roi_id || "?"}`), verdictBadge(frame.verdict)),
    h("div", { class: "frame-body" },
      h("div", {}, box, controls),
      h("div", { class: "frame-facts stack" },
        scoreLine(frame),
        h("div", { class: "field" }, h("span", { class: "label" }, "p-value"),
          h("span", { class: "value", "data-testid": "frame-pvalue" }, fmtNum(frame.p_value, 4))),
        h("div", { class: "field" }, h("span", { class: "label" }, "regions"),
          h("span", { class: "value" }, regions.length
            ? regions.map(regionLabel).filter(Boolean).join(", ") || `${regions.length}`
            : "none")),
        frame.error_class ? h("div", { class: "field" }, h("span", { class: "label" }, "error"),
          h("span", { class: "value" }, frame.error_class)) : null,
        provenance(frame))));
  return {
    el,
    close() {
      open = false;
      for (const url of urls.splice(0)) URL.revokeObjectURL(url);
    },
  };
}

// GET /frames/{id} as the frame view takes it (the verdict's fields at the top level).
export async function loadFrame(frameId) {
  const found = await api("GET", `/frames/${encodeURIComponent(frameId)}`);
  return { ...(found.verdict || {}), frame_id: found.frame_id, part_id: found.part_id,
    part_url: found.part_url, crop_url: found.crop_url, heatmap_url: found.heatmap_url,
    no_crop: found.no_crop };
}

export { inWords };

// Review: the NG, ERROR and near-threshold frames nobody reviewed yet; confirm or overrule
// each from the keyboard (j/k move, n NG, o OK, Enter the part), with its history.
import { ApiError, api, showError, toast } from "../api.js";
import { clear, emptyState, fmtNum, fmtTime, h, verdictBadge } from "../dom.js";
import { frameView, inWords, loadFrame } from "../frame_view.js";

const REFRESH_MS = 20000;
const FILTERS = {
  all: { label: "NG, ERROR and near threshold", query: { verdict: "NG,ERROR" } },
  ng: { label: "NG only", query: { verdict: "NG", near: 1 } },
  near: { label: "Near threshold (OK) only", query: { verdict: "none" } },
  error: { label: "ERROR and NO MODEL only", query: { verdict: "ERROR,NO_MODEL", near: 1 } },
};
const SCORED = new Set(["OK", "NG"]);

function kbd(key) {
  return h("span", { class: "kbd" }, key);
}

// The two decisions as the frame's verdict makes them read: the key `n` always says "this
// is NG", `o` always "this is OK".
function choices(verdict) {
  if (verdict === "OK") {
    return { confirm: { label: "Confirm OK", key: "o" }, overrule: { label: "Overrule as NG", key: "n" } };
  }
  return { confirm: { label: "Confirm NG", key: "n" }, overrule: { label: "Overrule as OK", key: "o" } };
}

export async function mount(root, params, ctx) {
  const state = { items: [], cursor: null, selected: null, busy: false, skipped: new Set(), view: null };
  let alive = true;
  const filter = h("select", { "data-testid": "review-filter", "aria-label": "which frames" },
    Object.entries(FILTERS).map(([k, f]) => h("option", { value: k }, f.label)));
  const withReviewed = h("input", { type: "checkbox", "data-testid": "review-show-reviewed" });
  const list = h("div", { class: "review-list", "data-testid": "review-queue", role: "listbox",
    "aria-label": "frames to review" });
  const more = h("button", { class: "btn small", "data-testid": "review-more", hidden: true,
    onclick: () => load(true) }, "More");
  const detail = h("div", { class: "review-detail", "data-testid": "review-detail" });
  const count = h("span", { class: "muted", "data-testid": "review-count" });
  root.append(
    h("div", { class: "toolbar" }, h("h1", { class: "page-title grow" }, "Review"), filter,
      h("label", { class: "inline" }, withReviewed, "reviewed too"),
      h("button", { class: "btn", "data-testid": "review-refresh", onclick: () => load(false) }, "Refresh")),
    h("p", { class: "muted keys", "data-testid": "review-keys" },
      [[["j", "↓"], "next"], [["k", "↑"], "previous"], [["n"], "it is NG"], [["o"], "it is OK"], [["s"], "skip"],
        [["Enter"], "open the part"]].map(([keys, what]) => h("span", { class: "key-hint" },
        keys.map((k, i) => [i ? "/" : null, kbd(k)]), ` ${what}`))),
    h("div", { class: "review-split" },
      h("div", { class: "card review-left" }, h("div", { class: "toolbar" }, h("h3", { class: "grow" }, "Queue"), count),
        list, more),
      detail));

  function renderList() {
    const shown = state.items.filter((i) => !state.skipped.has(i.frame_id));
    count.textContent = `${shown.length}${state.cursor ? "+" : ""} to look at`;
    more.hidden = !state.cursor;
    if (!shown.length) {
      clear(list).append(emptyState("The line is clear: nothing to review",
        "NG and ERROR frames, and OK frames scored near their threshold, land here as the line judges them. " +
        "A reviewed frame leaves the queue (tick \"reviewed too\" to see those)."));
      return;
    }
    clear(list).append(...shown.map((item) => {
      const v = item.verdict;
      const ratio = typeof v.score === "number" && v.threshold > 0 ? v.score / v.threshold : null;
      return h("div", {
        class: `review-item${item.frame_id === state.selected ? " selected" : ""}${item.reviews ? " reviewed" : ""}`,
        role: "option", "aria-selected": item.frame_id === state.selected ? "true" : "false",
        "data-testid": "review-item", "data-frame-id": item.frame_id, "data-queued-as": item.queued_as,
        onclick: () => select(item.frame_id),
      },
      item.queued_as === "near_threshold" ? h("span", { class: "badge warn" }, "NEAR") : verdictBadge(item.queued_as),
      h("div", { class: "what" },
        h("div", { class: "mono" }, item.part_id || item.frame_id),
        h("div", { class: "muted small" }, `${v.role_id || "?"}/${v.roi_id || "?"} · ${fmtTime(v.produced_at)}`)),
      h("div", { class: "num" }, ratio === null ? "" : `×${fmtNum(ratio, 2)}`,
        item.reviews ? h("div", { class: "muted small" }, `${item.reviews} review${item.reviews > 1 ? "s" : ""}`) : null));
    }));
    const chosen = list.querySelector(".review-item.selected");
    if (chosen) chosen.scrollIntoView({ block: "nearest" });
  }

  async function load(next) {
    const query = { ...FILTERS[filter.value].query, reviewed: withReviewed.checked ? "true" : "", limit: 100 };
    if (next) query.cursor = state.cursor;
    let answer;
    try {
      answer = await api("GET", "/review/queue", { query });
    } catch (err) {
      if (!alive) return;
      if (err instanceof ApiError && err.code === "trace_unavailable") {
        clear(list).append(emptyState("No trace yet", `${err.message}. Start the line with "bdi up".`));
      } else {
        clear(list).append(emptyState("Could not load the queue", inWords(err)));
        showError(err, "the review queue");
      }
      return;
    }
    if (!alive) return;
    state.items = next ? [...state.items, ...answer.items] : answer.items;
    state.cursor = answer.next_cursor;
    const ids = state.items.map((i) => i.frame_id);
    if (!ids.includes(state.selected)) {
      const first = ids.find((id) => !state.skipped.has(id));
      renderList();
      if (first) select(first);
      else showDetail(null);
      return;
    }
    renderList();
  }

  function visible() {
    return state.items.filter((i) => !state.skipped.has(i.frame_id));
  }

  function move(step) {
    const shown = visible();
    if (!shown.length) return;
    const at = shown.findIndex((i) => i.frame_id === state.selected);
    const to = Math.max(0, Math.min(shown.length - 1, at + step));
    if (shown[to].frame_id !== state.selected) select(shown[to].frame_id);
  }

  function showDetail(node) {
    if (state.view) state.view.close();
    state.view = null;
    clear(detail).append(node || emptyState("Nothing selected", "Pick a frame on the left, or press j."));
  }

  async function select(frameId) {
    state.selected = frameId;
    renderList();
    const item = state.items.find((i) => i.frame_id === frameId);
    showDetail(h("p", { class: "muted" }, "Loading the frame…"));
    let frame;
    try {
      frame = await loadFrame(frameId);
    } catch (err) {
      if (state.selected !== frameId || !alive) return;
      showDetail(emptyState("Could not load the frame", inWords(err)));
      showError(err, `frame ${frameId}`);
      return;
    }
    if (state.selected !== frameId || !alive) return;
    const view = frameView(frame, { title: `${frame.part_id || "no part"} · ${frame.role_id || "?"}/${frame.roi_id || "?"}` });
    const history = h("div", { class: "card", "data-testid": "review-history" }, h("p", { class: "muted" }, "Loading the reviews…"));
    showDetail(h("div", { class: "stack" }, decisionPanel(frame, item), view.el, history));
    state.view = view;
    loadHistory(frameId, history);
  }

  function decisionPanel(frame, item) {
    const scored = SCORED.has(frame.verdict);
    const c = choices(frame.verdict);
    const note = h("textarea", { rows: 2, maxlength: 2000, placeholder: "Note (optional): why", "data-testid": "review-note",
      "aria-label": "review note" });
    const button = (decision, cls, extra = {}) => h("button", {
      class: `btn big ${cls}`, "data-testid": extra.testid || `review-${decision}`, disabled: !scored,
      onclick: () => decide(frame, decision, note.value, Boolean(extra.append)),
    }, extra.label || c[decision].label, " ", kbd(extra.key || c[decision].key));
    const ngIsConfirm = frame.verdict !== "OK";
    const buttons = [
      button("confirm", ngIsConfirm ? "danger" : "good"),
      button("overrule", ngIsConfirm ? "good" : "danger"),
    ];
    if (frame.verdict === "NG" && ctx.me.role === "engineer") {
      buttons.push(button("overrule", "", { testid: "review-overrule-append", append: true,
        label: "Overrule as OK and add to the model", key: "a" }));
    }
    const open = frame.part_id
      ? h("button", { class: "btn", "data-testid": "review-open-part",
        onclick: () => ctx.navigate(`#/parts?serial=${encodeURIComponent(frame.part_id)}`) }, "Open the part ", kbd("Enter"))
      : null;
    return h("section", { class: "card decide", "data-testid": "review-decide", "data-verdict": frame.verdict || "" },
      h("div", { class: "toolbar" }, h("h2", { class: "grow" }, "Decision"),
        item && item.reviews ? h("span", { class: "badge warn" }, "reviewed before") : null, open),
      scored ? null : h("p", { class: "banner", "data-testid": "review-not-reviewable" },
        `This frame is ${String(frame.verdict || "not judged yet").replace("_", " ")}: no model judged its image, so there is ` +
        "nothing to confirm or overrule. Skip it (s); if the image is useful, an engineer can store it in a dataset."),
      note,
      h("div", { class: "toolbar decide-buttons" }, buttons,
        h("button", { class: "btn", "data-testid": "review-skip", onclick: skip }, "Skip ", kbd("s"))));
  }

  async function loadHistory(frameId, box) {
    let answer;
    try {
      answer = await api("GET", `/frames/${encodeURIComponent(frameId)}/reviews`);
    } catch (err) {
      if (state.selected === frameId && alive) clear(box).append(h("h3", {}, "Past reviews"), h("p", {}, inWords(err)));
      return;
    }
    if (state.selected !== frameId || !alive) return;
    clear(box).append(h("h3", {}, "Past reviews"));
    if (!answer.reviews.length) {
      box.append(h("p", { class: "muted" }, "None yet: you are the first to review this frame."));
      return;
    }
    box.append(h("table", { class: "data" },
      h("thead", {}, h("tr", {}, ["When", "Who", "Verdict", "Decision", "Reason", "What followed"].map((t) => h("th", {}, t)))),
      h("tbody", {}, answer.reviews.slice().reverse().map((r) => h("tr", { "data-testid": "review-history-item" },
        h("td", {}, fmtTime(r.reviewed_at)), h("td", {}, r.reviewer), h("td", {}, verdictBadge(r.verdict)),
        h("td", {}, r.decision), h("td", {}, r.reason || "—"), h("td", { class: "muted small" }, r.note))))));
  }

  async function decide(frame, decision, reason, append) {
    if (state.busy || !SCORED.has(frame.verdict)) return;
    state.busy = true;
    for (const b of detail.querySelectorAll(".decide-buttons .btn")) b.disabled = true;
    try {
      const done = await api("POST", `/frames/${encodeURIComponent(frame.frame_id)}/review`,
        { json: { decision, reason: reason.trim(), append } });
      toast(`${frame.part_id || frame.frame_id}: ${done.note}`);
    } catch (err) {
      showError(err, `reviewing ${frame.frame_id}`);
      for (const b of detail.querySelectorAll(".decide-buttons .btn")) b.disabled = false;
      return;
    } finally {
      state.busy = false;
    }
    if (!alive) return;
    const shown = visible();
    const at = shown.findIndex((i) => i.frame_id === frame.frame_id);
    const following = shown[at + 1] || shown[at - 1];
    if (withReviewed.checked) {
      const item = state.items.find((i) => i.frame_id === frame.frame_id);
      if (item) item.reviews += 1;
      if (following) select(following.frame_id);
      else select(frame.frame_id);
    } else {
      state.items = state.items.filter((i) => i.frame_id !== frame.frame_id);
      if (following) select(following.frame_id);
      else {
        state.selected = null;
        renderList();
        showDetail(null);
        load(false); // the page may have more
      }
    }
  }

  function skip() {
    if (!state.selected) return;
    const shown = visible();
    const at = shown.findIndex((i) => i.frame_id === state.selected);
    const following = shown[at + 1] || shown[at - 1];
    state.skipped.add(state.selected);
    if (following) select(following.frame_id);
    else {
      state.selected = null;
      renderList();
      showDetail(null);
    }
  }

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const typing = event.target.closest &&
      event.target.closest("textarea, select, input:not([type=checkbox]):not([type=range])");
    if (typing) {
      if (event.key === "Escape") event.target.blur();
      return;
    }
    const item = state.items.find((i) => i.frame_id === state.selected);
    const press = (testid) => {
      const b = detail.querySelector(`[data-testid="${testid}"]`);
      if (b && !b.disabled) b.click();
    };
    const verdict = item ? item.verdict.verdict : null;
    switch (event.key) {
      case "j": case "ArrowDown": move(1); break;
      case "k": case "ArrowUp": move(-1); break;
      case "n": press(verdict === "OK" ? "review-overrule" : "review-confirm"); break;
      case "o": press(verdict === "OK" ? "review-confirm" : "review-overrule"); break;
      case "a": press("review-overrule-append"); break;
      case "s": skip(); break;
      case "Enter": press("review-open-part"); break;
      default: return;
    }
    event.preventDefault();
  }

  filter.addEventListener("change", () => { state.selected = null; state.skipped.clear(); load(false); });
  withReviewed.addEventListener("change", () => load(false));
  document.addEventListener("keydown", onKey);
  const timer = setInterval(() => { if (!document.hidden && !state.busy) load(false); }, REFRESH_MS);
  showDetail(null);
  await load(false);
  return () => {
    alive = false;
    document.removeEventListener("keydown", onKey);
    clearInterval(timer);
    if (state.view) state.view.close();
  };
}

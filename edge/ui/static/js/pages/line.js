// Line: the verdicts as the line makes them, from GET /ui/events (Server-Sent Events; the
// session cookie goes with it). Events only change plain data here; the page is drawn at
// most once per animation frame, with bounded rows, so a fast line (50 verdicts/s for
// hours) keeps the tab's memory flat and the page responsive.
import { api, showError } from "../api.js";
import { clear, emptyState, fmtNum, fmtTime, h, verdictBadge } from "../dom.js";

const VERDICTS = ["OK", "NG", "ERROR", "NO_MODEL"];
const MAX_ROWS = 100; // verdict rows in the table
const MAX_ROIS = 500; // cells in the per-ROI grid (the least recently judged go)
const MAX_PARTS = 10;
const PAUSED_AFTER_MS = 5000;
const RETRY_MS = 3000;
const FEED_WORDS = {
  connecting: "connecting…",
  live: "live",
  idle: "connected, no verdicts",
  unreachable: "Kafka unreachable",
  off: "no Kafka configured",
  retrying: "disconnected, retrying",
};

function tile(label, testid, cls = "") {
  const value = h("div", { class: "value", "data-testid": testid }, "—");
  return { el: h("div", { class: `stat ${cls}` }, h("div", { class: "label" }, label), value), value };
}

function roiKey(v) {
  return `${v.recipe_id || ""}\u0000${v.role_id || ""}\u0000${v.roi_id || ""}`;
}

function serialCell(v) {
  if (!v.part_id) return h("td", { class: "muted" }, "—");
  if (v.verdict !== "NG") return h("td", { class: "mono" }, v.part_id);
  return h("td", { class: "mono" },
    h("a", { href: `#/parts?serial=${encodeURIComponent(v.part_id)}`, "data-testid": "line-part-link" }, v.part_id));
}

function verdictRow(v) {
  const area = v.area_mm2 === null || v.area_mm2 === undefined ? "" : ` · ${fmtNum(v.area_mm2, 3)} mm²`;
  return h("tr", {
    class: v.verdict === "OK" ? "" : "bad", "data-testid": "line-row",
    "data-verdict": v.verdict, "data-frame-id": v.frame_id || "",
  },
  h("td", {}, fmtTime(v.ts_ms)),
  h("td", {}, verdictBadge(v.verdict)),
  serialCell(v),
  h("td", {}, `${v.role_id || "?"} / ${v.roi_id || "?"}`),
  h("td", { class: "mono small" }, v.frame_id || "—"),
  h("td", { class: "mono" }, `${fmtNum(v.score)} / ${fmtNum(v.threshold)}`),
  h("td", { class: "mono" }, fmtNum(v.p_value, 4)),
  h("td", {}, v.regions ? `${v.regions}${area}` : "—"),
  h("td", { class: "mono muted" }, v.model_version || "—"),
  h("td", {}, v.drift ? h("span", { class: "badge warn" }, "DRIFT") : ""));
}

function roiCell(v) {
  return h("div", { class: "card roi", "data-testid": "line-roi", "data-roi": `${v.role_id}/${v.roi_id}` },
    h("div", { class: "toolbar" }, verdictBadge(v.verdict),
      h("strong", { class: "grow" }, `${v.role_id || "?"} / ${v.roi_id || "?"}`)),
    h("div", { class: "muted small" }, `${v.recipe_id || "?"} · score ${fmtNum(v.score)} / ${fmtNum(v.threshold)}`),
    h("div", { class: "muted small" }, fmtTime(v.ts_ms)));
}

function partItem(p) {
  return h("li", { "data-testid": "line-part" }, verdictBadge(p.verdict), " ",
    h("a", { href: `#/parts?serial=${encodeURIComponent(p.part_id || "")}`, class: "mono" }, p.part_id || "?"),
    h("span", { class: "muted small" }, ` ${fmtTime(p.ts_ms)} ${p.reason || ""}`));
}

export function mount(root) {
  const tiles = {
    rate: tile("Verdicts / s", "line-rate"),
    ng: tile("NG %", "line-ng-pct", "ng"),
    lag: tile("Consumer lag", "line-lag"),
  };
  for (const v of VERDICTS) tiles[v] = tile(v.replace("_", " "), `line-count-${v}`, v.toLowerCase());
  const feedState = h("span", { class: "badge warn", "data-testid": "line-feed-state" }, FEED_WORDS.connecting);
  const banner = h("div", { class: "banner", "data-testid": "line-banner", hidden: true });
  const rows = h("tbody", { "data-testid": "line-rows" });
  const grid = h("div", { class: "cards", "data-testid": "line-roi-grid" });
  const parts = h("ul", { class: "plain", "data-testid": "line-parts" });
  const empty = h("div", {}, emptyState("No verdicts yet",
    "Verdicts appear here as the line makes them: cameras publish frames, \"bdi up\" (or \"bdi consume\") judges them."));
  root.append(
    h("div", { class: "toolbar" }, h("h2", { class: "grow" }, "Line"), h("span", { class: "muted" }, "feed: "), feedState),
    banner,
    h("div", { class: "stats" }, [tiles.rate, tiles.ng, ...VERDICTS.map((v) => tiles[v]), tiles.lag].map((t) => t.el)),
    h("div", { class: "split" },
      h("section", { class: "card" }, h("h3", {}, "Last verdict per ROI"), grid),
      h("section", { class: "card" }, h("h3", {}, "Last parts"), parts)),
    h("section", { class: "card" }, h("h3", {}, "Last verdicts, newest first"), empty,
      h("div", { class: "scroll" }, h("table", { class: "data" },
        h("thead", {}, h("tr", {}, ["Time", "Verdict", "Serial", "Role / ROI", "Frame", "Score / threshold", "p", "Regions", "Model", ""]
          .map((t) => h("th", {}, t)))),
        rows))));

  // --- plain data, changed by the events; drawn by draw() -------------------------------
  let stats = null;
  let connection = "connecting";
  let newRows = []; // verdicts not drawn yet, oldest first (at most MAX_ROWS)
  let rebuild = false; // a snapshot replaces the table
  const rois = new Map(); // roiKey -> {v, el}: the grid's cells
  const dirtyRois = new Map();
  let newParts = [];
  let lastArrival = Date.now(); // the page opening counts as the start of the wait
  let frame = 0;

  const schedule = () => {
    if (!frame) frame = requestAnimationFrame(draw);
  };
  const takeVerdicts = (list) => {
    newRows = newRows.concat(list);
    if (newRows.length > MAX_ROWS) newRows = newRows.slice(-MAX_ROWS);
    for (const v of list) dirtyRois.set(roiKey(v), v);
    if (dirtyRois.size > MAX_ROIS) {
      for (const key of [...dirtyRois.keys()].slice(0, dirtyRois.size - MAX_ROIS)) dirtyRois.delete(key);
    }
    schedule();
  };
  const takeParts = (list) => {
    newParts = newParts.concat(list).slice(-MAX_PARTS);
    schedule();
  };

  function drawRows() {
    if (rebuild) clear(rows);
    rebuild = false;
    for (const v of newRows) rows.insertBefore(verdictRow(v), rows.firstChild);
    newRows = [];
    while (rows.childElementCount > MAX_ROWS) rows.lastElementChild.remove();
    empty.hidden = rows.childElementCount > 0;
  }

  function drawRois() {
    for (const [key, v] of dirtyRois) {
      const cell = roiCell(v);
      const had = rois.get(key);
      if (had) {
        had.replaceWith(cell);
        rois.delete(key); // re-inserted below: the Map keeps the least recent first
      } else {
        grid.append(cell);
      }
      rois.set(key, cell);
      while (rois.size > MAX_ROIS) {
        const [oldest, el] = rois.entries().next().value;
        el.remove();
        rois.delete(oldest);
      }
    }
    dirtyRois.clear();
  }

  function drawStats() {
    const s = stats;
    const feed = connection === "retrying" ? "retrying" : (s ? s.feed : connection);
    feedState.textContent = FEED_WORDS[feed] || feed;
    feedState.className = `badge ${feed === "live" ? "ok" : feed === "idle" ? "warn" : "ng"}`;
    if (!s) return;
    tiles.rate.value.textContent = fmtNum(s.rate_per_s, 1);
    tiles.ng.value.textContent = s.ng_pct === null ? "—" : `${fmtNum(s.ng_pct, 1)} %`;
    for (const v of VERDICTS) tiles[v].value.textContent = String(s.counts[v] ?? 0);
    tiles.lag.value.textContent = s.lag === null ? "—" : String(s.lag);
    tiles.lag.value.title = s.lag === null ? "unknown: no commit by the consumers yet, or Kafka unreachable" : "frames not yet committed";
  }

  function drawBanner() {
    let text = null;
    let bad = false;
    const waited = Math.round((Date.now() - lastArrival) / 1000);
    if (connection === "retrying") {
      text = "Disconnected from the server, retrying…";
      bad = true;
    } else if (stats && stats.feed === "off") {
      text = stats.message;
    } else if (stats && stats.feed === "unreachable") {
      text = `Kafka cannot be reached, retrying: ${stats.message || "no answer"}`;
      bad = true;
    } else if (connection === "open" && Date.now() - lastArrival >= PAUSED_AFTER_MS) {
      text = `Feed paused — no verdict for ${waited} s`;
    }
    banner.hidden = text === null;
    banner.textContent = text || "";
    banner.className = `banner${bad ? " bad" : ""}`;
    banner.dataset.state = text === null ? "" : connection === "retrying" ? "retrying" : (stats && stats.feed !== "live" ? stats.feed : "paused");
  }

  function draw() {
    frame = 0;
    drawRows();
    drawRois();
    if (newParts.length) {
      for (const p of newParts) parts.insertBefore(partItem(p), parts.firstChild);
      newParts = [];
      while (parts.childElementCount > MAX_PARTS) parts.lastElementChild.remove();
    }
    drawStats();
    drawBanner();
  }

  // --- the stream ------------------------------------------------------------------------
  let source = null;
  let retry = 0; // a timer: the browser gave up on the stream (an answer other than 200)
  let checking = false;
  const parse = (event, what) => {
    try {
      return JSON.parse(event.data);
    } catch (err) {
      showError(err, `the live feed sent an unreadable ${what} event`);
      return null;
    }
  };
  const onError = async () => {
    if (stats && stats.feed === "off") return; // closed on purpose
    connection = "retrying";
    schedule();
    if (source.readyState === EventSource.CLOSED && !retry) {
      retry = setTimeout(() => { retry = 0; connect(); }, RETRY_MS);
    }
    if (checking) return;
    checking = true;
    try {
      await api("GET", "/auth/me"); // a session that ended goes to the login page
    } catch (err) {
      if (err.status !== 401) showError(err, "the live feed");
    } finally {
      checking = false;
    }
  };
  function connect() {
    source = new EventSource("/ui/events");
    source.addEventListener("open", () => {
      connection = "open";
      schedule();
    });
    source.addEventListener("snapshot", (event) => {
      const snap = parse(event, "snapshot");
      if (!snap) return;
      rebuild = true;
      newRows = [];
      takeVerdicts(snap.verdicts.slice(-MAX_ROWS));
      for (const v of snap.rois) dirtyRois.set(roiKey(v), v);
      clear(parts);
      takeParts(snap.parts);
      stats = snap.stats;
      schedule();
    });
    source.addEventListener("verdicts", (event) => {
      const list = parse(event, "verdicts");
      if (!list) return;
      lastArrival = Date.now();
      takeVerdicts(list);
    });
    source.addEventListener("parts", (event) => {
      const list = parse(event, "parts");
      if (list) takeParts(list);
    });
    source.addEventListener("stats", (event) => {
      const s = parse(event, "stats");
      if (!s) return;
      stats = s;
      if (s.feed === "off") source.close(); // nothing will come: the banner says what to do
      schedule();
    });
    source.addEventListener("error", onError);
  }
  connect();
  const ticker = setInterval(schedule, 1000); // the paused banner counts seconds

  return () => {
    source.close();
    clearTimeout(retry);
    clearInterval(ticker);
    if (frame) cancelAnimationFrame(frame);
  };
}

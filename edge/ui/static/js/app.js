// The shell: who is signed in, the navigation, and one page at a time (by the URL's hash).
import { ApiError, api, setSession, showError, toast } from "./api.js";
import { clear, emptyState, h } from "./dom.js";

const PAGES = ["line", "parts", "review", "models", "datasets"];
const root = document.getElementById("page");
let leave = null; // what the current page does when left
let me = null;
let generation = 0;

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [name, query] = raw.split("?");
  return { name: PAGES.includes(name) ? name : "line", params: new URLSearchParams(query || "") };
}

export function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

async function route() {
  const { name, params } = parseHash();
  const mine = ++generation;
  if (leave) {
    try {
      leave();
    } catch (err) {
      showError(err, "leaving the page");
    }
    leave = null;
  }
  for (const link of document.querySelectorAll("#nav a")) {
    link.classList.toggle("active", link.dataset.page === name);
  }
  document.title = `BDI Edge — ${name[0].toUpperCase()}${name.slice(1)}`;
  clear(root).append(h("p", { class: "muted" }, "Loading…"));
  let page;
  try {
    page = await import(`./pages/${name}.js`);
  } catch (err) {
    clear(root).append(emptyState(`The ${name} page could not be loaded`, String(err.message)));
    showError(err, `loading the ${name} page`);
    return;
  }
  if (mine !== generation) return; // the user moved on meanwhile
  clear(root);
  root.dataset.page = name;
  try {
    const done = await page.mount(root, params, { me, navigate });
    if (mine !== generation) {
      if (typeof done === "function") done();
    } else if (typeof done === "function") {
      leave = done;
    }
  } catch (err) {
    root.append(emptyState(`The ${name} page failed`, err instanceof ApiError ? err.describe() : String(err)));
    showError(err, `the ${name} page`);
  }
}

function renderWho() {
  const box = document.getElementById("who");
  clear(box);
  const label = me.via === "open" ? "open mode (no users yet)" : me.user;
  box.append(
    h("span", { class: "user", "data-testid": "who-user" }, label),
    h("span", { class: `badge role ${me.role}`, "data-testid": "who-role" }, me.role),
  );
  if (me.via === "session") {
    box.append(h("button", { class: "btn small", "data-testid": "logout", onclick: logout }, "Sign out"));
  }
}

async function logout() {
  try {
    await api("POST", "/auth/logout");
  } catch (err) {
    showError(err, "signing out");
    return;
  }
  location.assign("/ui/login");
}

async function start() {
  try {
    me = await api("GET", "/auth/me");
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) {
      clear(root).append(emptyState("The API does not answer", err.message || String(err)));
      showError(err, "who is signed in");
    }
    return; // a 401 went to the login page
  }
  setSession(me);
  renderWho();
  if (me.expires_at) {
    const left = Date.parse(me.expires_at) - Date.now();
    if (left > 0 && left < 2 ** 31) {
      setTimeout(() => toast("The session ended: sign in again"), left);
    }
  }
  window.addEventListener("hashchange", route);
  if (!location.hash) history.replaceState(null, "", "#/line");
  route();
}

start();

// The login form: POST /auth/login, then back to the page the user came for.
import { errorOf } from "./api.js";

const form = document.getElementById("login");
const error = document.getElementById("login-error");

const WHY = {
  session_expired: "Your session has expired: sign in again.",
  unauthorized: "Sign in to continue.",
};
const why = new URLSearchParams(location.search).get("why");
if (why && WHY[why]) error.textContent = WHY[why];

function next() {
  const wanted = new URLSearchParams(location.search).get("next") || "";
  return wanted.startsWith("#/") ? `/ui${wanted}` : "/ui#/line";
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.textContent = "";
  const data = new FormData(form);
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const response = await fetch("/auth/login", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ username: data.get("username"), password: data.get("password") }),
      credentials: "same-origin",
    });
    if (!response.ok) {
      const err = await errorOf(response);
      error.textContent = err.status === 401
        ? "Wrong user name or password (or the user is disabled)."
        : err.describe();
      return;
    }
    location.assign(next());
  } catch (err) {
    error.textContent = `The API does not answer (${err.message}).`;
  } finally {
    button.disabled = false;
  }
});

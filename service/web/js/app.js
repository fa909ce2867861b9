// Starts the dashboard: every page module registers its routes with lib.route, then the router runs.
import { navigate, startRouter, token } from "./lib.js";
import "./jobs.js";
import "./submit.js";
import "./models.js";
import "./compare.js";
import "./reports.js";
import "./bayes.js";

const dialog = document.getElementById("token-dialog");
const input = document.getElementById("token-input");

function askForToken(reason) {
  if (dialog.open) return;
  document.getElementById("token-reason").textContent = reason ?? "This service needs a bearer token. It is kept in this tab only.";
  input.value = token.get() ?? "";
  dialog.showModal();
}

dialog.addEventListener("close", () => {
  if (dialog.returnValue !== "save") return;
  input.value ? token.set(input.value.trim()) : token.clear();
  navigate(location.hash || "#/jobs"); // show the page again, now with the token
});
document.getElementById("sign-in").addEventListener("click", () => askForToken());
window.addEventListener("classcomp:auth", (event) => askForToken(event.detail));

startRouter(document.getElementById("page"), "/jobs");

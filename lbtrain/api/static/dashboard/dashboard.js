// lbtrain dashboard: live updates by short polling and the token-guarded actions. No framework.
// The API token is read from the input (or this tab's sessionStorage if the user asked) and sent
// only as an X-API-Token header on cancel/retry (behind IAP the Authorization header is Google's);
// the server never renders it.
(function () {
  "use strict";
  var TOKEN_KEY = "lbtrain.apiToken";

  function stamp(text) {
    var el = document.getElementById("updated");
    if (el) { el.textContent = text; }
  }

  function startPolling(live) {
    var url = live.getAttribute("data-poll");
    var fast = parseInt(live.getAttribute("data-poll-ms") || "2000", 10);
    var every = fast;
    var version = live.getAttribute("data-version");
    var timer = null;
    var busy = false;

    function poll() {
      if (busy) { return; }
      busy = true;
      fetch(url, { headers: { "Accept": "application/json" }, cache: "no-store" })
        .then(function (resp) {
          if (!resp.ok) { throw new Error("HTTP " + resp.status); }
          return resp.json();
        })
        .then(function (data) {
          if (data.version !== version) {
            live.innerHTML = data.html;
            version = data.version;
            live.setAttribute("data-version", version);
          }
          // A finished run changes only when someone acts on it: poll it 5 times less often.
          var next = data.active === false ? fast * 5 : fast;
          if (next !== every) { every = next; schedule(); }
          stamp("Live: updated " + new Date().toLocaleTimeString() + ".");
        })
        .catch(function (err) { stamp("Live updates paused (" + err.message + "); retrying."); })
        .then(function () { busy = false; });
    }

    function schedule() {
      clearInterval(timer);
      timer = setInterval(function () { if (!document.hidden) { poll(); } }, every);
    }
    document.addEventListener("visibilitychange", function () { if (!document.hidden) { poll(); } });
    live.addEventListener("lbtrain:refresh", poll);
    poll();
    schedule();
  }

  function setupActions(form) {
    var input = document.getElementById("api-token");
    var remember = document.getElementById("remember-token");
    var result = document.getElementById("action-result");
    var saved = null;
    try { saved = window.sessionStorage.getItem(TOKEN_KEY); } catch (e) { saved = null; }
    if (saved) { input.value = saved; remember.checked = true; }
    var chosen = null;
    form.querySelectorAll("button[data-action]").forEach(function (b) {
      b.addEventListener("click", function () { chosen = b.getAttribute("data-action"); });
    });

    function show(ok, text) {
      result.className = ok ? "ok" : "bad";
      result.textContent = text;
    }

    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var action = chosen || (ev.submitter && ev.submitter.getAttribute("data-action"));
      var token = input.value.trim();
      if (!action) { return; }
      if (!token) { show(false, "Enter the API token to " + action + " this run."); input.focus(); return; }
      try {
        if (remember.checked) { window.sessionStorage.setItem(TOKEN_KEY, token); }
        else { window.sessionStorage.removeItem(TOKEN_KEY); }
      } catch (e) { /* storage disabled: the token just isn't remembered */ }
      var buttons = form.querySelectorAll("button");
      buttons.forEach(function (b) { b.disabled = true; });
      show(true, action === "cancel" ? "Cancelling…" : "Retrying…");
      var url = form.getAttribute("data-action-url").replace("ACTION", action);
      fetch(url, { method: "POST", headers: { "X-API-Token": token, "Accept": "application/json" },
                   cache: "no-store" })
        .then(function (resp) {
          return resp.json().catch(function () { return {}; }).then(function (body) { return [resp, body]; });
        })
        .then(function (pair) {
          var resp = pair[0], body = pair[1];
          if (resp.ok) {
            show(true, (action === "cancel" ? "Cancel" : "Retry") + " accepted: run is " + (body.status || "updated") + ".");
          } else if (resp.status === 401) {
            show(false, "Refused (401): " + (body.error || "invalid API token") + ".");
          } else {
            show(false, "Refused (" + resp.status + "): " + (body.error || resp.statusText) + ".");
          }
        })
        .catch(function (err) { show(false, "Request failed: " + err.message); })
        .then(function () {
          buttons.forEach(function (b) { b.disabled = false; });
          chosen = null;
          var live = document.getElementById("live");
          if (live) { live.dispatchEvent(new Event("lbtrain:refresh")); }
        });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var live = document.getElementById("live");
    if (live && window.fetch) { startPolling(live); }
    var form = document.getElementById("actions");
    if (form) { setupActions(form); }
  });
})();

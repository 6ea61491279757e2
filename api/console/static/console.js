// Live progress: every bar with data-poll asks its operation's progress until it is done.
// On an operation's page the page reloads once when the operation ends (to show the outcome).
(function () {
  function poll(bar) {
    var url = bar.getAttribute("data-poll");
    fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (p) {
        if (!p) { return; }
        bar.setAttribute("aria-valuenow", String(p.percent));
        bar.querySelector("span").style.width = p.percent + "%";
        bar.querySelector("em").textContent = p.percent + "%";
        bar.className = "bar " + p.state.toLowerCase();
        var row = bar.closest("tr, main");
        var state = row && row.querySelector("[data-state]");
        if (state) { state.textContent = p.state; state.className = "state " + p.state.toLowerCase(); }
        var text = document.getElementById("progress-text");
        if (text && row.tagName === "MAIN") { text.textContent = p.text + " " + p.message; }
        if (p.done) {
          bar.removeAttribute("data-poll");
          if (bar.closest("[data-reload-when-done]")) { window.location.reload(); }
          return;
        }
        setTimeout(function () { poll(bar); }, 700);
      })
      .catch(function () { setTimeout(function () { poll(bar); }, 2000); });
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-poll]").forEach(function (bar) { setTimeout(function () { poll(bar); }, 300); });
  });
})();

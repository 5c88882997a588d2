// Live refresh of the page's region, and a question before actions that cannot be undone.
(function () {
  "use strict";
  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });
  var region = document.getElementById("live-region");
  if (!region) return;
  var seconds = Number(region.getAttribute("data-live"));
  if (!seconds) return;
  var busy = false;
  var last = null;
  window.setInterval(function () {
    var toggle = document.getElementById("live");
    if (busy || document.hidden || (toggle && !toggle.checked)) return;
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    busy = true;
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html !== null && html !== last) {
          last = html;
          region.innerHTML = html;
          region.setAttribute("data-updated", String(Date.now()));
        }
      })
      .catch(function () { /* the next tick tries again */ })
      .then(function () { busy = false; });
  }, seconds * 1000);
})();

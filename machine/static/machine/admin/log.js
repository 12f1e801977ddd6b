/* The log view opens on the end of a log: show its last lines, not the first of the window. */
document.addEventListener("DOMContentLoaded", function () {
  "use strict";
  var log = document.getElementById("log-text");
  if (log && log.getAttribute("data-scroll-end") === "1") {
    log.scrollTop = log.scrollHeight;
  }
});

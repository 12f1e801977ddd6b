/* Live refresh of state-machine rows in the admin (workers.admin.StateMachineAdminMixin).
 *
 * Cells rendered by live_cell() carry data-live-url, -id, -field and -active. While any cell on the
 * page is active (its row not final), ask the live view for those rows every data-live-interval ms
 * and replace the cells' HTML. On a change page, a row that turns final reloads the page, so the
 * final output and exit code appear. Polling stops when nothing is active or a request fails.
 */
(function () {
  "use strict";

  function activeCells() {
    return Array.prototype.slice.call(document.querySelectorAll('.sm-live[data-live-active="1"]'));
  }

  function poll() {
    var cells = activeCells();
    if (!cells.length) {
      return;
    }
    var byUrl = {};
    cells.forEach(function (cell) {
      var url = cell.getAttribute("data-live-url");
      (byUrl[url] = byUrl[url] || {})[cell.getAttribute("data-live-id")] = true;
    });
    var interval = parseInt(cells[0].getAttribute("data-live-interval"), 10) || 2000;
    var pending = Object.keys(byUrl).map(function (url) {
      var ids = Object.keys(byUrl[url]).join(",");
      return fetch(url + "?ids=" + encodeURIComponent(ids), {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      })
        .then(function (response) {
          if (!response.ok) {
            throw new Error("live view answered " + response.status);
          }
          return response.json();
        })
        .then(function (data) {
          return update(url, data.rows || {});
        });
    });
    Promise.all(pending).then(
      function (results) {
        if (results.indexOf("reload") >= 0) {
          window.location.reload();
          return;
        }
        window.setTimeout(poll, interval);
      },
      function (error) {
        if (window.console) {
          window.console.warn("live refresh stopped:", error);
        }
      }
    );
  }

  function update(url, rows) {
    var reload = false;
    var isChangePage = document.body.classList.contains("change-form");
    document.querySelectorAll('.sm-live[data-live-url="' + url + '"]').forEach(function (cell) {
      var row = rows[cell.getAttribute("data-live-id")];
      if (!row) {
        return;
      }
      var html = row.fields[cell.getAttribute("data-live-field")];
      if (html !== undefined && cell.innerHTML !== html) {
        cell.innerHTML = html;
      }
      if (!row.active && cell.getAttribute("data-live-active") === "1") {
        cell.setAttribute("data-live-active", "0");
        if (isChangePage) {
          reload = true;
        }
      }
    });
    return reload ? "reload" : "ok";
  }

  document.addEventListener("DOMContentLoaded", function () {
    var cells = activeCells();
    if (cells.length) {
      var interval = parseInt(cells[0].getAttribute("data-live-interval"), 10) || 2000;
      window.setTimeout(poll, interval);
    }
  });
})();

/* TinyMLaaS-CI site: renders the embedded Plotly figures and makes tables sortable.
   No network access: Plotly comes from assets/tinymlaas/plotly.min.js on the pages that chart. */
(function () {
  "use strict";

  function renderCharts() {
    if (typeof window.Plotly === "undefined") return;
    var blocks = document.querySelectorAll("script.tm-figure[data-target]");
    Array.prototype.forEach.call(blocks, function (block) {
      var target = document.getElementById(block.getAttribute("data-target"));
      if (!target || target.getAttribute("data-rendered")) return;
      var figure = JSON.parse(block.textContent);
      var config = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["sendDataToCloud"] };
      window.Plotly.newPlot(target, figure.data, figure.layout, config).then(function () {
        target.setAttribute("data-rendered", "true");
      });
      // Points that carry a page link (customdata[0]) open that run's page when clicked.
      target.on && target.on("plotly_click", function (event) {
        var point = event && event.points && event.points[0];
        var link = point && point.customdata && point.customdata[0];
        if (typeof link === "string" && /\.html$/.test(link)) window.location.href = link;
      });
    });
  }

  function cellValue(row, index) {
    var cell = row.cells[index];
    if (!cell) return "";
    return cell.hasAttribute("data-sort") ? cell.getAttribute("data-sort") : cell.textContent.trim();
  }

  function sortTable(table, index, th) {
    var body = table.tBodies[0];
    if (!body) return;
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    var rows = Array.prototype.slice.call(body.rows);
    var numeric = rows.every(function (r) {
      var v = cellValue(r, index);
      return v === "" || !isNaN(parseFloat(v)) && isFinite(v);
    });
    rows.sort(function (a, b) {
      var x = cellValue(a, index), y = cellValue(b, index);
      if (x === "" && y !== "") return 1;  // missing values last, either direction
      if (y === "" && x !== "") return -1;
      var c = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y, undefined, { numeric: true });
      return ascending ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(th.parentNode.children, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }

  function sortableTables() {
    var tables = document.querySelectorAll("table.tm-sortable");
    Array.prototype.forEach.call(tables, function (table) {
      if (!table.tHead) return;
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
        th.setAttribute("tabindex", "0");
        th.setAttribute("role", "button");
        th.title = "Sort by " + th.textContent.trim();
        th.addEventListener("click", function () { sortTable(table, index, th); });
        th.addEventListener("keydown", function (e) {
          if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortTable(table, index, th); }
        });
      });
    });
  }

  function start() { sortableTables(); renderCharts(); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();

// Sluice console: local times, self-refresh while runs move, keyboard shortcuts, form helpers.
// No dependencies; everything works without it except the time range pickers.
(function () {
  "use strict";

  function localizeTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var d = new Date(el.getAttribute("datetime"));
      if (!isNaN(d)) { el.textContent = d.toLocaleString(undefined, {dateStyle: "medium", timeStyle: "medium"}); }
    });
  }

  function busy() {
    var a = document.activeElement;
    if (a && /^(INPUT|TEXTAREA|SELECT)$/.test(a.tagName)) { return true; }
    return document.querySelector("input[name=run_ids]:checked, details[open]") !== null;
  }

  // Refresh the page's content while something on it is still running (body[data-live] = seconds).
  function scheduleRefresh() {
    var secs = parseInt(document.body.getAttribute("data-live") || "0", 10);
    if (!secs) { return; }
    window.setTimeout(function refresh() {
      if (document.hidden || busy()) { window.setTimeout(refresh, secs * 1000); return; }
      fetch(window.location.href, {credentials: "same-origin", headers: {"X-Requested-With": "refresh"}})
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (!html) { return; }
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById("content");
          if (!fresh) { return; }
          document.getElementById("content").innerHTML = fresh.innerHTML;
          document.body.setAttribute("data-live", doc.body.getAttribute("data-live") || "");
          var foot = doc.querySelector(".foot");
          if (foot) { document.querySelector(".foot").innerHTML = foot.innerHTML; }
          enhance(document.getElementById("content"));
          scheduleRefresh();
        })
        .catch(function () { window.setTimeout(refresh, secs * 2000); });
    }, secs * 1000);
  }

  // datetime-local pickers fill the hidden RFC 3339 (UTC) field the API's filter expects.
  function timePickers(root) {
    root.querySelectorAll("input[data-utc-for]").forEach(function (picker) {
      var hidden = picker.form.querySelector("input[name=" + picker.getAttribute("data-utc-for") + "]");
      if (hidden.value) {
        var d = new Date(hidden.value);
        if (!isNaN(d)) {
          var local = new Date(d.getTime() - d.getTimezoneOffset() * 60000);
          picker.value = local.toISOString().slice(0, 19);
        }
      }
      picker.addEventListener("change", function () {
        var v = picker.value ? new Date(picker.value) : null;
        hidden.value = v && !isNaN(v) ? v.toISOString() : "";
      });
    });
  }

  // JSON text areas say at once whether their text parses.
  function jsonEditors(root) {
    root.querySelectorAll("textarea[data-json]").forEach(function (area) {
      var status = area.parentNode.querySelector("[data-json-status]");
      function check() {
        var text = area.value.trim();
        var ok = true, message = "";
        if (text) { try { JSON.parse(text); message = "valid JSON"; } catch (e) { ok = false; message = e.message; } }
        area.classList.toggle("invalid", !ok);
        area.setAttribute("aria-invalid", ok ? "false" : "true");
        if (status) { status.textContent = message; }
      }
      area.addEventListener("input", check);
      check();
    });
  }

  function selection(root) {
    var all = root.querySelector("input[data-select-all]");
    var count = root.querySelector("[data-selected-count]");
    function update() {
      var n = root.querySelectorAll("input[name=run_ids]:checked").length;
      if (count) { count.textContent = n ? n + " selected" : "Select runs to act on them."; }
    }
    if (all) {
      all.addEventListener("change", function () {
        root.querySelectorAll("input[name=run_ids]").forEach(function (box) { box.checked = all.checked; });
        update();
      });
    }
    root.querySelectorAll("input[name=run_ids]").forEach(function (box) { box.addEventListener("change", update); });
  }

  function enhance(root) {
    localizeTimes(root);
    timePickers(root);
    jsonEditors(root);
    selection(root);
  }

  // Keyboard: "g" then j/r/d/f goes to a page; "/" focuses the page's search field.
  var pending = false;
  document.addEventListener("keydown", function (e) {
    var t = e.target;
    if (e.ctrlKey || e.metaKey || e.altKey || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName) || t.isContentEditable) { return; }
    if (e.key === "/") {
      var search = document.querySelector("[data-search]");
      if (search) { e.preventDefault(); search.focus(); }
      return;
    }
    if (pending) {
      pending = false;
      var target = {j: "Jobs", r: "Runs", d: "Dead letters", f: "Fleet"}[e.key];
      if (target) {
        document.querySelectorAll(".top nav a").forEach(function (a) { if (a.textContent === target) { a.click(); } });
      }
      return;
    }
    if (e.key === "g") { pending = true; window.setTimeout(function () { pending = false; }, 1500); }
  });

  document.addEventListener("DOMContentLoaded", function () {
    enhance(document);
    scheduleRefresh();
  });
})();

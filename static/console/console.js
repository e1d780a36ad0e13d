/* The console's small behaviours. Every page works without it; this adds:
 * - live refresh: a `.live-region[data-live="true"]` is re-fetched every 2 s
 *   (same URL, `fragment=1`) and swapped in, until the server says it is no longer live;
 * - trace step selection without a page load (`fragment=detail`), j/k to move;
 * - clickable table rows, auto-submitting selects, copy buttons, "Format JSON".
 */
(function () {
  "use strict";

  var REFRESH_MS = 2000;
  var timer = null;
  var inFlight = false;

  function liveRegion() {
    return document.querySelector(".live-region[data-live]");
  }

  function withParam(href, name, value) {
    var url = new URL(href, window.location.href);
    url.searchParams.set(name, value);
    return url;
  }

  function fetchHtml(url) {
    return fetch(url, {
      credentials: "same-origin",
      headers: { "X-Requested-With": "fetch" },
    }).then(function (resp) {
      if (resp.redirected) {
        // Logged out meanwhile: let the server send us to the login page.
        window.location.reload();
        throw new Error("redirected");
      }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      return resp.text();
    });
  }

  function parseFirstElement(html) {
    var tpl = document.createElement("template");
    tpl.innerHTML = html.trim();
    return tpl.content.firstElementChild;
  }

  /* Keep what the user opened or scrolled while the region is replaced. */
  function carryState(oldEl, newEl) {
    oldEl.querySelectorAll("details[id]").forEach(function (d) {
      var twin = newEl.querySelector("#" + CSS.escape(d.id));
      if (twin) twin.open = d.open;
    });
    var oldDetail = oldEl.querySelector("#step-detail");
    var newDetail = newEl.querySelector("#step-detail");
    if (oldDetail && newDetail) newDetail.scrollTop = oldDetail.scrollTop;
  }

  function scheduleRefresh() {
    window.clearTimeout(timer);
    var region = liveRegion();
    if (!region || region.dataset.live !== "true") return;
    timer = window.setTimeout(refresh, REFRESH_MS);
  }

  function refresh() {
    var region = liveRegion();
    if (!region || inFlight) return;
    if (document.hidden) {
      scheduleRefresh();
      return;
    }
    inFlight = true;
    fetchHtml(withParam(window.location.href, "fragment", "1"))
      .then(function (html) {
        var fresh = parseFirstElement(html);
        var current = liveRegion();
        if (fresh && current) {
          carryState(current, fresh);
          current.replaceWith(fresh);
        }
      })
      .catch(function () {
        /* a network hiccup: try again at the next tick */
      })
      .finally(function () {
        inFlight = false;
        scheduleRefresh();
      });
  }

  /* --- trace: select a step --------------------------------------------------------- */

  function selectStep(row, options) {
    var url = new URL(row.getAttribute("href"), window.location.href);
    window.history.replaceState(null, "", url);
    document.querySelectorAll(".tl-row.selected").forEach(function (r) {
      r.classList.remove("selected");
    });
    row.classList.add("selected");
    if (options && options.scroll) row.scrollIntoView({ block: "nearest" });
    var detail = document.getElementById("step-detail");
    if (detail) detail.classList.add("loading");
    fetchHtml(withParam(url, "fragment", "detail"))
      .then(function (html) {
        var fresh = parseFirstElement(html);
        var current = document.getElementById("step-detail");
        if (fresh && current) current.replaceWith(fresh);
      })
      .catch(function () {
        window.location.href = url.toString();
      });
  }

  function moveSelection(delta) {
    var rows = Array.prototype.slice.call(document.querySelectorAll(".tl-row[data-step]"));
    if (!rows.length) return;
    var index = rows.findIndex(function (r) {
      return r.classList.contains("selected");
    });
    var next = index < 0 ? (delta > 0 ? 0 : rows.length - 1) : index + delta;
    if (next < 0 || next >= rows.length) return;
    selectStep(rows[next], { scroll: true });
  }

  document.addEventListener("click", function (ev) {
    if (ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) {
      return;
    }
    var row = ev.target.closest("a.tl-row[data-step]");
    if (row) {
      ev.preventDefault();
      selectStep(row);
      return;
    }
    var copy = ev.target.closest("[data-copy]");
    if (copy && navigator.clipboard) {
      navigator.clipboard.writeText(copy.dataset.copy).then(function () {
        var label = copy.textContent;
        copy.textContent = "Copied";
        window.setTimeout(function () {
          copy.textContent = label;
        }, 1200);
      });
      return;
    }
    var fmt = ev.target.closest("[data-format-json]");
    if (fmt) {
      var area = document.querySelector(fmt.dataset.formatJson);
      try {
        area.value = JSON.stringify(JSON.parse(area.value), null, 2);
        area.classList.remove("invalid");
      } catch (e) {
        area.classList.add("invalid");
      }
      return;
    }
    var tr = ev.target.closest("tr[data-href]");
    if (tr && !ev.target.closest("a, button, input, select, textarea")) {
      window.location.href = tr.dataset.href;
    }
  });

  document.addEventListener("keydown", function (ev) {
    var target = ev.target;
    var typing = target.closest && target.closest("input, textarea, select, [contenteditable]");
    if (typing) {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey) && target.form) {
        ev.preventDefault();
        target.form.requestSubmit();
      }
      return;
    }
    if (ev.metaKey || ev.ctrlKey || ev.altKey) return;
    if (ev.key === "j") {
      if (document.querySelector(".tl-row[data-step]")) {
        ev.preventDefault();
        moveSelection(1);
      }
    } else if (ev.key === "k") {
      if (document.querySelector(".tl-row[data-step]")) {
        ev.preventDefault();
        moveSelection(-1);
      }
    }
  });

  document.addEventListener("change", function (ev) {
    if (ev.target.matches("select[data-autosubmit]") && ev.target.form) {
      ev.target.form.requestSubmit();
    }
  });

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) scheduleRefresh();
  });

  scheduleRefresh();
})();

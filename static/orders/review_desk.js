// The fraud review's keyboard: a / r choose, Enter confirms, n opens the next review.
// Letters are ignored while typing (the note) or with a modifier held; Enter in the note
// confirms the chosen decision, and does nothing before one is chosen.
(function () {
  "use strict";
  function typing(target) {
    return target.closest("input, textarea, select, [contenteditable]") !== null;
  }
  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("decide-form");
    var next = document.getElementById("next-review");
    var hint = document.getElementById("keys-hint");
    var chosen = null;

    function choose(button) {
      if (!form) return;
      form.querySelectorAll("button[name=decision]").forEach(function (b) {
        b.classList.toggle("chosen", b === button);
        b.setAttribute("aria-pressed", b === button ? "true" : "false");
      });
      chosen = button;
      button.focus();
      if (hint) hint.dataset.chosen = button.value;
    }

    document.addEventListener("keydown", function (event) {
      if (event.altKey || event.ctrlKey || event.metaKey || event.isComposing) return;
      var inField = typing(event.target);
      if (event.key === "Enter") {
        if (form && event.target.id === "id_note") {
          event.preventDefault();
          if (chosen) form.requestSubmit(chosen);
          else if (hint) hint.classList.add("keys-hint-needed");
        }
        return; // Enter on a focused button or link does what it always does
      }
      if (inField) return;
      var key = event.key.toLowerCase();
      if (form && key === "a") {
        event.preventDefault();
        choose(document.getElementById("approve-button"));
      } else if (form && key === "r") {
        event.preventDefault();
        choose(document.getElementById("reject-button"));
      } else if (next && key === "n") {
        event.preventDefault();
        window.location.assign(next.href);
      }
    });
  });
})();

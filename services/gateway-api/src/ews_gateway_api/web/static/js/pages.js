/* Energy web server — the small behaviours the pages declare in HTML attributes (no page logic here):
 *  - [data-autosubmit]: a select or date input submits its form when changed;
 *  - [data-fullscreen="<id>"]: a button that shows that element full screen (and back);
 *  - [data-chart]: drawn by charts.js on the pages that load it.
 * Page content and live refresh are htmx attributes in the templates.
 */
(function () {
  "use strict";
  document.addEventListener("change", function (event) {
    const el = event.target;
    if (el instanceof HTMLElement && el.hasAttribute("data-autosubmit") && el.form) {
      if (el.type === "date" && !el.value) return;
      el.form.requestSubmit();
    }
  });
  document.addEventListener("click", function (event) {
    const button = event.target instanceof Element ? event.target.closest("[data-fullscreen]") : null;
    if (!button) return;
    const target = document.getElementById(button.getAttribute("data-fullscreen"));
    if (!target) return;
    if (document.fullscreenElement) {
      document.exitFullscreen();
    } else if (target.requestFullscreen) {
      target.requestFullscreen().catch(function () { target.classList.toggle("pseudo-fullscreen"); });
    } else {
      target.classList.toggle("pseudo-fullscreen");
    }
  });
  document.addEventListener("fullscreenchange", function () {
    document.querySelectorAll("[data-fullscreen]").forEach(function (b) {
      b.setAttribute("aria-pressed", document.fullscreenElement ? "true" : "false");
    });
    window.dispatchEvent(new Event("resize"));
  });
})();

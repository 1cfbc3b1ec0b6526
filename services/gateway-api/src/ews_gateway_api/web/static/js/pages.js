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

/* configuration (structure) — progressive enhancement of the configuration forms (they work without it):
 *  - [data-show-tag="<select id> <tag>"]: a fieldset shown only while the select's chosen option has
 *    <tag> in its data-tags (gateway transport: ip/serial; device profile: pulse/ev/generic); hidden, its
 *    fields are disabled, so they are not sent (the server ignores them anyway); nothing chosen yet: hidden;
 *  - the current Configuration section (.config-sections) is scrolled into view on narrow screens.
 */
(function () {
  "use strict";
  function tagsOf(select) {
    const option = select.selectedOptions && select.selectedOptions[0];
    if (!option || !option.value) return []; // nothing chosen yet: no group that depends on the choice
    return (option.getAttribute("data-tags") || "").split(/\s+/);
  }
  function update(root) {
    root.querySelectorAll("[data-show-tag]").forEach(function (group) {
      const spec = group.getAttribute("data-show-tag").split(/\s+/);
      const select = document.getElementById(spec[0]);
      if (!select) return;
      const tags = tagsOf(select);
      const show = tags.indexOf(spec[1]) !== -1;
      group.hidden = !show;
      if (group.tagName === "FIELDSET") group.disabled = !show;
    });
  }
  document.addEventListener("change", function (event) {
    const el = event.target;
    if (el instanceof HTMLSelectElement && document.querySelector('[data-show-tag^="' + el.id + ' "]')) {
      update(document);
    }
  });
  function ready() {
    update(document);
    // the current entry of a bar that scrolls sideways on a phone (main navigation, configuration
    // sections) is brought into view
    document.querySelectorAll('.mainnav [aria-current="page"], .config-sections [aria-current="page"]').forEach(function (current) {
      const bar = current.parentElement;
      if (bar.scrollWidth > bar.clientWidth) {
        const left = current.getBoundingClientRect().left - bar.getBoundingClientRect().left + bar.scrollLeft;
        bar.scrollLeft = left - (bar.clientWidth - current.offsetWidth) / 2;
      }
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", ready);
  else ready();
})();

/* configuration (administration) — [data-confirm="<question>"] on a submit button: the form is sent
 * only when the person confirms (without scripts it is sent at once, as the button says). */
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    const button = event.target instanceof Element ? event.target.closest("[data-confirm]") : null;
    if (button && !window.confirm(button.getAttribute("data-confirm"))) event.preventDefault();
  });
})();

/* configuration — [data-copy="<id>"]: a button (hidden without scripts) that copies that element's text
 * (a new machine token) and then says so with its data-copied label; where the clipboard API is not
 * offered (plain http on the LAN), the text is selected and copied the older way. */
(function () {
  "use strict";
  document.querySelectorAll("[data-copy]").forEach(function (button) { button.hidden = false; });
  document.addEventListener("click", function (event) {
    const button = event.target instanceof Element ? event.target.closest("[data-copy]") : null;
    const source = button ? document.getElementById(button.getAttribute("data-copy")) : null;
    if (!source) return;
    const text = source.textContent.trim();
    function done() { button.textContent = button.getAttribute("data-copied") || button.textContent; }
    function fallback() {
      const range = document.createRange();
      range.selectNodeContents(source);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      try { if (document.execCommand("copy")) done(); } catch (e) { /* selected: the person copies it */ }
    }
    if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).then(done, fallback);
    else fallback();
  });
})();

/* multi-site (a hub's pages) — the chosen site stays with the page: <meta name="ews-site"> names it, and
 * every HTMX request, same-site link and form of the page that does not name a site gets ?site=<id> (the
 * ews_site cookie does the same without JavaScript, for the browser's last choice; redirects keep it).
 */
(function () {
  "use strict";
  function chosen() {
    const meta = document.querySelector('meta[name="ews-site"]');
    return meta ? meta.getAttribute("content") : "";
  }
  function withSite(href, site) {
    const url = new URL(href, window.location.href);
    if (url.origin !== window.location.origin || url.searchParams.has("site") || url.pathname.indexOf("/static/") === 0) {
      return null;
    }
    url.searchParams.set("site", site);
    return url.pathname + url.search + url.hash;
  }
  document.addEventListener("htmx:configRequest", function (event) {
    const site = chosen();
    if (!site) return;
    const path = withSite(event.detail.path, site);
    if (path) event.detail.path = path;
  });
  document.addEventListener("click", function (event) {
    const site = chosen();
    const link = site && event.target instanceof Element ? event.target.closest("a[href]") : null;
    if (!link || link.getAttribute("href").charAt(0) === "#") return;
    const href = withSite(link.getAttribute("href"), site);
    if (href) link.setAttribute("href", href);
  });
  document.addEventListener("submit", function (event) {
    const site = chosen();
    const form = event.target;
    if (!site || !(form instanceof HTMLFormElement) || form.elements.namedItem("site")) return;
    if (form.method.toLowerCase() === "get") {
      const url = new URL(form.action, window.location.href);
      if (url.origin !== window.location.origin) return;
      const input = document.createElement("input");
      input.type = "hidden";
      input.name = "site";
      input.value = site;
      form.appendChild(input);
    } else {
      const action = withSite(form.getAttribute("action") || window.location.href, site);
      if (action) form.setAttribute("action", action);
    }
  }, true);
})();

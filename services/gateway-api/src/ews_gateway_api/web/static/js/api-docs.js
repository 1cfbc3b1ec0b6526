/* Energy web server — the API documentation page (/schema): the vendored Swagger UI reading this
 * server's OpenAPI document (the URL is the page's data-spec attribute). The validator badge is off: it
 * would load an image from another host, and the product runs on an offline LAN. "Try it out" calls go
 * to this server with the session cookie of the signed-in browser.
 */
(function () {
  "use strict";
  const root = document.getElementById("swagger-ui");
  window.ui = window.SwaggerUIBundle({
    url: root.getAttribute("data-spec"),
    domNode: root,
    validatorUrl: null,
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    presets: [window.SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
})();

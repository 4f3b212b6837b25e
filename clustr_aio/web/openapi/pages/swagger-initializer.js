// Starts Swagger UI on /docs. A file rather than an inline script: the page's
// Content-Security-Policy runs scripts from this server only.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: new URL("openapi.json", document.baseURI).href,
    dom_id: "#swagger-ui",
    deepLinking: true,
    displayRequestDuration: true,
    // The default sends the document to validator.swagger.io for a badge: not on a closed network.
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});

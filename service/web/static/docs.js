// Swagger UI for /openapi.json, from this server's own copy (no CDN). "Try it out" sends the
// token of this tab's sign-in, when there is one.
"use strict";
window.SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [window.SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  requestInterceptor: (request) => {
    const token = window.Sightline.token();
    if (token && !request.headers.Authorization) request.headers.Authorization = `Bearer ${token}`;
    return request;
  },
});

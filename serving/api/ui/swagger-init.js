// Swagger UI over the API's own schema. validatorUrl null: the default badge calls validator.swagger.io,
// which a self-hosted (often offline) deployment must not depend on.
window.ui = SwaggerUIBundle({
  url: "/schema/openapi.json",
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  persistAuthorization: true,
  tryItOutEnabled: false,
});

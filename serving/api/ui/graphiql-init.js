// GraphiQL over this server's /graphql (same origin). The API key typed into the main UI (kept in
// localStorage) is offered as the default X-API-Key header; the headers tab can change it.
"use strict";
(function () {
  const key = localStorage.getItem("apikey") || "";
  const fetcher = GraphiQL.createFetcher({ url: "/graphql" });
  const example = [
    "# The risk API's GraphQL schema: the same operations as REST (see /docs).",
    "# Run: Ctrl-Enter. API keys: the headers tab, {\"X-API-Key\": \"...\"}.",
    "{",
    "  health { status modelLoaded modelVersion }",
    "}",
    "",
  ].join("\n");
  const root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(React.createElement(GraphiQL, {
    fetcher,
    defaultQuery: example,
    defaultHeaders: key ? JSON.stringify({ "X-API-Key": key }, null, 2) : undefined,
    shouldPersistHeaders: false,
  }));
})();

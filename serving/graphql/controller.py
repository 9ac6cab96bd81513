"""The Litestar controller serving `schema` at /graphql (POST and GET; GraphiQL for browsers).

GraphiQL is strawberry's page, which loads React and GraphiQL from unpkg.com: the rest of the web UI
has no CDN dependency, so the page says so in a banner, and everything works without it (POST
queries to /graphql).
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from strawberry.litestar import make_graphql_controller

from serving.graphql.schema import schema

GRAPHQL_PATH = "/graphql"
CDN_NOTICE = (
    '<div style="font:13px sans-serif;padding:6px 10px;background:#fff3cd;color:#664d03;'
    'border-bottom:1px solid #ffe69c">This GraphiQL page loads its scripts from unpkg.com (a CDN); '
    "the API itself does not need them: POST <code>{query, variables}</code> to "
    f"<code>{GRAPHQL_PATH}</code>. API keys go in the headers tab as "
    '<code>{"X-API-Key": "..."}</code>.</div>'
)


async def graphql_context(request: Request) -> dict[str, Any]:
    """Resolvers reach the process's Services (and the request, for keys) through the context."""
    return {"services": request.app.state.services}


def graphql_controller(graphiql: bool = True) -> type:
    base = make_graphql_controller(
        schema,
        path=GRAPHQL_PATH,
        graphql_ide="graphiql" if graphiql else None,
        context_getter=graphql_context,
        # The schema has no subscriptions, so no WebSocket protocol is offered: a graphql-transport-ws
        # (or graphql-ws) handshake is refused, and every operation goes over HTTP, under the keys,
        # limits and error masking of that path.
        subscription_protocols=(),
    )

    class GraphQLController(base):  # type: ignore[valid-type, misc]
        include_in_schema = False  # GraphQL has its own schema; keep it out of OpenAPI (and schemathesis)
        # No WebSocket route at all (not one that accepts and then closes): the handshake is refused
        # before any GraphQL machinery, rate limit or auth is involved.
        websocket_endpoint = None

        @property
        def graphql_ide_html(self) -> str:
            html = super().graphql_ide_html
            return html.replace("<body>", f"<body>{CDN_NOTICE}", 1)

    return GraphQLController

"""The Litestar controller serving `schema` at /graphql (POST and GET; GraphiQL for browsers).

GraphiQL is the web UI's own page (`serving/api/ui/graphiql.html`) over GraphiQL and React vendored
from the npm registry under `ui/vendor/graphiql`, not strawberry's, which loads them from unpkg.com:
like the rest of the web UI it reaches no host but this server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Request
from strawberry.litestar import make_graphql_controller

from serving.graphql.schema import schema

GRAPHQL_PATH = "/graphql"
GRAPHIQL_PAGE = Path(__file__).resolve().parents[1] / "api" / "ui" / "graphiql.html"


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
            return GRAPHIQL_PAGE.read_text(encoding="utf-8")

    return GraphQLController

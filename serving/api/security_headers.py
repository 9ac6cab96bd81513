"""Browser-facing protections on every HTTP answer: no MIME sniffing, no referrer, no framing, and a
Content-Security-Policy.

The UI (/, /ui/…) and the API docs (/docs → /ui/docs.html) are served from this process only: their
scripts, styles and Swagger UI are vendored under serving/api/ui, so their CSP allows `'self'` and
nothing else (no inline script, no CDN); a page that tried to load from elsewhere would be blocked,
which the browser test checks. API answers get `default-src 'none'` (JSON is never a document).
GraphiQL (GET /graphql in a browser) is the UI's own page over GraphiQL and React vendored from npm
(ui/vendor/graphiql): no CDN and no inline script either; its CSP only adds inline styles (the editor
sets them) and data: fonts (GraphiQL's CSS inlines its fonts).
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

UI_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
GRAPHIQL_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"
COMMON = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


def csp_for(path: str) -> str:
    if path == "/" or path == "/docs" or path.startswith("/ui/"):
        return UI_CSP
    if path.rstrip("/") == "/graphql":
        return GRAPHIQL_CSP
    return API_CSP


class SecurityHeadersMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        extra = [*COMMON, (b"content-security-policy", csp_for(scope.get("path", "")).encode())]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", ())}
                message["headers"] = [*message.get("headers", ()), *(h for h in extra if h[0] not in present)]
            await send(message)

        await next_app(scope, receive, send_with_headers)

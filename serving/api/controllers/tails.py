"""The seed's shape of the history tails: a bare JSON list, newest last, and older pages by `Link`."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from litestar import Request, Response
from litestar.datastructures import ResponseHeader
from litestar.params import Parameter

from serving.api import schemas
from serving.api.operations import TailPage

TailN = Annotated[int, Parameter(ge=1, le=schemas.MAX_TAIL, description="rows per page")]
Before = Annotated[
    int | None,
    Parameter(
        ge=1,
        le=schemas.MAX_ROW_ID,
        description='row id cursor: the rows served before this one (the `rel="next"` Link gives it)',
    ),
]

# Declared for the OpenAPI document only: the header is set per response, when an older page exists.
LINK_HEADER = ResponseHeader(
    name="Link",
    documentation_only=True,
    description='`<path?n=…&before=…>; rel="next"` when older rows exist',
)


def tail_response(request: Request, page: TailPage, n: int) -> Response[list[dict[str, Any]]]:
    """The page newest last; when older rows exist, `Link: <same path?n=…&before=…>; rel="next"`
    (RFC 8288, a relative reference) to read them."""
    headers = {}
    if page.next_before is not None:
        query = urlencode({"n": n, "before": page.next_before})
        headers["Link"] = f'<{request.url.path}?{query}>; rel="next"'
    return Response(page.newest_last, headers=headers)

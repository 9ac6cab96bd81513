"""Domain errors as GraphQL errors with `extensions.code`, and auth checks that raise them.

Resolvers let the operations' domain errors propagate; `DomainErrors` rewrites each located error from
its original exception (codes after Apollo's conventions, where one exists):

- BAD_USER_INPUT: InvalidInputError / UnknownSymbolError, with `extensions.field` (the GraphQL
  argument or input field, camelCase) and `extensions.errors` [{field, message}];
- UNAVAILABLE: no model loaded, or not enough history (REST 503);
- BAD_GATEWAY: neither the store nor the exchange could provide bars (REST 502);
- UNAUTHENTICATED / FORBIDDEN: raised directly by `authorize`;
- GRAPHQL_VALIDATION_FAILED: the document does not fit the schema (missing argument, wrong type), or
  passes a limit of serving.graphql.limits (tokens, aliases, depth);
- BAD_USER_INPUT also for a variable whose value does not fit its type (`NaN` or 2^40 for an `Int`):
  an error raised before any resolver ran is the caller's, never INTERNAL_SERVER_ERROR;
- QUERY_TOO_COSTLY / RATE_LIMITED: raised with their code by serving.graphql.limits;
- INTERNAL_SERVER_ERROR: anything else, with the message masked (it is logged with its traceback).

Every message goes through serving.core.redaction.redact and is clipped to `MAX_MESSAGE_CHARS`: an
error may quote a value the caller sent (a 1 MB string was echoed twice), never at length.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from graphql import GraphQLError
from litestar import Request
from strawberry.extensions import SchemaExtension
from strawberry.utils.str_converters import to_camel_case

from crypto_platform.lib.market.client import ExchangeUnavailableError, UnknownSymbolError
from serving.api.scoring import NotEnoughHistoryError
from serving.api.security import WHERE_THE_KEY_GOES, decide
from serving.api.services import InvalidInputError, Services
from serving.core.auth import READER, Denial, Identity
from serving.core.market import MarketUnavailableError
from serving.core.model_store import ModelUnavailableError
from serving.core.redaction import redact

log = logging.getLogger(__name__)

BAD_USER_INPUT = "BAD_USER_INPUT"
UNAVAILABLE = "UNAVAILABLE"
BAD_GATEWAY = "BAD_GATEWAY"
UNAUTHENTICATED = "UNAUTHENTICATED"
FORBIDDEN = "FORBIDDEN"
VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
INTERNAL = "INTERNAL_SERVER_ERROR"
MAX_MESSAGE_CHARS = 500


def authorize(request: Request, services: Services, role: str = READER) -> Identity | None:
    """`serving.core.auth`'s decision for the request's key (the REST guards' rules), refusals as
    UNAUTHENTICATED (no or unknown key) or FORBIDDEN (role too low)."""
    decision = decide(request, services.keyring, role)
    if decision.allowed:
        return decision.identity
    if decision.forbidden:
        raise GraphQLError(decision.message, extensions={"code": FORBIDDEN})
    message = decision.message
    if decision.denial is Denial.KEY_REQUIRED:
        message = f"{message} ({WHERE_THE_KEY_GOES})"
    raise GraphQLError(message, extensions={"code": UNAUTHENTICATED})


def _input_error(errors: list[dict[str, str]]) -> dict[str, Any]:
    fields = [{"field": to_camel_case(e["key"]), "message": e["message"]} for e in errors]
    return {"code": BAD_USER_INPUT, "field": fields[0]["field"], "errors": fields}


def extensions_for(exc: BaseException) -> dict[str, Any] | None:
    """The extensions of a domain error; None for an unexpected one."""
    if isinstance(exc, InvalidInputError):
        return _input_error(exc.errors)
    if isinstance(exc, UnknownSymbolError):
        return _input_error([{"key": "symbol", "message": str(exc)}])
    if isinstance(exc, ModelUnavailableError | NotEnoughHistoryError):
        return {"code": UNAVAILABLE}
    if isinstance(exc, MarketUnavailableError | ExchangeUnavailableError):
        return {"code": BAD_GATEWAY}
    return None


def _clip(message: str) -> str:
    message = redact(message)
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return f"{message[:MAX_MESSAGE_CHARS]}… ({len(message)} characters)"


def _coded(error: GraphQLError, message: str, extensions: dict[str, Any]) -> GraphQLError:
    return GraphQLError(
        _clip(message),
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions=extensions,
    )


def _rewrite(error: GraphQLError) -> GraphQLError:
    original = error.original_error
    code = (error.extensions or {}).get("code")
    if original is None:  # parse or validation error, a limit, or a refusal raised with its code
        return _coded(error, error.message, {**(error.extensions or {}), "code": code or VALIDATION_FAILED})
    if isinstance(original, GraphQLError) and "code" in (original.extensions or {}):
        return _coded(error, error.message, error.extensions or original.extensions)  # authorize
    extensions = extensions_for(original)
    message = str(original)
    if extensions is None and error.path is None:
        # Not raised by a resolver: variable values coerced before execution (NaN, 2^40 or a
        # string for an Int) -- the caller's input, worded by graphql-core.
        extensions, message = {"code": BAD_USER_INPUT}, error.message
    elif extensions is None:
        log.error("GraphQL resolver failed at %s", error.path, exc_info=original)
        extensions, message = {"code": INTERNAL}, "internal error"
    return _coded(error, message, extensions)


class DomainErrors(SchemaExtension):
    """Gives every error of a result its `extensions.code` (see the module docstring)."""

    def on_operation(self) -> Iterator[None]:
        yield
        result = self.execution_context.result
        if result is not None and result.errors:
            result.errors = [_rewrite(e) for e in result.errors]
        pre = getattr(self.execution_context, "pre_execution_errors", None)
        if pre:
            self.execution_context.pre_execution_errors = [_rewrite(e) for e in pre]


def is_expected(error: GraphQLError) -> bool:
    """Errors that are answers (bad input, no model, auth), not faults: not worth a traceback in the log."""
    original = error.original_error
    return (
        original is None
        or error.path is None  # coercion of the caller's variables, before any resolver ran
        or isinstance(original, GraphQLError)
        or extensions_for(original) is not None
    )

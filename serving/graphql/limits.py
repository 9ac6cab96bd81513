"""Bounded work per GraphQL document, and the document charged what it fetches.

Before anything runs, a document must fit (each refusal is one GraphQL error, no data):
- `MAX_DOCUMENT_CHARS` characters, checked before the parser sees it (`oversized`): graphql-core's
  pure-Python lexer costs ~20 µs a token, so even a token-limited parse of a huge document takes tens of
  milliseconds;
- `MAX_TOKENS` tokens: checked by the parser itself (strawberry's MaxTokensLimiter), so a huge document
  is refused while it is read, before validation walks it;
- `MAX_ALIASES` aliases and `MAX_DEPTH` levels (strawberry's MaxAliasesLimiter, QueryDepthLimiter;
  introspection fields do not count towards depth, so GraphiQL's schema query passes);
- a cost budget (`CostBudget`): each top-level field of the operation is one operation of
  serving.api.operations (as one REST request), at most `MAX_OPERATIONS`; the rows its list fields ask
  for (`ohlcvData.limit`, `signalsTail.n`, defaults as REST's) at most `MAX_ROWS` in all. Refused as
  QUERY_TOO_COSTLY, with the document's cost in `extensions.cost`.

The rate limit counts cost, not requests: the HTTP request has spent one unit in the REST middleware,
and `CostBudget` spends one more per operation beyond the first from the same identity's window, or
answers RATE_LIMITED (with `extensions.retryAfter`) when the window cannot pay for the document.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    ExecutionResult,
    FieldNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)
from graphql.utilities import get_operation_ast, value_from_ast_untyped
from strawberry.extensions import MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter, SchemaExtension

from serving.api import schemas
from serving.api.ratelimit import RATE_LIMIT_STATE_KEY

MAX_TOKENS = 1_000  # graphql-core's introspection query is under 500; 1,000 aliased fields are 5,000+
# The largest legitimate document (10 operations, every field selected) is a few KB.
MAX_DOCUMENT_CHARS = 16_384
MAX_ALIASES = 16
MAX_DEPTH = 8  # the deepest field of the schema (signalsTail.items.explain.featuresTail) is 4
MAX_OPERATIONS = 10
MAX_ROWS = 5 * schemas.MAX_LIMIT
QUERY_TOO_COSTLY = "QUERY_TOO_COSTLY"
RATE_LIMITED = "RATE_LIMITED"

# The list fields and the argument that sizes them: (argument path, default, the operation's maximum).
_ROWS = {
    "ohlcvData": (("input", "limit"), 200, schemas.MAX_LIMIT),
    "signalsTail": (("n",), 50, schemas.MAX_TAIL),
}


@dataclass(frozen=True)
class DocumentCost:
    operations: int
    rows: int

    def as_extension(self) -> dict[str, int]:
        return {"operations": self.operations, "rows": self.rows}


def _top_level_fields(
    selection_set: SelectionSetNode, fragments: dict[str, Any], seen: frozenset[str] = frozenset()
) -> Iterator[FieldNode]:
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            yield selection
        elif isinstance(selection, InlineFragmentNode):
            yield from _top_level_fields(selection.selection_set, fragments, seen)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is not None and name not in seen:  # a fragment cycle is a validation error
                yield from _top_level_fields(fragment.selection_set, fragments, seen | {name})


def _requested_rows(field: FieldNode, variables: dict[str, Any]) -> int:
    spec = _ROWS.get(field.name.value)
    if spec is None:
        return 0
    (path, default, most) = spec
    arguments = {a.name.value: value_from_ast_untyped(a.value, variables) for a in field.arguments or ()}
    value: Any = arguments
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0  # not a number: coercion refuses it before anything runs
    # Past the maximum the operation refuses the value itself (BAD_USER_INPUT), fetching nothing.
    return int(min(max(value, 0), most)) if value == value else 0


def document_cost(
    document: DocumentNode, operation_name: str | None, variables: dict[str, Any] | None
) -> DocumentCost:
    """Operations and rows the operation of `document` that would run asks for."""
    operation = get_operation_ast(document, operation_name)
    if not isinstance(operation, OperationDefinitionNode):
        return DocumentCost(0, 0)
    fragments = {
        d.name.value: d for d in document.definitions if getattr(d, "kind", "") == "fragment_definition"
    }
    fields = [
        f for f in _top_level_fields(operation.selection_set, fragments) if not f.name.value.startswith("__")
    ]
    rows = sum(_requested_rows(f, variables or {}) for f in fields)
    return DocumentCost(len(fields), rows)


def _refusal(message: str, extensions: dict[str, Any]) -> ExecutionResult:
    return ExecutionResult(data=None, errors=[GraphQLError(message, extensions=extensions)])


class CostBudget(SchemaExtension):
    """Refuses a document over the budget, then charges its operations to the caller's rate limit."""

    def on_execute(self) -> Iterator[None]:
        context = self.execution_context
        if context.graphql_document is not None and context.result is None:
            cost = document_cost(context.graphql_document, context.operation_name, context.variables)
            if cost.operations > MAX_OPERATIONS or cost.rows > MAX_ROWS:
                context.result = _refusal(
                    f"the document runs {cost.operations} operations for {cost.rows} rows; at most "
                    f"{MAX_OPERATIONS} operations and {MAX_ROWS} rows per document",
                    {"code": QUERY_TOO_COSTLY, "cost": cost.as_extension()},
                )
            else:
                context.result = self._charge(cost)
        yield

    def _charge(self, cost: DocumentCost) -> ExecutionResult | None:
        request = (self.execution_context.context or {}).get("request")
        services = (self.execution_context.context or {}).get("services")
        if request is None or services is None or cost.operations <= 1:
            return None
        identity = request.scope.get("state", {}).get(RATE_LIMIT_STATE_KEY)
        if identity is None:  # the rate limit is off (no middleware named the caller)
            return None
        budget = services.limiter.charge(identity, cost.operations - 1)
        if budget.allowed:
            return None
        return _refusal(
            f"rate limit of {budget.limit} operations per minute reached; this document runs "
            f"{cost.operations}; retry in {budget.retry_after_s} s",
            {"code": RATE_LIMITED, "retryAfter": budget.retry_after_s, "cost": cost.as_extension()},
        )


def oversized(query: str | None) -> ExecutionResult | None:
    """The refusal of a document too long to parse at all; None when it may be parsed."""
    if query is None or len(query) <= MAX_DOCUMENT_CHARS:
        return None
    return _refusal(
        f"the document is {len(query)} characters long; at most {MAX_DOCUMENT_CHARS}",
        {"code": "GRAPHQL_VALIDATION_FAILED"},
    )


def limit_extensions() -> list[Any]:
    return [
        MaxTokensLimiter(max_token_count=MAX_TOKENS),
        MaxAliasesLimiter(max_alias_count=MAX_ALIASES),
        QueryDepthLimiter(max_depth=MAX_DEPTH),
        CostBudget,
    ]

"""Pre-encoded ml-signal answers: the JSON body encoded once per (symbol, bar, model version, options),
with only the request time spliced in per request.

Between two bar closes every ml-signal answer for a symbol is the same document except for `timestamp`
and `ml_prediction.prediction_timestamp` (both "now"). Building the response struct, converting it for
the history and encoding it twice (response and history payload) was most of the handler's time under
load, so the answer is built once, by the same code that builds it for GraphQL and gRPC
(`operations.ml_signal_response`), with a placeholder for "now"; msgspec encodes it and the bytes are
split around the placeholder. A request joins the pieces with the current time: the body and the
history payload are those bytes. The history row's columns are taken from the same struct, once.

The cache is keyed by the snapshot's own identity key plus the model (name, version, run id) and the
request options, so a new bar, a new model or another exchange / include_heuristic gives a new entry;
entries are bounded and the oldest evicted.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import msgspec

from serving.api import schemas

# Never a real value: it is what the answer carries for "now" until a request splices the time in.
NOW_PLACEHOLDER = "\x00now\x00"
_QUOTED_PLACEHOLDER = msgspec.json.encode(NOW_PLACEHOLDER)
MAX_ENTRIES = 256
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class EncodedAnswer:
    """An ml-signal answer as JSON pieces around its "now" fields, and its history row."""

    pieces: tuple[bytes, ...]
    history_row: dict[str, Any]
    symbol: str
    model_version: str

    @classmethod
    def of(cls, response: schemas.MLSignalResponse, history_row: dict[str, Any]) -> EncodedAnswer:
        pieces = tuple(_encode(response).split(_QUOTED_PLACEHOLDER))
        return cls(pieces, history_row, response.symbol, response.model_version)

    def render(self, now: str) -> bytes:
        """The body with every "now" field set to `now` (an ISO-8601 string: no JSON escaping needed)."""
        return f'"{now}"'.encode().join(self.pieces)


class EncodedAnswers:
    """The bounded cache of EncodedAnswer, oldest first out."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, EncodedAnswer] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, build: Callable[[], EncodedAnswer]) -> EncodedAnswer:
        answer = self._entries.get(key)
        if answer is None:
            answer = build()  # raises as the uncached path would (no model output, not enough history)
            with self._lock:
                self._entries[key] = answer
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
        return answer

    def __len__(self) -> int:
        return len(self._entries)

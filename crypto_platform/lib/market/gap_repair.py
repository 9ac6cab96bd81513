"""The gap-repair ledger: which stored partitions miss closed bars, when to ask again, when to stop.

A partition whose last fetch left closed bars out is asked for again at once, then after 1 h, 2 h, …
(`backoff_s` doubling per attempt). When `max_attempts` repairs have not filled it and the last
back-off has run out, the ledger gives up: the bars are not on the exchange (a real outage), and the
partition stays a reported gap instead of being fetched forever. A later materialisation that holds
every bar (whoever made it) clears the entry.

Pure and JSON-serialisable: the Dagster sensor keeps it in its cursor, so what was tried survives
daemon restarts, and tests drive it with any clock.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BACKOFF_S = 3600.0
CURSOR_VERSION = 1


@dataclass
class GapEntry:
    missing_bars: int
    first_seen_ms: int
    attempts: int = 0
    # Not asked for again before this instant (ms, market clock).
    next_attempt_ms: int = 0
    given_up: bool = False


@dataclass
class GapLedger:
    """Gaps by partition key, plus the storage id of the last materialisation read."""

    after_storage_id: int = 0
    gaps: dict[str, GapEntry] = field(default_factory=dict)
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_s: float = DEFAULT_BACKOFF_S

    # --- reading materialisations ----------------------------------------------------------------
    def observe(self, partition: str, missing_bars: int, now_ms: int) -> None:
        """A new materialisation of `partition` left `missing_bars` closed bars out."""
        if missing_bars <= 0:
            self.gaps.pop(partition, None)
            return
        entry = self.gaps.get(partition)
        if entry is None:
            self.gaps[partition] = GapEntry(
                missing_bars=missing_bars, first_seen_ms=now_ms, next_attempt_ms=now_ms
            )
        else:
            # Attempts are kept: a refresh that re-fetched the day is as good a try as a repair.
            entry.missing_bars = missing_bars

    # --- deciding ----------------------------------------------------------------------------------
    def due(self, now_ms: int, limit: int, slack_s: float = 0.0) -> tuple[list[str], list[str]]:
        """(partitions to request now, oldest first, at most `limit`; partitions given up on just now).

        `slack_s`: an entry due that soon counts as due now. A back-off is measured from the instant of
        the request, and the tick that should honour it comes a few seconds early or late; without slack
        an hour's back-off checked hourly would wait two.
        """
        given_up = []
        ready = []
        horizon = now_ms + int(slack_s * 1000)
        for partition, entry in sorted(self.gaps.items(), key=lambda kv: (kv[1].next_attempt_ms, kv[0])):
            if entry.given_up or horizon < entry.next_attempt_ms:
                continue
            if entry.attempts >= self.max_attempts:
                entry.given_up = True
                given_up.append(partition)
            else:
                ready.append(partition)
        return ready[:limit], given_up

    def requested(self, partition: str, now_ms: int) -> None:
        entry = self.gaps[partition]
        entry.attempts += 1
        entry.next_attempt_ms = now_ms + int(self.backoff_s * 1000 * 2 ** (entry.attempts - 1))

    def open_gaps(self) -> dict[str, GapEntry]:
        return {k: v for k, v in self.gaps.items() if not v.given_up}

    def reported_gaps(self) -> dict[str, GapEntry]:
        """Gaps given up on: the exchange does not have the bars."""
        return {k: v for k, v in self.gaps.items() if v.given_up}

    # --- cursor ------------------------------------------------------------------------------------
    def to_cursor(self) -> str:
        return json.dumps(
            {
                "version": CURSOR_VERSION,
                "after_storage_id": self.after_storage_id,
                "gaps": {k: asdict(v) for k, v in sorted(self.gaps.items())},
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_cursor(
        cls,
        cursor: str | None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        backoff_s: float = DEFAULT_BACKOFF_S,
    ) -> GapLedger:
        """The ledger a cursor holds; an empty or unreadable cursor starts over from the first event."""
        ledger = cls(max_attempts=max_attempts, backoff_s=backoff_s)
        if not cursor:
            return ledger
        try:
            data: dict[str, Any] = json.loads(cursor)
            if data.get("version") != CURSOR_VERSION:
                return ledger
            ledger.after_storage_id = int(data["after_storage_id"])
            ledger.gaps = {str(k): GapEntry(**v) for k, v in data["gaps"].items()}
        except (ValueError, KeyError, TypeError):
            return cls(max_attempts=max_attempts, backoff_s=backoff_s)
        return ledger

"""OHLCV and tickers from an exchange through ccxt: paginated, retried, open candle dropped, gaps kept.

Request cost of `fetch_ohlcv` (Binance answers at most 1000 klines per request): a range holding N
closed bars with no gaps costs exactly ceil(N / 1000) klines requests. Paging stops when a page
reaches the end of the range (or the last closed bar, if the range reaches "now") or comes back
short, so no trailing empty request is made. Gaps (exchange outages) never add requests: each page
still carries up to 1000 bars that exist, so a range with holes costs ceil(present / 1000)
requests, plus one empty request in the single case where the bars present are an exact multiple
of 1000 and the range ends inside a gap (the client cannot tell the range is exhausted without
asking).

Retries: network errors, timeouts, 429/418 (honouring Retry-After) and 5xx are retried with
exponential backoff and full jitter, within a total time budget and a maximum number of attempts;
then `ExchangeUnavailableError`. Errors that retrying cannot fix (bad symbol, bad request) raise at
once.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import ccxt
import polars as pl

from crypto_platform.lib.market.schema import OHLCV_COLUMNS, Gap, empty_ohlcv, find_gaps, normalize_ohlcv
from crypto_platform.lib.market.symbols import InvalidSymbolError, normalize_symbol
from crypto_platform.lib.market.timeframes import timeframe_ms, validate_timeframe
from crypto_platform.settings import Settings, get_settings

log = logging.getLogger(__name__)

T = TypeVar("T")

# Exchanges the platform may talk to. An explicit map: the exchange id comes from configuration,
# and getattr(ccxt, name) on it would instantiate whatever class that name happens to match.
SUPPORTED_EXCHANGES: dict[str, type[ccxt.Exchange]] = {"binance": ccxt.binance}
KLINES_PAGE_LIMIT = 1000  # Binance's maximum klines per request
CLOCK_OFFSET_TTL_S = 300.0  # how long a measured exchange-clock offset is trusted


class ExchangeUnavailableError(RuntimeError):
    """The exchange could not be reached, or kept failing, within the retry budget."""

    def __init__(self, message: str, *, url: str, attempts: int, last_error: BaseException | None) -> None:
        super().__init__(message)
        self.url = url
        self.attempts = attempts
        self.last_error = last_error


class UnknownSymbolError(InvalidSymbolError):
    """A well-formed symbol that the exchange does not list (ccxt BadSymbol)."""


@dataclass(frozen=True)
class FetchResult:
    """Closed bars of [since, until), typed and sorted; `requests` counts klines requests only."""

    frame: pl.DataFrame
    requests: int
    retries: int
    gaps: list[Gap] = field(default_factory=list)
    dropped_open_candle: bool = False
    # The exchange's clock the bars were cut at: bars opening at or after `now_ms // bar * bar` were
    # still open (or not yet traded), so a range reaching past it was only covered up to there.
    now_ms: int | None = None


def _http_response(exc: BaseException) -> Any | None:
    """The `requests` response behind a ccxt error, if there was one.

    ccxt raises its errors inside `except HTTPError`, so the HTTPError (and its response: status,
    headers) is on the exception's __context__ chain even where ccxt does not map the status.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        response = getattr(current, "response", None)
        if response is not None and hasattr(response, "status_code"):
            return response
        current = current.__cause__ or current.__context__
    return None


def _describe(exc: BaseException) -> str:
    """`Type: message`, plus the innermost cause (e.g. "Connection refused"), which ccxt's text omits."""
    text = f"{type(exc).__name__}: {exc}"
    seen = {id(exc)}
    inner: BaseException = exc
    while (nxt := inner.__cause__ or inner.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        inner = nxt
    if inner is not exc:
        text += f" (cause: {type(inner).__name__}: {str(inner)[:300]})"
    return text


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After in seconds: an integer (what Binance sends) or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def is_retryable(exc: BaseException) -> bool:
    """Transient failures: ccxt's OperationFailed family (network errors, timeouts, 429/418, most 5xx)
    plus any 5xx that ccxt maps to a generic ExchangeError (e.g. Binance's 503 with code -1008)."""
    if isinstance(exc, ccxt.OperationFailed):
        return True
    response = _http_response(exc)
    return response is not None and (response.status_code >= 500 or response.status_code in (418, 429))


def _point_api_at(exchange: ccxt.Exchange, api_url: str) -> None:
    """Send every REST call to `api_url`, keeping each endpoint family's path (/api/v3, /sapi/v1, …).

    All entries are rewritten, not just the spot ones, so no call can leave for the real exchange.
    """
    base = api_url.rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"exchange API URL must be http(s)://host[:port], got {api_url!r}")
    rewritten = {}
    for name, url in exchange.urls["api"].items():
        if not isinstance(url, str):
            raise ValueError(f"{exchange.id}: cannot redirect API entry {name!r} ({url!r})")
        rewritten[name] = base + urlsplit(url).path
    exchange.urls["api"] = rewritten


class SharedThrottle:
    """Spaces requests from any number of threads: each waits until `spacing_ms` after the previous
    request's slot (ccxt's own limiter does the same per instance, which threads would multiply)."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
    ):
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_free_s = 0.0

    def wait(self, spacing_ms: float) -> None:
        with self._lock:
            now = self._clock()
            slot = max(now, self._next_free_s)
            self._next_free_s = slot + spacing_ms / 1000.0
        if slot > now:
            self._sleep(slot - now)


class ExchangeClient:
    """One ccxt exchange with the platform's paging and retry policy. Thread-safe; markets load once.

    Threads call concurrently (a run fetching many symbols): ccxt keeps per-request state (last
    response headers, its session) on the instance, so each call checks an instance out of a small
    pool, and one `SharedThrottle` paces every instance by the exchange's `rateLimit` × the
    request's cost, so N threads send no more than one thread would be allowed to. One client per
    process is what `get_exchange_client` hands out, so the limit is per process.
    """

    def __init__(
        self,
        exchange_id: str = "binance",
        api_url: str | None = None,
        *,
        timeout_ms: int = 10_000,
        retry_budget_s: float = 60.0,
        max_attempts: int = 8,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        enable_rate_limit: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        exchange_id = exchange_id.strip().lower()
        exchange_class = SUPPORTED_EXCHANGES.get(exchange_id)
        if exchange_class is None:
            raise ValueError(
                f"exchange {exchange_id!r} is not supported; use one of {', '.join(SUPPORTED_EXCHANGES)}"
            )
        if max_attempts < 1 or retry_budget_s < 0 or backoff_base_s < 0:
            raise ValueError("max_attempts must be ≥ 1 and the retry budget and backoff ≥ 0")
        self.exchange_id = exchange_id
        self.api_url = api_url.rstrip("/") if api_url else None
        self.timeout_ms = timeout_ms
        self.retry_budget_s = retry_budget_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._exchange_class = exchange_class
        self._enable_rate_limit = enable_rate_limit
        # One limiter for every ccxt instance of this client: the exchange counts the process's
        # requests together, however many threads send them.
        self._throttle = SharedThrottle()
        self._lock = threading.RLock()
        self._exchange = self._new_exchange()
        # ccxt instances not in use by a thread (ccxt's request state is per instance, so two threads
        # never share one); they keep their HTTP connections between calls and runs.
        self._idle: list[ccxt.Exchange] = [self._exchange]
        self._markets_lock = threading.Lock()
        self._markets_loaded = False
        self._markets: dict[str, Any] = {}
        self._currencies: dict[str, Any] = {}
        self._clock_lock = threading.Lock()
        self._clock_offset_ms: int | None = None
        self._clock_measured_at = 0.0

    def _new_exchange(self) -> ccxt.Exchange:
        exchange = self._exchange_class(
            {"enableRateLimit": self._enable_rate_limit, "timeout": self.timeout_ms}
        )
        # Spot only: the platform trades spot pairs, and without this Binance's load_markets also
        # calls the USD-M and COIN-M futures exchangeInfo endpoints (two extra hosts to reach).
        exchange.options["fetchMarkets"] = {**exchange.options["fetchMarkets"], "types": ["spot"]}
        if self.api_url:
            _point_api_at(exchange, self.api_url)
        # ccxt computes each request's cost (Binance weights klines by `limit`) and calls `throttle`;
        # the shared limiter spaces the requests of all instances by `rateLimit` × cost.
        exchange.throttle = lambda cost=None, rate_limit_ms=exchange.rateLimit: self._throttle.wait(
            rate_limit_ms * (1 if cost is None else cost)
        )
        return exchange

    @contextmanager
    def _checked_out(self) -> Iterator[ccxt.Exchange]:
        """A ccxt instance for this thread alone while the call runs (a new one if all are busy)."""
        with self._lock:
            exchange = self._idle.pop() if self._idle else None
            markets, currencies = self._markets, self._currencies
        if exchange is None:
            exchange = self._new_exchange()
        if markets and not exchange.markets:
            exchange.set_markets(markets, currencies)
        try:
            yield exchange
        finally:
            with self._lock:
                self._idle.append(exchange)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **kwargs: Any) -> ExchangeClient:
        settings = settings or get_settings()
        return cls(
            settings.exchange,
            settings.exchange_api_url,
            timeout_ms=settings.exchange_timeout_ms,
            retry_budget_s=settings.exchange_retry_budget_s,
            **kwargs,
        )

    @property
    def url(self) -> str:
        """Where requests go (for messages): the override, or the exchange's public API URL."""
        return self.api_url or str(self._exchange.urls["api"].get("public", self._exchange.urls.get("www")))

    @property
    def config_key(self) -> tuple[str, str]:
        return (self.exchange_id, self.url)

    # --- retry policy --------------------------------------------------------------------------
    def _backoff_s(self, attempt: int, exc: BaseException, exchange: ccxt.Exchange) -> float:
        """Full jitter (uniform in [0, base·2^(n−1)] capped), but never shorter than a Retry-After."""
        with self._lock:  # random.Random is shared by the client's threads
            jittered = self._rng.uniform(
                0.0, min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
            )
        response = _http_response(exc)
        headers = response.headers if response is not None else exchange.last_response_headers
        retry_after = _retry_after_s(headers.get("Retry-After")) if headers else None
        return jittered if retry_after is None else max(retry_after, jittered)

    def _call(
        self, what: str, fn: Callable[[ccxt.Exchange], T], budget_s: float | None = None
    ) -> tuple[T, int]:
        """Run one ccxt call (`fn` gets the instance to call) under the retry policy.

        Returns (result, retries used). Calls from several threads run at the same time, each on its
        own ccxt instance, paced together by the shared rate limiter.
        """
        budget = self.retry_budget_s if budget_s is None else budget_s
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            with self._checked_out() as exchange:
                try:
                    # Cleared so a failure without an answer (refused connection) cannot pick up
                    # the Retry-After of an earlier response.
                    exchange.last_response_headers = None
                    return fn(exchange), attempt - 1
                except ccxt.BadSymbol as exc:
                    raise UnknownSymbolError(
                        f"{what}: {self.exchange_id} at {self.url} rejected the symbol: {exc}"
                    ) from exc
                except ccxt.BaseError as exc:
                    if not is_retryable(exc):
                        raise
                    delay = self._backoff_s(attempt, exc, exchange)
                    # `exc` is unbound after the except clause; the wait happens outside it so the
                    # ccxt instance goes back to the pool instead of sleeping checked out.
                    failure: ccxt.BaseError = exc
            elapsed = time.monotonic() - started
            if attempt >= self.max_attempts or elapsed + delay > budget:
                reason = (
                    f"{attempt} attempt(s), the maximum"
                    if attempt >= self.max_attempts
                    else f"{attempt} attempt(s) in {elapsed:.1f}s; the next wait ({delay:.1f}s) "
                    f"would pass the {budget:g}s retry budget"
                )
                raise ExchangeUnavailableError(
                    f"{self.exchange_id} at {self.url} is unavailable: {what} failed after {reason}. "
                    f"Last error: {_describe(failure)}",
                    url=self.url,
                    attempts=attempt,
                    last_error=failure,
                ) from failure
            log.warning(
                "%s at %s: %s failed (%s: %s); retry %d of at most %d in %.2fs",
                self.exchange_id, self.url, what, type(failure).__name__, failure, attempt,
                self.max_attempts - 1, delay,
            )  # fmt: skip
            self._sleep(delay)

    # --- markets and clock ---------------------------------------------------------------------
    def load_markets(self, budget_s: float | None = None) -> int:
        """Load the exchange's markets once per client; returns the retries it took (0 if cached)."""
        # Held through the load: threads arriving meanwhile wait for the one load instead of repeating it.
        with self._markets_lock:
            if self._markets_loaded:
                return 0
            _, retries = self._call("load_markets", self._load_markets_into, budget_s)
            return retries

    def _load_markets_into(self, exchange: ccxt.Exchange) -> None:
        exchange.load_markets()
        with self._lock:
            # Kept on the client: every other instance is given them instead of loading them itself.
            self._markets, self._currencies = exchange.markets, exchange.currencies
            self._markets_loaded = True

    def probe(self, budget_s: float) -> None:
        """Check the exchange answers, spending at most about `budget_s` (auto mode's one try)."""
        self.load_markets(budget_s=budget_s)

    def symbols(self) -> list[str]:
        self.load_markets()
        return sorted(self._markets)

    def _market_symbol(self, symbol: str) -> str:
        unified = normalize_symbol(symbol)
        if unified not in self._markets:
            raise UnknownSymbolError(f"{unified} is not listed on {self.exchange_id} ({self.url})")
        return unified

    def now_ms(self) -> int:
        """The exchange's current time in ms (see `_exchange_now`)."""
        return self._exchange_now()[0]

    def _exchange_now(self) -> tuple[int, int]:
        """The exchange's current time (ms) and the retries it took.

        The exchange decides which candle is still open, so its clock is used, not the host's: the
        offset is measured with one /time request and applied to the local clock, re-measured after
        `CLOCK_OFFSET_TTL_S` (clocks drift; a replay server's clock can be moved). For a replay
        server frozen in the past this is what makes "now" the replayed instant.
        """
        retries = 0
        # Held through the measurement: threads fetching symbols at once share one /time request.
        with self._clock_lock:
            stale = time.monotonic() - self._clock_measured_at > CLOCK_OFFSET_TTL_S
            if self._clock_offset_ms is None or stale:
                before = time.time() * 1000
                server_ms, retries = self._call("fetch_time", lambda exchange: exchange.fetch_time())
                after = time.time() * 1000
                self._clock_offset_ms = int(server_ms - (before + after) / 2)
                self._clock_measured_at = time.monotonic()
            offset_ms = self._clock_offset_ms
        return int(time.time() * 1000) + offset_ms, retries

    # --- data ------------------------------------------------------------------------------------
    def fetch_ohlcv(
        self,
        symbol: str,
        timeframe: str,
        since_ms: int,
        until_ms: int | None = None,
        now_ms: int | None = None,
    ) -> FetchResult:
        """Closed bars with ts in [since_ms, until_ms) (until defaults to now), 1000 per request.

        The candle still open at `now_ms` (default: the exchange's clock) is dropped. Missing bars
        are reported in `gaps` and never filled.
        """
        tf = validate_timeframe(timeframe)
        bar_ms = timeframe_ms(tf)
        unified = normalize_symbol(symbol)
        retries = self.load_markets()
        unified = self._market_symbol(unified)
        if now_ms is None:
            now_ms, clock_retries = self._exchange_now()
            retries += clock_retries
        end_ms = now_ms if until_ms is None else until_ms
        # Paging stops at the last closed bar: a request for the open candle alone would only
        # fetch a bar that is dropped. The exchange may still send the open candle when a gap
        # leaves room in the last page (endTime is the caller's `until`); it is dropped below.
        stop_ms = min(end_ms, now_ms // bar_ms * bar_ms)
        rows: list[list[Any]] = []
        requests = 0
        cursor = since_ms
        while cursor < stop_ms:
            # Ask for no more bars than the range can hold: the answer then carries no bar that would
            # be thrown away (a gap-free range never gets the open candle), and exchanges that weigh
            # klines by `limit` (Binance's futures APIs) charge a one-day partition less.
            limit = min(KLINES_PAGE_LIMIT, -(-(stop_ms - cursor) // bar_ms))
            page, page_retries = self._call(
                f"fetch_ohlcv({unified}, {tf}, since={cursor})",
                lambda exchange, since=cursor, limit=limit: exchange.fetch_ohlcv(
                    unified, tf, since=since, limit=limit, params={"until": end_ms - 1}
                ),
            )
            requests += 1
            retries += page_retries
            if not page:
                break
            rows.extend(page)
            last_ts = int(page[-1][0])
            if len(page) < limit or last_ts + bar_ms >= stop_ms:
                break
            if last_ts < cursor:  # an exchange paging backwards would loop forever
                raise RuntimeError(f"{self.exchange_id} returned bars before the requested start {cursor}")
            cursor = last_ts + bar_ms

        frame = self._to_frame(rows).filter((pl.col("ts") >= since_ms) & (pl.col("ts") < end_ms))
        is_open = pl.col("ts") + bar_ms > now_ms
        dropped_open_candle = frame.select(is_open.any()).item() if frame.height else False
        frame = frame.filter(~is_open)
        return FetchResult(
            frame=frame,
            requests=requests,
            retries=retries,
            gaps=find_gaps(frame, bar_ms),
            dropped_open_candle=bool(dropped_open_candle),
            now_ms=now_ms,
        )

    @staticmethod
    def _to_frame(rows: list[list[Any]]) -> pl.DataFrame:
        if not rows:
            return empty_ohlcv()
        frame = pl.DataFrame(
            [row[:6] for row in rows],
            schema={name: (pl.Int64 if name == "ts" else pl.Float64) for name in OHLCV_COLUMNS},
            orient="row",
        )
        return normalize_ohlcv(frame)

    def fetch_ticker(self, symbol: str) -> dict[str, Any]:
        """ccxt's unified ticker (last, bid, ask, high, low, baseVolume, timestamp, …) without `info`."""
        unified = normalize_symbol(symbol)
        retries = self.load_markets()
        unified = self._market_symbol(unified)
        ticker, more = self._call(f"fetch_ticker({unified})", lambda exchange: exchange.fetch_ticker(unified))
        if retries + more:
            log.info("fetch_ticker(%s) needed %d retries", unified, retries + more)
        return {k: v for k, v in ticker.items() if k != "info"}


_clients: dict[tuple[str, str | None, int, float], ExchangeClient] = {}
_clients_lock = threading.Lock()


def get_exchange_client(settings: Settings | None = None) -> ExchangeClient:
    """The process's shared client for this exchange configuration (markets loaded once per process)."""
    settings = settings or get_settings()
    key = (
        settings.exchange,
        settings.exchange_api_url,
        settings.exchange_timeout_ms,
        settings.exchange_retry_budget_s,
    )
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = ExchangeClient.from_settings(settings)
        return client


def clear_exchange_clients() -> None:
    """Forget the shared clients (tests, or after the configuration changed)."""
    with _clients_lock:
        _clients.clear()

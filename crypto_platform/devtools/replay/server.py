"""A Binance-compatible exchange replay server for development and tests.

Serves the spot REST endpoints ccxt's `binance` calls to load markets, page through klines and read
tickers (`/api/v3/exchangeInfo`, `/api/v3/klines`, `/api/v3/ticker/24hr`, `/api/v3/ticker/price`,
`/api/v3/time`, `/api/v3/ping`) from files of real candles or from the simulator, so the real client
stack (ccxt over HTTP) runs offline. Binance's rules that matter to a client are kept: at most 1000
klines per answer, `startTime`/`endTime` inclusive, bars after "now" never served, Binance's error
codes for bad symbols and intervals.

Test hooks live under `/__replay__/`: `GET stats` (requests per endpoint), `POST reset`,
`GET|POST faults` (inject 429/418/5xx/slow answers, to one endpoint or one symbol; toggle the open
candle), `GET|POST clock`,
`GET|POST outages` (bars of a symbol and time range the exchange does not have, as in a real outage:
klines skip them the way Binance does, and lifting the outage is the exchange back-filling them late).

Stdlib `ThreadingHTTPServer`: no dependency, and fast enough for a local client (a 1000-bar page is
about a millisecond of formatting).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import polars as pl

from crypto_platform.devtools.replay import binance
from crypto_platform.devtools.replay.binance import BinanceError
from crypto_platform.devtools.replay.faults import FaultPlan, FaultRule, FaultSpecError, fault_response
from crypto_platform.lib.market.bar_store import (
    BarStore,
    CombinedBarStore,
    FileBarStore,
    SimulatedBarStore,
    UnsupportedIntervalError,
)
from crypto_platform.lib.market.schema import empty_ohlcv
from crypto_platform.lib.market.timeframes import HOUR_MS, TIMEFRAME_MS, parse_instant

log = logging.getLogger(__name__)

CONTROL_PREFIX = "/__replay__/"
DAY_MS = 24 * HOUR_MS


def _int_param(params: dict[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 20:
        raise binance.illegal_param(name)
    return int(raw)


def _symbols_param(params: dict[str, str]) -> list[str] | None:
    """`symbol=X` or `symbols=["X","Y"]` (Binance's JSON-array form); None when neither is given."""
    if params.get("symbol"):
        return [params["symbol"]]
    raw = params.get("symbols")
    if not raw:
        return None
    try:
        symbols = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise binance.BinanceError(400, -1100, "Illegal characters found in parameter 'symbols'.") from exc
    if not isinstance(symbols, list) or not all(isinstance(s, str) for s in symbols):
        raise binance.BinanceError(400, -1100, "Illegal characters found in parameter 'symbols'.")
    return symbols


class ReplayServer:
    """The replay exchange, startable in-process (`start()` / `stop()` / `url`) or from the CLI.

    `now_ms` freezes the clock at an instant (bars after it are not served); None follows real time.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        simulate: Sequence[str] = (),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        now_ms: int | None = None,
        faults: Iterable[FaultRule] = (),
        open_candle: bool = False,
        seed: int = 7,
        exchange: str = "binance",
    ) -> None:
        stores: list[BarStore] = []
        # Symbols asked for by name in `simulate` win over files of the same symbol.
        if simulate:
            stores.append(SimulatedBarStore(simulate, seed=seed))
        if data_dir is not None:
            stores.append(FileBarStore(data_dir, exchange=exchange))
        self.store = CombinedBarStore(stores)
        if not self.store.symbol_ids():
            where = f"no {exchange}_<SYMBOL>_<tf> files in {data_dir}" if data_dir else "no data"
            raise ValueError(f"replay server has no symbols to serve ({where}; add --simulate SYMBOLS?)")
        self.host = host
        self._requested_port = port
        self._now_ms = now_ms
        self._initial_now_ms = now_ms
        self.faults = FaultPlan(faults)
        self._initial_faults = list(faults)
        self._open_candle_default = open_candle
        self.open_candle = open_candle
        self._stats_lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._klines_by_symbol: Counter[str] = Counter()
        self._klines_limits: Counter[str] = Counter()
        self._faults_served: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._outages: list[tuple[str, int, int]] = []  # (symbol id, start ms, end ms exclusive)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> ReplayServer:
        if self._httpd is not None:
            return self
        httpd = ThreadingHTTPServer((self.host, self._requested_port), _Handler)
        # Keep-alive connections park a handler thread each; don't let them hold up stop().
        httpd.daemon_threads = True
        httpd.block_on_close = False
        httpd.replay = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="exchange-replay", daemon=True)
        self._thread.start()
        log.info("exchange replay serving %s at %s", ", ".join(self.store.symbol_ids()), self.url)
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def serve_forever(self) -> None:
        """Run in the calling thread until interrupted (the CLI)."""
        self.start()
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(timeout=0.5)
        finally:
            self.stop()

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("replay server is not running")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """Base URL to give the client as its api_url (CRYPTO_EXCHANGE_API_URL)."""
        return f"http://{self.host}:{self.port}"

    # --- clock, stats, faults ------------------------------------------------------------------
    def now_ms(self) -> int:
        return self._now_ms if self._now_ms is not None else int(time.time() * 1000)

    def set_now(self, now_ms: int | None) -> None:
        self._now_ms = now_ms

    def add_faults(self, rules: Iterable[FaultRule]) -> None:
        self.faults.add(rules)

    def add_outage(self, symbol_id: str, start_ms: int, end_ms: int) -> None:
        """From now on, bars of `symbol_id` with ts in [start_ms, end_ms) are not served."""
        self._symbol(symbol_id)
        if end_ms <= start_ms:
            raise ValueError(f"outage end {end_ms} must be after its start {start_ms}")
        with self._stats_lock:
            self._outages.append((symbol_id, start_ms, end_ms))

    def clear_outages(self) -> None:
        with self._stats_lock:
            self._outages.clear()

    def outages(self) -> list[dict[str, Any]]:
        with self._stats_lock:
            return [{"symbol": s, "start_ms": a, "end_ms": b} for s, a, b in self._outages]

    def _hidden(self, symbol_id: str, bars: pl.DataFrame) -> pl.Expr | None:
        """Filter expression that is true for the bars an outage hides; None when none applies."""
        with self._stats_lock:
            windows = [(a, b) for s, a, b in self._outages if s == symbol_id]
        if not windows or bars.height == 0:
            return None
        hidden = pl.lit(False)
        for start, end in windows:
            hidden = hidden | pl.col("ts").is_between(start, end, closed="left")
        return hidden

    def _hidden_slots(self, symbol_id: str, start: int | None, stop: int, bar_ms: int) -> int:
        """Upper bound of the bars hidden in [start, stop): fetch that many more to fill a page."""
        with self._stats_lock:
            windows = [(a, b) for s, a, b in self._outages if s == symbol_id]
        lo = start if start is not None else -(2**62)
        return sum(max(0, min(b, stop) - max(a, lo)) // bar_ms + 1 for a, b in windows if b > lo and a < stop)

    def reset(self) -> None:
        """Forget request counts and pending faults; clock and open-candle back to the start options."""
        with self._stats_lock:
            self._requests.clear()
            self._klines_by_symbol.clear()
            self._klines_limits.clear()
            self._faults_served.clear()
        self.faults.clear()
        self.faults.add(self._initial_faults)
        self.clear_outages()
        self.open_candle = self._open_candle_default
        self._now_ms = self._initial_now_ms

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            return {
                "requests": dict(self._requests),
                "total": sum(self._requests.values()),
                "klines_by_symbol": dict(self._klines_by_symbol),
                # limit parameter → requests: what a client asked for (Binance and ccxt weigh by it)
                "klines_limits": dict(self._klines_limits),
                "faults_served": {path: dict(kinds) for path, kinds in self._faults_served.items()},
            }

    def _record(self, path: str, params: dict[str, str]) -> None:
        with self._stats_lock:
            self._requests[path] += 1
            if path.endswith("/klines"):
                self._klines_by_symbol[params.get("symbol", "")] += 1
                self._klines_limits[params.get("limit", "")] += 1

    def _record_fault(self, path: str, kind: str) -> None:
        with self._stats_lock:
            self._faults_served[path][kind] += 1

    # --- Binance endpoints ---------------------------------------------------------------------
    def _symbol(self, symbol_id: str | None) -> str:
        if not symbol_id:
            raise binance.mandatory_param("symbol")
        if not self.store.has_symbol(symbol_id):
            raise binance.invalid_symbol()
        return symbol_id

    def klines(self, params: dict[str, str]) -> list[list[Any]]:
        symbol_id = self._symbol(params.get("symbol"))
        interval = params.get("interval")
        if not interval:
            raise binance.mandatory_param("interval")
        bar_ms = TIMEFRAME_MS.get(interval)
        if bar_ms is None:
            raise binance.invalid_interval()
        start = _int_param(params, "startTime")
        end = _int_param(params, "endTime")  # inclusive, like Binance
        limit = _int_param(params, "limit")
        limit = binance.DEFAULT_KLINES_LIMIT if limit is None else limit
        if not 1 <= limit <= binance.MAX_KLINES_LIMIT:
            raise binance.invalid_limit()
        if start is not None and end is not None and start > end:
            raise binance.start_after_end()

        now = self.now_ms()
        open_ts = now // bar_ms * bar_ms  # the candle still open at `now`; closed bars are before it
        stop = open_ts if end is None else min(end + 1, open_ts)
        # Bars an outage hides are skipped, and the page still holds `limit` bars where the exchange
        # has them (Binance answers the next bars it has, it does not stop at the hole).
        extra = self._hidden_slots(symbol_id, start, stop, bar_ms)
        try:
            if start is not None:
                bars = self.store.first_bars(symbol_id, interval, start, stop, limit + extra)
            else:
                bars = self.store.last_bars(symbol_id, interval, stop, limit + extra)
        except UnsupportedIntervalError as exc:
            raise binance.invalid_interval() from exc
        hidden = self._hidden(symbol_id, bars)
        if hidden is not None:
            bars = bars.filter(~hidden)
        bars = bars.head(limit) if start is not None else bars.tail(limit)

        # The open candle follows the closed bars when the answer reaches it: within the requested
        # range, and (paging forward from startTime) the page has room left.
        reaches_now = (end is None or open_ts <= end) and (
            start is None or (open_ts >= start and bars.height < limit)
        )
        if self.open_candle and reaches_now:
            bars = self._with_open_candle(symbol_id, interval, bars, open_ts, bar_ms).tail(limit)
        return binance.kline_rows(bars, bar_ms)

    def _with_open_candle(
        self, symbol_id: str, interval: str, bars: pl.DataFrame, open_ts: int, bar_ms: int
    ) -> pl.DataFrame:
        """Append the candle that opened at `open_ts`, if the market traded up to then.

        It has just opened: flat at the previous close, no volume yet. A market whose data stops
        earlier (a delisted pair, or real files that end before `now`) gets none.
        """
        previous = bars.tail(1) if bars.height else empty_ohlcv()
        if previous.height == 0 or int(previous["ts"][0]) != open_ts - bar_ms:
            previous = self.store.last_bars(symbol_id, interval, open_ts, 1)
        if previous.height == 0 or int(previous["ts"][0]) != open_ts - bar_ms:
            return bars
        price = float(previous["close"][0])
        candle = pl.DataFrame(
            {
                "ts": [open_ts],
                "open": [price],
                "high": [price],
                "low": [price],
                "close": [price],
                "volume": [0.0],
            },
            schema=bars.schema,
        )
        return pl.concat([bars, candle])

    def _last_close(self, symbol_id: str) -> tuple[str, int, float | None]:
        timeframe = self.store.ticker_timeframe(symbol_id)
        bar_ms = TIMEFRAME_MS[timeframe]
        closed_end = self.now_ms() // bar_ms * bar_ms
        last = self.store.last_bars(symbol_id, timeframe, closed_end, 1)
        return timeframe, closed_end, (float(last["close"][0]) if last.height else None)

    def ticker_24hr(self, params: dict[str, str]) -> dict[str, Any] | list[dict[str, Any]]:
        requested = _symbols_param(params)
        answers = []
        for symbol_id in requested if requested is not None else self.store.symbol_ids():
            self._symbol(symbol_id)
            timeframe, closed_end, last_close = self._last_close(symbol_id)
            bar_ms = TIMEFRAME_MS[timeframe]
            window = self.store.first_bars(
                symbol_id, timeframe, closed_end - DAY_MS, closed_end, DAY_MS // bar_ms
            )
            answers.append(binance.ticker_24hr(symbol_id, window, last_close, self.now_ms()))
        return answers[0] if params.get("symbol") else answers

    def ticker_price(self, params: dict[str, str]) -> dict[str, Any] | list[dict[str, Any]]:
        requested = _symbols_param(params)
        answers = []
        for symbol_id in requested if requested is not None else self.store.symbol_ids():
            self._symbol(symbol_id)
            answers.append(binance.ticker_price(symbol_id, self._last_close(symbol_id)[2]))
        return answers[0] if params.get("symbol") else answers

    def exchange_info(self, params: dict[str, str]) -> dict[str, Any]:
        requested = _symbols_param(params)
        symbols = self.store.symbol_ids() if requested is None else [self._symbol(s) for s in requested]
        return binance.exchange_info(symbols, self.now_ms())

    def routes(self) -> dict[str, Callable[[dict[str, str]], Any]]:
        return {
            "/api/v3/ping": lambda params: {},
            "/api/v3/time": lambda params: {"serverTime": self.now_ms()},
            "/api/v3/exchangeInfo": self.exchange_info,
            "/api/v3/klines": self.klines,
            "/api/v3/ticker/24hr": self.ticker_24hr,
            "/api/v3/ticker/price": self.ticker_price,
        }

    # --- control endpoints ---------------------------------------------------------------------
    def control(self, method: str, name: str, body: Any) -> tuple[int, Any]:
        if name == "stats" and method == "GET":
            return 200, self.stats()
        if name == "reset" and method == "POST":
            self.reset()
            return 200, {"ok": True}
        if name == "faults":
            if method == "POST":
                self._apply_fault_request(body)
            return 200, {"pending": self.faults.pending(), "open_candle": self.open_candle}
        if name == "outages":
            if method == "POST":
                self._apply_outage_request(body)
            return 200, {"outages": self.outages()}
        if name == "clock":
            if method == "POST":
                if not isinstance(body, dict) or not ({"now_ms", "now"} & set(body)):
                    raise FaultSpecError('clock expects {"now_ms": <ms or null>} or {"now": "<ISO time>"}')
                raw = body.get("now_ms", body.get("now"))
                self.set_now(None if raw is None else parse_instant(raw))
            return 200, {"now_ms": self.now_ms(), "frozen": self._now_ms is not None}
        return 404, {"error": f"unknown control endpoint {method} {CONTROL_PREFIX}{name}"}

    def _apply_outage_request(self, body: Any) -> None:
        """`{"symbol": "BTCUSDT", "start": <ISO or ms>, "end": <ISO or ms>}` or `{"clear": true}`."""
        if not isinstance(body, dict):
            raise FaultSpecError("outages expects a JSON object")
        unknown = set(body) - {"symbol", "start", "end", "clear"}
        if unknown:
            raise FaultSpecError(f"unknown fields {sorted(unknown)}; expected symbol, start, end, clear")
        if body.get("clear"):
            self.clear_outages()
        if "symbol" in body or "start" in body or "end" in body:
            missing = [name for name in ("symbol", "start", "end") if body.get(name) is None]
            if missing:
                raise FaultSpecError(f"an outage needs {', '.join(missing)}")
            try:
                self.add_outage(str(body["symbol"]), parse_instant(body["start"]), parse_instant(body["end"]))
            except BinanceError as exc:
                raise FaultSpecError(f"outage symbol {body['symbol']!r}: {exc.msg}") from exc

    def _apply_fault_request(self, body: Any) -> None:
        """`{"faults": [...], "open_candle": bool, "clear": bool}`, or a single fault object."""
        if not isinstance(body, dict):
            raise FaultSpecError("faults expects a JSON object")
        if "kind" in body:
            body = {"faults": [body]}
        unknown = set(body) - {"faults", "open_candle", "clear"}
        if unknown:
            raise FaultSpecError(f"unknown fields {sorted(unknown)}; expected faults, open_candle, clear")
        rules = [FaultRule.from_dict(item) for item in body.get("faults", [])]
        if body.get("clear"):
            self.faults.clear()
        self.faults.add(rules)
        if "open_candle" in body:
            self.open_candle = bool(body["open_candle"])


class _Handler(BaseHTTPRequestHandler):
    server_version = "crypto-platform-exchange-replay/1"
    # Keep-alive: ccxt reuses one requests.Session, and a new TCP connection per page would dominate.
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection releases its thread after this

    @property
    def replay(self) -> ReplayServer:
        return self.server.replay  # type: ignore[attr-defined]

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; with Nagle's algorithm on, a keep-alive
        # client's delayed ACK then stalls every answer by ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("replay %s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            for key, value in (headers or {"Content-Type": "application/json;charset=UTF-8"}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. a `timeout` fault outlived its timeout); nothing to answer.
            self.close_connection = True

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        self._send(status, body, {"Content-Type": "application/json;charset=UTF-8", **(headers or {})})

    def _dispatch(self, method: str) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        replay = self.replay
        if path.startswith(CONTROL_PREFIX):
            try:
                body = json.loads(raw_body) if raw_body.strip() else None
                status, payload = replay.control(method, path[len(CONTROL_PREFIX) :], body)
            except (FaultSpecError, ValueError) as exc:  # JSONDecodeError and bad ISO times are ValueErrors
                status, payload = 400, {"error": str(exc)}
            self._send_json(status, payload)
            return
        try:
            self._answer_api(replay, method, path, params)
        except BinanceError as exc:
            self._send_json(exc.status, exc.body(), exc.headers)
        except Exception:  # a bug in the replay must show up as a 500, not a hung client
            log.exception("replay: error answering %s %s", method, self.path)
            self._send_json(
                500, {"code": -1000, "msg": "An unknown error occurred while processing the request."}
            )

    def _answer_api(self, replay: ReplayServer, method: str, path: str, params: dict[str, str]) -> None:
        replay._record(path, params)
        rule = replay.faults.take(path, params.get("symbol"))
        if rule is not None:
            replay._record_fault(path, rule.kind)
            if rule.kind == "timeout":
                time.sleep(rule.delay_s)  # then answer normally: the client has usually gone
            else:
                status, headers, body = fault_response(rule, replay.now_ms())
                self._send(status, body, headers)
                return
        handler = replay.routes().get(path)
        if handler is None:
            self._send_json(404, {"code": -1, "msg": f"Unknown endpoint {path} (not replayed)."})
        elif method != "GET":
            self._send_json(405, {"code": -1, "msg": f"{method} not allowed on {path}."})
        else:
            self._send_json(200, handler(params))

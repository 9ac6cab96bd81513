"""A seeded, deterministic OHLCV simulator with the stylised facts of hourly crypto prices.

Used when no exchange is reachable (offline demos, CI, tests). What it reproduces, and how:

* volatility clustering: a GARCH(1,1) recursion on unit-variance shocks;
* fat tails: Student-t innovations (df 5) plus rare jumps that also feed the GARCH variance;
* regimes: a persistent Markov chain of calm / normal / turbulent states scaling the volatility;
* intraday and weekly seasonality of volatility and volume (US hours busier, weekends quieter);
* consistent bars: open = previous close, high/low drawn from the exact law of the maximum and
  minimum of a Brownian bridge (so the high-low range is Parkinson-consistent with the bar's
  volatility), prices rounded to a tick and always positive;
* volume: log-normal, rising with the bar's volatility, its |return| and the regime;
* a weak mean reversion of the log price (half-life ~4 months) so a path started in 2017 stays
  in a plausible band around the symbol's base price instead of wandering off by orders of magnitude.

Determinism across windows is the central contract: the pipeline asks for one UTC day at a time and
the days must join up (close of day D's last bar = open of day D+1's first bar). So the hourly path
is generated sequentially from a fixed origin (2017-01-01 UTC); its random draws come in fixed
blocks, each seeded from (seed, symbol, block index) via a stable hash, so extending a path never
changes the bars already generated. Coarser timeframes (2h … 1d) aggregate the hourly path, and
finer ones (1m … 30m) split each hour along a bridge between its open and close that stays inside
its high/low, with draws seeded per UTC day. All timeframes therefore describe one market.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import polars as pl

from crypto_platform.lib.market.schema import OHLCV_SCHEMA, empty_ohlcv
from crypto_platform.lib.market.symbols import normalize_symbol
from crypto_platform.lib.market.timeframes import HOUR_MS, timeframe_ms, validate_timeframe

SIMULATED_SOURCE = "simulated"

DAY_MS = 24 * HOUR_MS
# 2017-01-01T00:00:00Z: before the first Binance candle (2017-08-17), and aligned to every bar length.
SIMULATION_ORIGIN_MS = 1_483_228_800_000
# The hourly path is generated up to the requested end; cap it (~40 years, ~0.35M hours) so a typo in
# an end date cannot make a call run for minutes.
MAX_SIMULATION_HOURS = 40 * 365 * 24
SIMULATION_END_MS = SIMULATION_ORIGIN_MS + MAX_SIMULATION_HOURS * HOUR_MS
# Largest frame one call returns; ask for longer minute-bar spans in pieces.
MAX_BARS_PER_CALL = 1_500_000

# Draws for the hourly path come in blocks of this many hours, each from its own seeded generator.
_BLOCK_HOURS = 4096

# --- model parameters (hourly) ------------------------------------------------------------------
_T_DF = 5.0  # Student-t degrees of freedom: hourly crypto returns have tails like df 4–5
_T_SCALE = math.sqrt((_T_DF - 2.0) / _T_DF)  # turns a t draw into a unit-variance shock
_GARCH_ALPHA = 0.08
_GARCH_BETA = 0.90  # alpha + beta = 0.98: shocks to volatility decay over days, as in real data
_GARCH_OMEGA = 1.0 - _GARCH_ALPHA - _GARCH_BETA  # unconditional variance 1 (volatility set elsewhere)
_GARCH_H_BOUNDS = (0.05, 12.0)  # keeps one freak jump from pinning the variance for weeks
_JUMP_PROB = 0.001  # ~9 jumps a year
_JUMP_MIN_SIGMAS = 3.0
_JUMP_MEAN_EXTRA_SIGMAS = 2.5
# Regimes: calm, normal, turbulent. Rows are hourly transition probabilities; expected stays are
# ~10 days calm/normal and ~3 days turbulent.
_REGIME_TRANSITIONS = np.array(
    [
        [0.996, 0.004, 0.000],
        [0.002, 0.996, 0.002],
        [0.000, 0.015, 0.985],
    ]
)
_REGIME_RAW_SCALES = np.array([0.6, 1.0, 2.2])
_REGIME_START = 1  # normal
# Observed high-low ranges run ~5 % wider than a pure diffusion implies (bid-ask bounce, discrete
# trades): real Binance hourly bars have Parkinson vol ≈ 1.06 × close-to-close vol.
_RANGE_SCALE = 1.08
_MEAN_REVERSION_HALF_LIFE_H = 120 * 24
_MEAN_REVERSION = math.log(2.0) / _MEAN_REVERSION_HALF_LIFE_H
# Volume: log V = log(base) + seasonality + elasticity·log(vol level) + |shock| term + AR(1) noise.
_VOLUME_VOL_ELASTICITY = 0.8
_VOLUME_SHOCK_LOADING = 0.2
_VOLUME_AR = 0.8
_VOLUME_NOISE = 0.3


def _stationary(transitions: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eig(transitions.T)
    vec = np.real(vectors[:, np.argmin(np.abs(values - 1.0))])
    return vec / vec.sum()


# Normalise the regime scales so that, averaged over the chain's stationary law, they leave the
# hourly variance at the symbol's target level.
_REGIME_SCALES = _REGIME_RAW_SCALES / math.sqrt(
    float(_stationary(_REGIME_TRANSITIONS) @ _REGIME_RAW_SCALES**2)
)
_REGIME_CUMULATIVE = np.cumsum(_REGIME_TRANSITIONS, axis=1)


@dataclass(frozen=True)
class SymbolProfile:
    """Price level, volatility and volume level the simulator gives one symbol."""

    base_price: float
    annual_vol: float
    base_volume: float  # mean hourly volume, in the base asset
    tick: float

    @property
    def hourly_vol(self) -> float:
        return self.annual_vol / math.sqrt(365 * 24)


# Rough 2024 levels of the pairs the platform tracks by default (quote: a USD stablecoin).
_KNOWN_PROFILES: dict[str, tuple[float, float, float]] = {
    "BTC": (60_000.0, 0.55, 1_500.0),
    "ETH": (3_000.0, 0.70, 15_000.0),
    "SOL": (150.0, 0.90, 120_000.0),
    "BNB": (600.0, 0.65, 8_000.0),
}
_USD_QUOTES = frozenset({"USDT", "USDC", "FDUSD", "TUSD", "BUSD", "USDP", "DAI", "USD"})


def _stable_int(*parts: object) -> int:
    """A 64-bit integer from the parts; unlike hash(), the same in every process and Python version."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _tick_for(price: float) -> float:
    # Six to seven significant digits, like exchange tick sizes (BTC ~60k → 0.01).
    return 10.0 ** (math.floor(math.log10(price)) - 6)


def symbol_profile(symbol: str) -> SymbolProfile:
    """The simulated market's parameters for `symbol` (known majors, else derived from its name)."""
    sym = normalize_symbol(symbol)
    base, quote = sym.split("/")
    if quote in _USD_QUOTES and base in _KNOWN_PROFILES:
        price, vol, volume = _KNOWN_PROFILES[base]
    else:
        h = _stable_int("profile", sym)
        u1, u2, u3 = ((h >> s) % 10_000 / 10_000 for s in (0, 16, 32))
        price = 10.0 ** (-1.0 + 4.0 * u1)  # 0.1 … 1000 quote units
        vol = 0.50 + 0.40 * u2  # 50–90 % a year
        volume = 10.0 ** (6.5 + u3) / price  # $3M–$30M of turnover an hour
    return SymbolProfile(base_price=price, annual_vol=vol, base_volume=volume, tick=_tick_for(price))


def _season_factors(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Volatility multiplier (mean square ≈ 1) and log-volume offset by hour of day and weekday.

    Crypto trades around the clock but is busiest when US and European desks overlap (~13–17 UTC) and
    quietest in the Asian night and at weekends.
    """
    hour = (ts // HOUR_MS) % 24
    weekday = (ts // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    daily = np.cos(2.0 * np.pi * (hour - 15.0) / 24.0)
    weekend = weekday >= 5
    vol = (1.0 + 0.25 * daily) * np.where(weekend, 0.8, 1.0) / math.sqrt(1.03125 * (5 + 2 * 0.64) / 7)
    log_volume = 0.35 * daily + np.where(weekend, -0.35, 0.0)
    return vol, log_volume


def _block_draws(seed: int, symbol: str, block: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([_stable_int("hourly", symbol, seed), block])
    n = _BLOCK_HOURS
    jump = rng.random(n) < _JUMP_PROB
    jump_size = (_JUMP_MIN_SIGMAS + rng.exponential(_JUMP_MEAN_EXTRA_SIGMAS, n)) * rng.choice([-1.0, 1.0], n)
    return {
        "z": rng.standard_t(_T_DF, n) * _T_SCALE,
        "jump": np.where(jump, jump_size, 0.0),
        "regime_u": rng.random(n),
        "high_e": rng.standard_exponential(n),
        "low_e": rng.standard_exponential(n),
        "volume_eta": rng.standard_normal(n),
    }


@dataclass
class _PathState:
    """What carries from one block of hours to the next."""

    regime: int
    h: float
    log_price: float
    volume_ar: float


class _HourlyPath:
    """The hourly path of one (symbol, seed), generated block by block from the origin and kept."""

    def __init__(self, symbol: str, seed: int) -> None:
        self.symbol = symbol
        self.seed = seed
        self.profile = symbol_profile(symbol)
        self.blocks = 0
        self.state = _PathState(_REGIME_START, 1.0, math.log(self.profile.base_price), 0.0)
        self._chunks: dict[str, list[np.ndarray]] = {k: [] for k in _PATH_FIELDS}
        self.arrays: dict[str, np.ndarray] = {k: np.empty(0) for k in _PATH_FIELDS}

    def ensure(self, hours: int) -> None:
        needed = -(-hours // _BLOCK_HOURS)
        if needed <= self.blocks:
            return
        while self.blocks < needed:
            for key, arr in self._generate_block(self.blocks).items():
                self._chunks[key].append(arr)
            self.blocks += 1
        self.arrays = {k: np.concatenate(v) for k, v in self._chunks.items()}
        for arr in self.arrays.values():
            arr.setflags(write=False)  # shared by every caller of the cache

    def _generate_block(self, block: int) -> dict[str, np.ndarray]:
        d = _block_draws(self.seed, self.symbol, block)
        n = _BLOCK_HOURS
        ts = SIMULATION_ORIGIN_MS + (block * n + np.arange(n, dtype=np.int64)) * HOUR_MS
        season_vol, season_logv = _season_factors(ts)
        base_sigma = self.profile.hourly_vol
        mu = math.log(self.profile.base_price)
        sigma_scale = (base_sigma * season_vol).tolist()
        z, jump, regime_u = d["z"].tolist(), d["jump"].tolist(), d["regime_u"].tolist()
        cum = _REGIME_CUMULATIVE.tolist()
        scales = _REGIME_SCALES.tolist()
        h_lo, h_hi = _GARCH_H_BOUNDS
        s = self.state
        regime, h, logp = s.regime, s.h, s.log_price
        # The recursions are inherently sequential; a plain float loop over 4096 hours takes a few ms,
        # far cheaper than the numpy call overhead of doing it element by element.
        log_open = [0.0] * n
        rets = [0.0] * n
        sigmas = [0.0] * n
        levels = [0.0] * n
        shocks = [0.0] * n
        for i in range(n):
            row = cum[regime]
            u = regime_u[i]
            regime = 0 if u < row[0] else (1 if u < row[1] else 2)
            root_h = math.sqrt(h)
            level = scales[regime] * root_h
            sigma = sigma_scale[i] * level
            # A jump is sized against the regime's volatility, not the GARCH level, so it cannot
            # compound with an already high variance; it then feeds the variance like any shock.
            shock = root_h * z[i] + jump[i]
            r = -_MEAN_REVERSION * (logp - mu) + sigma_scale[i] * scales[regime] * shock
            log_open[i] = logp
            rets[i] = r
            sigmas[i] = sigma
            levels[i] = level
            shocks[i] = shock / root_h
            logp += r
            h = _GARCH_OMEGA + _GARCH_ALPHA * shock * shock + _GARCH_BETA * h
            h = h_lo if h < h_lo else (h_hi if h > h_hi else h)
        s.regime, s.h, s.log_price = regime, h, logp

        sig = np.asarray(sigmas)
        ret = np.asarray(rets)
        lo_open = np.asarray(log_open)
        # Max and min of a Brownian bridge from 0 to r with variance σ²: P(max > m) = exp(-2m(m-r)/σ²),
        # so max = (r + √(r² + 2σ²E))/2 with E ~ Exp(1), and symmetrically for the min.
        var2 = 2.0 * (_RANGE_SCALE * sig) ** 2
        up = 0.5 * (ret + np.sqrt(ret * ret + var2 * d["high_e"]))
        down = 0.5 * (ret - np.sqrt(ret * ret + var2 * d["low_e"]))

        eta = d["volume_eta"].tolist()
        ar = s.volume_ar
        noise = [0.0] * n
        for i in range(n):
            ar = _VOLUME_AR * ar + _VOLUME_NOISE * eta[i]
            noise[i] = ar
        s.volume_ar = ar
        log_volume = (
            math.log(self.profile.base_volume)
            + season_logv
            + _VOLUME_VOL_ELASTICITY * np.log(np.asarray(levels))
            + _VOLUME_SHOCK_LOADING * (np.abs(np.asarray(shocks)) - 0.8)  # E|shock| ≈ 0.8
            + np.asarray(noise)
            - 0.5 * (_VOLUME_NOISE**2 / (1 - _VOLUME_AR**2))  # log-normal mean correction
        )

        tick = self.profile.tick
        open_ = _round_tick(np.exp(lo_open), tick)
        close = np.append(open_[1:], _round_tick(np.exp(np.array([logp])), tick))
        high = np.maximum(_round_tick(np.exp(lo_open + up), tick), np.maximum(open_, close))
        low = np.minimum(_round_tick(np.exp(lo_open + down), tick), np.minimum(open_, close))
        return {
            "ts": ts,
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": np.round(np.exp(log_volume), 6),
            "sigma": sig,
        }


_PATH_FIELDS = ("ts", "open", "high", "low", "close", "volume", "sigma")


def _round_tick(prices: np.ndarray, tick: float) -> np.ndarray:
    # Rounding is monotone, so it keeps high ≥ open/close ≥ low; the floor of one tick keeps prices > 0.
    return np.maximum(np.round(prices / tick) * tick, tick)


_CACHE_SIZE = 32
_cache: OrderedDict[tuple[str, int], _HourlyPath] = OrderedDict()
_cache_lock = threading.Lock()


def _hourly_arrays(symbol: str, seed: int, hours: int) -> dict[str, np.ndarray]:
    """The first `hours` hours of the path (at least; callers slice), from a per-process LRU cache."""
    key = (symbol, seed)
    with _cache_lock:
        path = _cache.get(key)
        if path is None:
            path = _cache[key] = _HourlyPath(symbol, seed)
            while len(_cache) > _CACHE_SIZE:
                _cache.popitem(last=False)
        _cache.move_to_end(key)
        # Extending under the lock keeps two threads from growing the same path at once.
        path.ensure(hours)
        return path.arrays


def set_simulator_cache_size(paths: int) -> None:
    """How many symbol paths the cache keeps (default 32, ~4 MB each at 2025's length). A replay of more
    symbols than that re-simulates evicted ones on every request; a benchmark over N symbols sets N."""
    global _CACHE_SIZE
    if paths < 1:
        raise ValueError(f"the simulator cache must hold at least one path, got {paths}")
    with _cache_lock:
        _CACHE_SIZE = paths
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)


def clear_simulator_cache() -> None:
    with _cache_lock:
        _cache.clear()


def simulate_ohlcv(symbol: str, timeframe: str, start_ms: int, end_ms: int, seed: int = 7) -> pl.DataFrame:
    """Simulated closed bars with `ts` in [start_ms, end_ms), aligned to the bar length.

    The frame has the OHLCV schema (no `symbol` column) and is sorted by `ts`. The same
    (symbol, timeframe, seed) always gives the same bar at a given `ts`, whatever the window.
    The simulator has no clock: a caller that wants only bars closed by now passes an `end_ms`
    floored to the bar length. Bars before the origin (2017-01-01) do not exist, so `start_ms` is
    clipped to it; an `end_ms` at or before the origin, or after 40 years of simulation, is an error.
    """
    sym = normalize_symbol(symbol)
    tf = validate_timeframe(timeframe)
    bar_ms = timeframe_ms(tf)
    start_ms, end_ms = int(start_ms), int(end_ms)
    if start_ms > end_ms:
        raise ValueError(f"start_ms ({start_ms}) is after end_ms ({end_ms})")
    if end_ms <= SIMULATION_ORIGIN_MS:
        raise ValueError(
            f"end_ms ({end_ms}) is not after the simulation origin {SIMULATION_ORIGIN_MS} (2017-01-01 UTC)"
        )
    if end_ms > SIMULATION_END_MS:
        raise ValueError(f"end_ms ({end_ms}) is beyond the simulated range (ends at {SIMULATION_END_MS})")
    first_ts = max(start_ms, SIMULATION_ORIGIN_MS)
    first_ts = -(-first_ts // bar_ms) * bar_ms  # first aligned bar at or after start
    n_bars = max(0, -(-(end_ms - first_ts) // bar_ms))
    if n_bars == 0:
        return empty_ohlcv()
    if n_bars > MAX_BARS_PER_CALL:
        raise ValueError(
            f"{n_bars} {tf} bars requested; at most {MAX_BARS_PER_CALL} per call, ask in smaller windows"
        )
    last_end_ms = first_ts + n_bars * bar_ms  # end of the last bar, ≥ end_ms
    hours_needed = -(-(last_end_ms - SIMULATION_ORIGIN_MS) // HOUR_MS)
    hourly = _hourly_arrays(sym, int(seed), hours_needed)
    first_hour = (first_ts - SIMULATION_ORIGIN_MS) // HOUR_MS
    if bar_ms >= HOUR_MS:
        per_bar = bar_ms // HOUR_MS
        cols = _aggregate(hourly, first_hour, n_bars, per_bar)
    else:
        last_hour = hours_needed  # exclusive
        window = {k: v[first_hour:last_hour] for k, v in hourly.items()}
        cols = _split_hours(window, sym, tf, int(seed), bar_ms)
        keep = (cols["ts"] >= first_ts) & (cols["ts"] < end_ms)
        cols = {k: v[keep] for k, v in cols.items()}
    return pl.DataFrame({k: cols[k] for k in OHLCV_SCHEMA}, schema=OHLCV_SCHEMA)


def _aggregate(
    hourly: dict[str, np.ndarray], first_hour: int, n_bars: int, per_bar: int
) -> dict[str, np.ndarray]:
    """Bars of `per_bar` hours from the hourly path: first open, max high, min low, last close, sum volume."""
    sl = slice(first_hour, first_hour + n_bars * per_bar)
    if per_bar == 1:
        return {k: hourly[k][sl] for k in OHLCV_SCHEMA}

    def grid(key: str) -> np.ndarray:
        return hourly[key][sl].reshape(n_bars, per_bar)

    return {
        "ts": grid("ts")[:, 0],
        "open": grid("open")[:, 0],
        "high": grid("high").max(axis=1),
        "low": grid("low").min(axis=1),
        "close": grid("close")[:, -1],
        "volume": grid("volume").sum(axis=1),
    }


def _squash(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, floor: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Map x monotonically into [floor, cap]: identity on [lo, hi], tanh-compressed beyond.

    Used to keep an intra-hour bridge inside the hour's low/high while leaving its open and close
    (which lie in [lo, hi]) untouched.
    """
    room_up = cap - hi
    room_down = lo - floor
    with np.errstate(divide="ignore", invalid="ignore"):
        above = hi + room_up * np.tanh((x - hi) / np.where(room_up > 0, room_up, 1.0))
        below = lo - room_down * np.tanh((lo - x) / np.where(room_down > 0, room_down, 1.0))
    return np.where(
        x > hi, np.where(room_up > 0, above, hi), np.where(x < lo, np.where(room_down > 0, below, lo), x)
    )


def _split_hours(
    hourly: dict[str, np.ndarray], symbol: str, timeframe: str, seed: int, bar_ms: int
) -> dict[str, np.ndarray]:
    """Sub-hour bars that aggregate exactly to the given hourly bars.

    Each hour's log price follows a random bridge from its open to its close, squashed into its
    low/high; the sub-bars that come closest to the hour's extremes take them exactly. Draws are
    seeded per UTC day (always the full day's worth), so a bar does not depend on the window.
    """
    per_hour = HOUR_MS // bar_ms
    hour_ts = hourly["ts"]
    n_hours = hour_ts.size
    first_day = int(hour_ts[0] // DAY_MS)
    last_day = int(hour_ts[-1] // DAY_MS)
    shape = (24, per_hour)
    draws: dict[str, list[np.ndarray]] = {"z": [], "high_e": [], "low_e": [], "vol": []}
    stream = _stable_int("subhour", symbol, timeframe, seed)
    for day in range(first_day, last_day + 1):
        rng = np.random.default_rng([stream, day])
        draws["z"].append(rng.standard_t(_T_DF, shape) * _T_SCALE)
        draws["high_e"].append(rng.standard_exponential(shape))
        draws["low_e"].append(rng.standard_exponential(shape))
        draws["vol"].append(rng.standard_normal(shape))
    offset = int((hour_ts[0] - first_day * DAY_MS) // HOUR_MS)
    d = {k: np.concatenate(v)[offset : offset + n_hours] for k, v in draws.items()}

    o, h, lo_, c = (hourly[k][:, None] for k in ("open", "high", "low", "close"))
    r, top, bottom = np.log(c / o), np.log(h / o), np.log(lo_ / o)
    sigma = hourly["sigma"][:, None] / math.sqrt(per_hour)
    steps = sigma * d["z"]
    walk = np.concatenate([np.zeros((n_hours, 1)), np.cumsum(steps, axis=1)], axis=1)
    frac = np.arange(per_hour + 1) / per_hour
    raw = walk - frac * (walk[:, -1:] - r)  # bridge: 0 at the open, r at the close
    inner_hi, inner_lo = np.maximum(r, 0.0), np.minimum(r, 0.0)
    points = _squash(raw, inner_lo, inner_hi, bottom, top)
    move = raw[:, 1:] - raw[:, :-1]
    var2 = 2.0 * sigma * sigma
    raw_high = raw[:, :-1] + 0.5 * (move + np.sqrt(move * move + var2 * d["high_e"]))
    raw_low = raw[:, :-1] + 0.5 * (move - np.sqrt(move * move + var2 * d["low_e"]))
    sub_high = _squash(raw_high, inner_lo, inner_hi, bottom, top)
    sub_low = _squash(raw_low, inner_lo, inner_hi, bottom, top)

    tick = symbol_profile(symbol).tick
    prices = _round_tick(o * np.exp(points), tick)
    prices[:, 0], prices[:, -1] = o[:, 0], c[:, 0]
    prices = np.clip(prices, lo_, h)
    s_open, s_close = prices[:, :-1], prices[:, 1:]
    s_high = np.maximum(np.clip(_round_tick(o * np.exp(sub_high), tick), lo_, h), np.maximum(s_open, s_close))
    s_low = np.minimum(np.clip(_round_tick(o * np.exp(sub_low), tick), lo_, h), np.minimum(s_open, s_close))
    rows = np.arange(n_hours)
    s_high[rows, np.argmax(s_high, axis=1)] = h[:, 0]
    s_low[rows, np.argmin(s_low, axis=1)] = lo_[:, 0]

    # Volume follows activity: bigger sub-bar moves trade more; shares sum to the hour's volume.
    weight = np.exp(0.5 * np.abs(move) / sigma + 0.3 * d["vol"])
    s_volume = hourly["volume"][:, None] * weight / weight.sum(axis=1, keepdims=True)
    ts = hour_ts[:, None] + np.arange(per_hour, dtype=np.int64) * bar_ms
    return {
        "ts": ts.ravel(),
        "open": s_open.ravel(),
        "high": s_high.ravel(),
        "low": s_low.ravel(),
        "close": s_close.ravel(),
        "volume": np.round(s_volume, 8).ravel(),
    }

"""The market simulator: deterministic across windows, consistent bars, realistic hourly statistics."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest

from crypto_platform.lib.market import simulator
from crypto_platform.lib.market.schema import OHLCV_SCHEMA
from crypto_platform.lib.market.simulator import (
    SIMULATED_SOURCE,
    SIMULATION_ORIGIN_MS,
    clear_simulator_cache,
    simulate_ohlcv,
)
from crypto_platform.lib.market.symbols import InvalidSymbolError
from crypto_platform.lib.market.timeframes import HOUR_MS, TIMEFRAME_MS, UnsupportedTimeframeError

DAY_MS = 24 * HOUR_MS
JAN_2024 = 1_704_067_200_000  # 2024-01-01T00:00Z
JAN_2025 = 1_735_689_600_000


def _ohlc_ok(frame: pl.DataFrame) -> bool:
    return frame.select(
        (
            (pl.col("high") >= pl.max_horizontal("open", "close"))
            & (pl.col("low") <= pl.min_horizontal("open", "close"))
            & (pl.col("low") > 0)
            & (pl.col("volume") > 0)
        ).all()
    ).item()


def _autocorr(x: np.ndarray, lag: int = 1) -> float:
    x = x - x.mean()
    return float((x[:-lag] * x[lag:]).sum() / (x * x).sum())


@pytest.fixture(scope="module")
def long_btc() -> pl.DataFrame:
    """Eight years of hourly BTC bars: enough for stable sample moments."""
    return simulate_ohlcv("BTC/USDT", "1h", SIMULATION_ORIGIN_MS, JAN_2025)


def test_source_label() -> None:
    assert SIMULATED_SOURCE == "simulated"


def test_day_has_the_schema_and_24_aligned_bars() -> None:
    day = simulate_ohlcv("BTC/USDT", "1h", JAN_2024, JAN_2024 + DAY_MS)
    assert day.schema == pl.Schema(OHLCV_SCHEMA)
    assert day.columns == list(OHLCV_SCHEMA)
    assert day.height == 24
    assert day["ts"].to_list() == [JAN_2024 + i * HOUR_MS for i in range(24)]
    assert day.null_count().sum_horizontal().item() == 0


def test_unaligned_window_keeps_bars_opening_inside_it() -> None:
    start, end = JAN_2024 + 90 * 60_000, JAN_2024 + 5 * HOUR_MS + 1  # 01:30 → 05:00:00.001
    frame = simulate_ohlcv("BTC/USDT", "1h", start, end)
    assert frame["ts"].to_list() == [JAN_2024 + h * HOUR_MS for h in (2, 3, 4, 5)]


def test_empty_window_returns_an_empty_typed_frame() -> None:
    frame = simulate_ohlcv("BTC/USDT", "1h", JAN_2024 + 1, JAN_2024 + 2)
    assert frame.height == 0
    assert frame.schema == pl.Schema(OHLCV_SCHEMA)


def test_overlapping_windows_give_identical_bars() -> None:
    wide = simulate_ohlcv("ETH/USDT", "1h", JAN_2024, JAN_2024 + 20 * DAY_MS)
    narrow = simulate_ohlcv("ETH/USDT", "1h", JAN_2024 + 5 * DAY_MS + 7 * HOUR_MS, JAN_2024 + 9 * DAY_MS)
    assert narrow.height == 4 * DAY_MS // HOUR_MS - 7
    assert wide.filter(pl.col("ts").is_in(narrow["ts"].implode())).equals(narrow)


def test_consecutive_days_join_up() -> None:
    days = [
        simulate_ohlcv("BTC/USDT", "1h", JAN_2024 + i * DAY_MS, JAN_2024 + (i + 1) * DAY_MS) for i in range(5)
    ]
    for today, tomorrow in itertools.pairwise(days):
        assert today["close"][-1] == tomorrow["open"][0]
    assert pl.concat(days).equals(simulate_ohlcv("BTC/USDT", "1h", JAN_2024, JAN_2024 + 5 * DAY_MS))


def test_open_is_previous_close_across_generation_blocks() -> None:
    # 4096-hour generation blocks start at 2017-01-01 + k·4096 h; a long frame crosses many.
    frame = simulate_ohlcv("SOL/USDT", "1h", SIMULATION_ORIGIN_MS, JAN_2024)
    assert (frame["open"][1:].to_numpy() == frame["close"][:-1].to_numpy()).all()


def test_result_does_not_depend_on_cache_history() -> None:
    """A path grown in steps (the pipeline walking day by day) equals one generated in one go."""
    clear_simulator_cache()
    early = simulate_ohlcv("BNB/USDT", "1h", JAN_2024 - 400 * DAY_MS, JAN_2024 - 399 * DAY_MS)
    grown = simulate_ohlcv("BNB/USDT", "1h", JAN_2024, JAN_2024 + 3 * DAY_MS)
    clear_simulator_cache()
    fresh = simulate_ohlcv("BNB/USDT", "1h", JAN_2024, JAN_2024 + 3 * DAY_MS)
    assert grown.equals(fresh)
    assert early.equals(simulate_ohlcv("BNB/USDT", "1h", JAN_2024 - 400 * DAY_MS, JAN_2024 - 399 * DAY_MS))


def test_symbol_spellings_share_one_path() -> None:
    a = simulate_ohlcv("BTC/USDT", "1h", JAN_2024, JAN_2024 + DAY_MS)
    b = simulate_ohlcv("btcusdt", "1h", JAN_2024, JAN_2024 + DAY_MS)
    assert a.equals(b)


def test_symbols_and_seeds_give_different_paths() -> None:
    def returns(symbol: str, seed: int) -> np.ndarray:
        frame = simulate_ohlcv(symbol, "1h", JAN_2024, JAN_2024 + 30 * DAY_MS, seed=seed)
        return np.diff(np.log(frame["close"].to_numpy()))

    btc7, btc8, eth7 = returns("BTC/USDT", 7), returns("BTC/USDT", 8), returns("ETH/USDT", 7)
    assert abs(np.corrcoef(btc7, btc8)[0, 1]) < 0.2
    assert abs(np.corrcoef(btc7, eth7)[0, 1]) < 0.2


@pytest.mark.parametrize(
    ("symbol", "base"), [("BTC/USDT", 60_000), ("ETH/USDT", 3_000), ("SOL/USDT", 150), ("BNB/USDT", 600)]
)
def test_price_levels_stay_in_a_plausible_band(symbol: str, base: float) -> None:
    """Starts at the symbol's base price; the weak mean reversion keeps eight years around it.

    (A free random walk at ~60 % a year would wander e^±1.7 in eight years at one standard deviation.)
    """
    frame = simulate_ohlcv(symbol, "1h", SIMULATION_ORIGIN_MS, JAN_2025)
    assert frame["open"][0] == base
    log_level = np.log(frame["close"].to_numpy() / base)
    assert abs(log_level.mean()) < 0.5
    assert base / 8 < frame["low"].min() and frame["high"].max() < base * 8


def test_unknown_symbols_get_a_stable_profile() -> None:
    profile = simulator.symbol_profile("DOGE/USDT")
    assert profile == simulator.symbol_profile("dogeusdt")
    assert 0.5 <= profile.annual_vol <= 0.9
    assert profile.base_price > 0 and profile.tick < profile.base_price / 1e4
    assert profile != simulator.symbol_profile("XRP/USDT")


@pytest.mark.parametrize("timeframe", list(TIMEFRAME_MS))
def test_every_timeframe_gives_consistent_aligned_bars(timeframe: str) -> None:
    bar_ms = TIMEFRAME_MS[timeframe]
    frame = simulate_ohlcv("BTC/USDT", timeframe, JAN_2024, JAN_2024 + 4 * DAY_MS)
    assert frame.height == 4 * DAY_MS // bar_ms
    assert (frame["ts"] % bar_ms == 0).all()
    assert frame["ts"].is_sorted() and frame["ts"].n_unique() == frame.height
    assert _ohlc_ok(frame)
    assert (frame["open"][1:].to_numpy() == frame["close"][:-1].to_numpy()).all()


@pytest.mark.parametrize("timeframe", ["1m", "5m", "15m", "30m", "2h", "4h", "6h", "12h", "1d"])
def test_timeframes_describe_one_market(timeframe: str) -> None:
    """Bars of any length aggregate to / from the hourly bars: same opens, closes, extremes, volume."""
    bar_ms = TIMEFRAME_MS[timeframe]
    hourly = simulate_ohlcv("ETH/USDT", "1h", JAN_2024, JAN_2024 + 2 * DAY_MS)
    other = simulate_ohlcv("ETH/USDT", timeframe, JAN_2024, JAN_2024 + 2 * DAY_MS)
    fine, coarse, size = (other, hourly, HOUR_MS) if bar_ms < HOUR_MS else (hourly, other, bar_ms)
    agg = (
        fine.group_by((pl.col("ts") // size * size).alias("ts"), maintain_order=True)
        .agg(
            pl.col("open").first(),
            pl.col("high").max(),
            pl.col("low").min(),
            pl.col("close").last(),
            pl.col("volume").sum(),
        )
        .sort("ts")
    )
    prices = ["ts", "open", "high", "low", "close"]
    assert agg.select(prices).equals(coarse.select(prices))
    np.testing.assert_allclose(agg["volume"].to_numpy(), coarse["volume"].to_numpy(), rtol=1e-9)


def test_minute_bars_do_not_depend_on_the_window() -> None:
    day = simulate_ohlcv("BTC/USDT", "1m", JAN_2024, JAN_2024 + DAY_MS)
    part = simulate_ohlcv("BTC/USDT", "1m", JAN_2024 + 7 * HOUR_MS + 13 * 60_000, JAN_2024 + 9 * HOUR_MS)
    assert part.height == 107
    assert day.filter(pl.col("ts").is_in(part["ts"].implode())).equals(part)


def test_stylised_facts_of_hourly_returns(long_btc: pl.DataFrame) -> None:
    close = long_btc["close"].to_numpy()
    r = np.diff(np.log(close))
    centred = r - r.mean()
    excess_kurtosis = float((centred**4).mean() / (centred**2).mean() ** 2 - 3.0)
    assert excess_kurtosis > 1.0  # fat tails
    assert abs(_autocorr(r)) < 0.05  # no linear predictability
    assert _autocorr(r * r) > 0.05  # volatility clustering
    assert _autocorr(np.abs(r), 24) > 0.05  # … that persists for days
    annualised = r.std() * np.sqrt(365 * 24)
    assert 0.4 < annualised < 1.0


def test_volume_rises_with_absolute_returns(long_btc: pl.DataFrame) -> None:
    r = np.diff(np.log(long_btc["close"].to_numpy()))
    log_volume = np.log(long_btc["volume"].to_numpy()[1:])
    assert np.corrcoef(np.abs(r), log_volume)[0, 1] > 0.1


def test_volatility_has_an_intraday_pattern(long_btc: pl.DataFrame) -> None:
    frame = long_btc.with_columns(
        (pl.col("close") / pl.col("open")).log().abs().alias("abs_ret"),
        ((pl.col("ts") // HOUR_MS) % 24).alias("hour"),
    )
    by_hour = dict(frame.group_by("hour").agg(pl.col("abs_ret").mean()).iter_rows())
    assert by_hour[15] > 1.3 * by_hour[3]  # US afternoon busier than the Asian night


def test_volatility_regimes_differ_by_month(long_btc: pl.DataFrame) -> None:
    monthly = (
        long_btc.with_columns((pl.col("close") / pl.col("open")).log().alias("ret"))
        .group_by((pl.col("ts") // (30 * DAY_MS)).alias("month"))
        .agg(pl.col("ret").std())
    )["ret"]
    assert monthly.max() > 2.5 * monthly.min()


def test_range_is_consistent_with_close_to_close_volatility(long_btc: pl.DataFrame) -> None:
    hl = np.log(long_btc["high"].to_numpy() / long_btc["low"].to_numpy())
    parkinson = np.sqrt((hl**2).mean() / (4 * np.log(2)))
    close_to_close = np.diff(np.log(long_btc["close"].to_numpy())).std()
    assert 0.85 < parkinson / close_to_close < 1.25


def test_timeframe_whitelist() -> None:
    with pytest.raises(UnsupportedTimeframeError):
        simulate_ohlcv("BTC/USDT", "3h", JAN_2024, JAN_2024 + DAY_MS)


def test_invalid_symbol() -> None:
    with pytest.raises(InvalidSymbolError):
        simulate_ohlcv("BTC", "1h", JAN_2024, JAN_2024 + DAY_MS)


def test_start_after_end_is_rejected() -> None:
    with pytest.raises(ValueError, match="after end_ms"):
        simulate_ohlcv("BTC/USDT", "1h", JAN_2024 + DAY_MS, JAN_2024)


def test_end_before_origin_is_rejected() -> None:
    with pytest.raises(ValueError, match="origin"):
        simulate_ohlcv("BTC/USDT", "1h", 0, SIMULATION_ORIGIN_MS)


def test_end_beyond_simulated_range_is_rejected() -> None:
    with pytest.raises(ValueError, match="beyond"):
        simulate_ohlcv("BTC/USDT", "1d", JAN_2024, simulator.SIMULATION_END_MS + DAY_MS)


def test_start_before_origin_is_clipped() -> None:
    frame = simulate_ohlcv("BTC/USDT", "1d", 0, SIMULATION_ORIGIN_MS + 3 * DAY_MS)
    assert frame["ts"].to_list() == [SIMULATION_ORIGIN_MS + i * DAY_MS for i in range(3)]


def test_too_many_bars_in_one_call_is_rejected() -> None:
    with pytest.raises(ValueError, match="smaller windows"):
        simulate_ohlcv("BTC/USDT", "1m", JAN_2024, JAN_2024 + 1100 * DAY_MS)

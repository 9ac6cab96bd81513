"""The training window's content fingerprint (an MLflow run and version tag): same data, same fingerprint."""

from __future__ import annotations

import polars as pl

from crypto_platform.lib.model.tracking import DataWindow, window_fingerprint


def _frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "symbol": ["BTC/USDT", "BTC/USDT", "ETH/USDT"],
            "ts": [0, 3_600_000, 0],
            "log_ret": [0.01, None, -0.02],
            "realized_vol_24": [0.05, 0.06, 0.07],
        }
    )


def test_the_same_data_read_in_another_order_has_the_same_fingerprint():
    frame = _frame()
    shuffled = frame.reverse().select(reversed(frame.columns))
    assert window_fingerprint(frame) == window_fingerprint(shuffled) == window_fingerprint(frame.clone())
    assert len(window_fingerprint(frame)) == 64


def test_any_change_of_content_changes_it():
    base = window_fingerprint(_frame())
    changed_value = _frame().with_columns(pl.col("realized_vol_24").replace(0.06, 0.0600001))
    null_instead_of_zero = _frame().with_columns(pl.col("log_ret").fill_null(0.0))
    fewer_rows = _frame().head(2)
    renamed = _frame().rename({"log_ret": "log_return"})
    other_symbol = _frame().with_columns(pl.col("symbol").replace("ETH/USDT", "SOL/USDT"))
    variants = [changed_value, null_instead_of_zero, fewer_rows, renamed, other_symbol]
    fingerprints = {window_fingerprint(v) for v in variants}
    assert base not in fingerprints and len(fingerprints) == len(variants)


def test_the_fingerprint_is_a_window_tag():
    window = DataWindow(("BTC/USDT",), "2024-01-01", "2024-02-01", fingerprint="ab" * 32)
    assert window.tags()["data_fingerprint"] == "ab" * 32
    assert "data_fingerprint" not in DataWindow(("BTC/USDT",), "2024-01-01", "2024-02-01").tags()

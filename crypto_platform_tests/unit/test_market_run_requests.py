"""Market run requests over days × symbols: batching, the rectangle Dagster reads back, splitting."""

from __future__ import annotations

from datetime import date

import pytest

from crypto_platform.defs.market.partitions import market_partitions_def, market_symbol_order
from crypto_platform.defs.market.run_requests import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    SymbolBatch,
    batch_of_run,
    batch_symbols,
    market_run_request,
    split_failed_batch,
)
from crypto_platform.settings import load_settings

ORDER = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"]
D10, D11, D12 = date(2024, 3, 10), date(2024, 3, 11), date(2024, 3, 12)


def _settings():
    return load_settings(
        {
            "CRYPTO_SYMBOLS": ",".join(ORDER),
            "CRYPTO_PARTITIONS_START": "2024-01-01",
            "CRYPTO_MARKET_SOURCE": "simulated",
        }
    )


def test_all_symbols_on_one_range_are_batch_size_symbols_per_run() -> None:
    wanted = {s: (D11, D11) for s in ORDER}
    assert [b.symbol_ids for b in batch_symbols(wanted, ORDER, 2, 31)] == [
        ("BTCUSDT", "ETHUSDT"),
        ("SOLUSDT", "BNBUSDT"),
        ("XRPUSDT",),
    ]
    assert [b.symbol_ids for b in batch_symbols(wanted, ORDER, 64, 31)] == [tuple(ORDER)]


def test_a_symbol_behind_joins_the_batch_and_a_far_gap_does_not() -> None:
    wanted = {"BTCUSDT": (D10, D11), "ETHUSDT": (D11, D11), "SOLUSDT": (date(2022, 1, 1), date(2022, 1, 1))}
    batches = batch_symbols(wanted, ORDER, 64, 31)
    assert batches == [
        SymbolBatch(("BTCUSDT", "ETHUSDT"), D10, D11),
        SymbolBatch(("SOLUSDT",), date(2022, 1, 1), date(2022, 1, 1)),
    ]


def test_symbols_between_wanted_ones_are_in_the_rectangle_unless_excluded() -> None:
    wanted = {"BTCUSDT": (D11, D11), "SOLUSDT": (D11, D11)}
    assert batch_symbols(wanted, ORDER, 64, 31) == [SymbolBatch(("BTCUSDT", "ETHUSDT", "SOLUSDT"), D11, D11)]
    assert batch_symbols(wanted, ORDER, 64, 31, include_unwanted=False) == [
        SymbolBatch(("BTCUSDT",), D11, D11),
        SymbolBatch(("SOLUSDT",), D11, D11),
    ]
    with pytest.raises(ValueError, match="not in the partitions"):
        batch_symbols({"DOGEUSDT": (D11, D11)}, ORDER, 64, 31)


def test_the_request_is_the_rectangle_dagster_expands_to_every_partition() -> None:
    settings = _settings()
    pdef = market_partitions_def(settings)
    assert market_symbol_order(settings) == ORDER
    batch = SymbolBatch(("ETHUSDT", "SOLUSDT", "BNBUSDT"), D10, D11)
    request = market_run_request(batch, run_key="k", tags={"crypto_platform/trigger": "test"})
    assert request.partition_key is None
    assert (request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]) == (
        "2024-03-10|ETHUSDT",
        "2024-03-11|BNBUSDT",
    )
    keys = pdef.get_partition_keys_in_range(request.partition_key_range)
    assert sorted(str(k) for k in keys) == sorted(
        f"{d}|{s}" for d in ("2024-03-10", "2024-03-11") for s in ("ETHUSDT", "SOLUSDT", "BNBUSDT")
    )
    assert batch_of_run(request.tags, pdef) == batch
    # one symbol, one day: a plain partition run
    single = market_run_request(SymbolBatch(("XRPUSDT",), D12, D12), run_key="k", tags={})
    assert str(single.partition_key) == "2024-03-12|XRPUSDT"
    assert batch_of_run({"dagster/partition": "2024-03-12|XRPUSDT"}, pdef) == SymbolBatch(
        ("XRPUSDT",), D12, D12
    )
    assert batch_of_run({}, pdef) is None
    assert (
        batch_of_run({RANGE_START_TAG: "2024-03-10|GONEUSDT", RANGE_END_TAG: "2024-03-10|BTCUSDT"}, pdef)
        is None
    )


def test_a_failed_batch_runs_its_failing_symbols_alone_and_the_rest_together() -> None:
    batch = SymbolBatch(tuple(ORDER), D10, D11)
    assert split_failed_batch(batch, ["SOLUSDT"]) == [
        SymbolBatch(("BTCUSDT", "ETHUSDT"), D10, D11),
        SymbolBatch(("SOLUSDT",), D10, D11),
        SymbolBatch(("BNBUSDT", "XRPUSDT"), D10, D11),
    ]
    assert split_failed_batch(batch, ["BTCUSDT", "XRPUSDT"]) == [
        SymbolBatch(("BTCUSDT",), D10, D11),
        SymbolBatch(("ETHUSDT", "SOLUSDT", "BNBUSDT"), D10, D11),
        SymbolBatch(("XRPUSDT",), D10, D11),
    ]
    # no symbol named (a check or `features` failed): bisect
    assert [tuple(b.symbol_ids) for b in split_failed_batch(batch, [])] == [
        tuple(ORDER[:2]),
        tuple(ORDER[2:]),
    ]
    # every symbol failing is the exchange failing, and one symbol cannot be split: nothing to run
    assert split_failed_batch(batch, ORDER) == []
    assert split_failed_batch(SymbolBatch(("BTCUSDT",), D10, D10), ["BTCUSDT"]) == []

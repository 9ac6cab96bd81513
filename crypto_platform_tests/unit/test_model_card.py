"""lib.model.model_card: the card states the data, folds, every candidate, intervals and the gate's why."""

from __future__ import annotations

import numpy as np
import pytest

from crypto_platform.lib.model.model_card import (
    CARD_ARTIFACT,
    DESCRIPTION_LIMIT,
    mincer_zarnowitz_png,
    model_card_markdown,
    version_description,
)
from crypto_platform.lib.model.walk_forward import (
    Candidate,
    baseline_candidate,
    combination_candidate,
    har_plus_candidate,
    walk_forward,
)
from crypto_platform_tests.unit.test_har_plus import har_plus_windows, random_bars
from crypto_platform_tests.unit.test_walk_forward import _Oracle


@pytest.fixture(scope="module")
def result():
    windows = har_plus_windows(random_bars(13, 3000))
    rng = np.random.default_rng(1)
    fwd = 0.02 * rng.standard_normal(len(windows))
    candidates = [
        *(baseline_candidate(b) for b in ("naive", "ewma", "har")),
        har_plus_candidate(),
        combination_candidate(("har_plus", "har", "ewma")),
    ]
    return walk_forward(windows, candidates, n_folds=3, forward_log_return=fwd)


def test_card_lists_data_folds_every_candidate_intervals_and_the_gate(result):
    decision = result.decide()
    card = model_card_markdown(
        result, decision, "crypto-volatility", "7", {"har_plus.ridge": 1000.0}, source="simulated"
    )
    assert card.startswith("# Model card: crypto-volatility v7")
    assert result.fingerprint in card and "BTC/USDT, ETH/USDT (bars: simulated)" in card
    assert card.count("\n| 0 |") == 1 and "| 2 |" in card  # one row per fold
    for name in result.names:
        assert f"| {name} |" in card or f"| **{name}** |" in card
    assert "### BTC/USDT" in card and "### ETH/USDT" in card
    assert "80 % interval" in card and "nominal 1 %" in card
    assert "- `har_plus.ridge`: 1000.0" in card
    for verdict in decision.verdicts:
        assert f"| {verdict.name} | {'yes' if verdict.passed else 'no'} |" in card
        for reason in verdict.reasons:
            assert reason in card
    if decision.champion == "har":
        assert "No challenger passed: har stays." in card
    else:
        assert f"**{decision.champion} won**" in card
    row = next(line for line in card.splitlines() if line.startswith("| har_plus |"))
    assert f"{result.table.row('har_plus').qlike:.4f}" in row


def test_card_names_the_winner_and_its_evidence(result):
    windows = har_plus_windows(random_bars(13, 3000))
    with_oracle = walk_forward(
        windows,
        [baseline_candidate("har"), Candidate("oracle", lambda t, ctx: _Oracle(ctx.fold))],
        n_folds=3,
    )
    decision = with_oracle.decide()
    card = model_card_markdown(with_oracle, decision)
    improvement = next(v for v in decision.verdicts if v.name == "oracle").improvement
    assert f"**oracle won**: pooled QLIKE {improvement:+.2%} vs har" in card
    assert "lower QLIKE in 3 of 3 folds" in card


def test_mincer_zarnowitz_plot_is_a_png(result):
    png = mincer_zarnowitz_png(result, ["har", "har_plus"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert mincer_zarnowitz_png(result)[:4] == b"\x89PNG"
    with pytest.raises(KeyError):
        mincer_zarnowitz_png(result, ["no_such"])


def test_the_version_description_is_the_card_cut_to_fit_the_registry_column(result):
    decision = result.decide()
    card = model_card_markdown(result, decision, "crypto-volatility", "7", {"har_plus.ridge": 1000.0})
    assert len(version_description(card)) <= DESCRIPTION_LIMIT
    assert version_description(card, limit=len(card)) == card  # fits: unchanged
    # a column too small for the whole card: its longest sections go (never the gate's decision), and
    # a line names what was left out and where the full card is
    limit = len(card) - 200
    cut = version_description(card, limit=limit)
    assert len(cut) <= limit and cut.startswith("# Model card: crypto-volatility v7")
    assert "## Gate decision" in cut and cut.endswith(
        f"The full card is the run's `{CARD_ARTIFACT}` artifact.)*"
    )
    left_out = cut.rsplit("Left out to fit the registry: ", 1)[1].split(". The full card")[0].split(" · ")
    assert left_out and all(f"## {title}" in card and f"## {title}" not in cut for title in left_out)
    kept = [line for line in cut.splitlines() if line.startswith("## ")]
    assert kept == [line for line in card.splitlines() if line.startswith("## ") and line[3:] not in left_out]

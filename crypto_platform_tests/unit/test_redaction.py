"""serving.core.redaction: the shapes credentials take in messages, configured values, and log records."""

from __future__ import annotations

import logging

import pytest

from serving.core.redaction import RedactingFilter, redact, register_secret, register_url_secrets, url_secrets


@pytest.mark.parametrize(
    ("text", "gone", "kept"),
    [
        (
            "API request to http://alice:s3cr3t@mlflow:5000/api failed",
            ["alice", "s3cr3t"],
            ["http://***@mlflow:5000/api"],
        ),
        ("postgresql://crypto:pg-pass_1@postgres:5432/serving", ["pg-pass_1", "crypto:"], ["@postgres:5432"]),
        ("GET /v1?symbol=BTC&api_key=abcdef123456&n=5", ["abcdef123456"], ["symbol=BTC", "&n=5"]),
        ("url https://x.example/p?token=tok-999999#frag", ["tok-999999"], ["token=***#frag"]),
        ("dsn host=db password=hunter2222 user=me", ["hunter2222"], ["host=db", "user=me"]),
        ('{"password": "p@ss-w0rd-x", "symbol": "BTC/USDT"}', ["p@ss-w0rd-x"], ['"symbol": "BTC/USDT"']),
        (
            "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload",
            ["eyJhbGciOiJIUzI1NiJ9"],
            ["Authorization: ***"],
        ),
        ("nothing to hide: BTC/USDT 1h, limit=200, signal=0.3", [], ["BTC/USDT 1h, limit=200, signal=0.3"]),
    ],
)
def test_shapes_of_credentials_are_masked(text, gone, kept):
    out = redact(text)
    for value in gone:
        assert value not in out, out
    for value in kept:
        assert value in out, out


def test_configured_values_are_masked_wherever_they_appear():
    register_secret("pepper-value-0123456789")
    register_url_secrets("http://svc-user:pa%40ss-word@host/")
    assert set(url_secrets("http://u:p%40x@h/")) == {"p%40x", "p@x", "u"}
    out = redact("pepper-value-0123456789 printed apart; password pa@ss-word decoded; user svc-user")
    assert "pepper-value" not in out and "pa@ss-word" not in out and "svc-user" not in out


def test_log_records_are_masked_but_keep_their_arguments():
    record = logging.LogRecord(
        "t",
        logging.WARNING,
        __file__,
        1,
        '%s - "%s %s" %d',
        ("127.0.0.1:5", "GET", "/x?token=abcdef999", 200),
        None,
    )
    assert RedactingFilter().filter(record)
    assert record.args[3] == 200  # numbers stay numbers for %d
    assert record.getMessage() == '127.0.0.1:5 - "GET /x?token=***" 200'
    try:
        raise RuntimeError("failed at http://bob:pw-in-traceback@db/")
    except RuntimeError as exc:
        failing = logging.LogRecord(
            "t", logging.ERROR, __file__, 1, "boom", (), (type(exc), exc, exc.__traceback__)
        )
    RedactingFilter().filter(failing)
    assert "pw-in-traceback" not in logging.Formatter().format(failing)

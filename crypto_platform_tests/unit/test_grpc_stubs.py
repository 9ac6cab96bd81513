"""Stub generation from the .proto (serving/grpc/stubs.py): fresh dir → importable stubs, no rework while
the .proto is unchanged, regeneration when it changes, one generation under concurrent callers."""

from __future__ import annotations

import threading

import pytest

from serving.grpc import stubs


def test_a_fresh_directory_gets_importable_stubs(tmp_path):
    out = tmp_path / "stubs"
    assert not stubs.is_fresh(out)
    pb2, pb2_grpc = stubs.load(out, package="_fresh_crypto_stubs")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        stubs.STAMP,
        "__init__.py",
        "crypto_pb2.py",
        "crypto_pb2.pyi",
        "crypto_pb2_grpc.py",
    ]
    assert pb2.__name__ == "_fresh_crypto_stubs.crypto_pb2"
    methods = [m.name for m in pb2.DESCRIPTOR.services_by_name["CryptoService"].methods]
    assert methods[:6] == [
        "GetOHLCV", "GenerateSignal", "GenerateMLPrediction", "CompareSignals", "HealthCheck", "StreamPrices"
    ]  # fmt: skip
    assert hasattr(pb2_grpc, "CryptoServiceStub") and hasattr(pb2_grpc, "add_CryptoServiceServicer_to_server")
    request = pb2.SignalRequest(symbol="BTC/USDT", horizon_min=240)
    decoded = pb2.SignalRequest.FromString(request.SerializeToString())
    assert decoded.horizon_min == 240 and decoded.HasField("horizon_min") and not decoded.HasField("limit")


def test_unchanged_proto_is_not_regenerated_and_a_changed_one_is(tmp_path):
    out = tmp_path / "stubs"
    stubs.ensure(out)
    generated = out / "crypto_pb2.py"
    before = generated.stat().st_mtime_ns
    stubs.ensure(out)
    assert generated.stat().st_mtime_ns == before

    changed = tmp_path / "proto" / "crypto.proto"
    changed.parent.mkdir()
    changed.write_text(
        stubs.PROTO.read_text().replace(
            "message HealthRequest {}", "message HealthRequest { bool verbose = 1; }"
        )
    )
    assert not stubs.is_fresh(out, changed)
    stubs.ensure(out, changed)
    assert stubs.is_fresh(out, changed) and not stubs.is_fresh(out)
    assert "verbose" in generated.read_text()


def test_concurrent_callers_generate_once(tmp_path, monkeypatch):
    out = tmp_path / "stubs"
    runs: list[int] = []
    real = stubs._protoc
    monkeypatch.setattr(stubs, "_protoc", lambda proto, work: (runs.append(1), real(proto, work)))
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            stubs.ensure(out)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and runs == [1] and stubs.is_fresh(out)


def test_a_broken_proto_fails_loudly_and_leaves_no_stamp(tmp_path):
    broken = tmp_path / "proto" / "crypto.proto"
    broken.parent.mkdir()
    broken.write_text('syntax = "proto3";\npackage crypto;\nmessage Oops { string = 1; }\n')
    with pytest.raises(stubs.StubGenerationError):
        stubs.ensure(tmp_path / "stubs", broken)
    assert not (tmp_path / "stubs" / stubs.STAMP).exists()

"""The framework's ceiling for `benchmarks/serving.py`: a bare Litestar app answering POST
/v1/crypto/ml-signal with the API's own ml-signal response, and nothing else.

No middleware, guards, dependencies, rate limit, metrics or history: the handler decodes the same
request struct (`MLSignalRequest`, so Litestar does the same body parsing and validation), sets a fresh
`timestamp` and returns the same response struct (`MLSignalResponse`, encoded by Litestar's msgspec
encoder, as the API's was before it pre-encoded its bodies). The benchmark captures a real ml-signal
answer from the API first and hands it over in BENCH_ML_SIGNAL_BODY, so both serve byte-for-byte the
same shape. Started with the same uvicorn flags as the API:

    BENCH_ML_SIGNAL_BODY='{...}' uvicorn --factory benchmarks.bare_litestar:create_app
"""

from __future__ import annotations

import os

import msgspec
from litestar import Litestar, get, post

from serving.api.schemas import MLSignalRequest, MLSignalResponse
from serving.api.scoring import iso_now


def create_app() -> Litestar:
    template = msgspec.json.decode(os.environ["BENCH_ML_SIGNAL_BODY"].encode(), type=MLSignalResponse)

    @post("/v1/crypto/ml-signal", status_code=200)
    async def ml_signal(data: MLSignalRequest) -> MLSignalResponse:
        return msgspec.structs.replace(template, timestamp=iso_now())

    @get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar(route_handlers=[ml_signal, health])

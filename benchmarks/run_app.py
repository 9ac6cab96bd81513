"""Run an ASGI app factory under uvicorn for benchmarks/serving.py, on one worker, with the connection
settings `crypto-platform serve` uses (crypto_platform.commands.serve.server_options): the API and the
bare Litestar app are then served the same way, and the way production serves.

    python -m benchmarks.run_app serving.api.app:create_app_from_env 8800   (from the repository root)
"""

from __future__ import annotations

import sys

import uvicorn

from crypto_platform.commands.serve import server_options


def main() -> None:
    factory, port = sys.argv[1], int(sys.argv[2])
    uvicorn.run(
        factory,
        factory=True,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        **server_options(trusted_proxies=()),
    )


if __name__ == "__main__":
    main()

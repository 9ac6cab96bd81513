"""Development and test tooling, kept out of the runtime packages.

- `kafka`: `crypto-platform kafka-local`, a local Apache Kafka (KRaft) broker from Maven Central jars;
- `replay`: `crypto-platform exchange-replay`, a Binance-compatible replay server with fault injection
  and a movable clock, so ccxt runs unmodified offline;
- `ports`: free loopback ports for the above, the test fixtures and the benchmarks.

Nothing under `crypto_platform.lib`, `crypto_platform.defs` or `serving` imports this package.
"""

"""A local single-node Apache Kafka broker (KRaft) from Maven Central: `crypto-platform kafka-local`."""

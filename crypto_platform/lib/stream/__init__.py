"""Streaming domain core: tick encoding/validation, bar aggregation and alert rules for the Kafka
scorer. Pure Python and polars; no aiokafka (the process lives in `serving/stream`)."""

"""Streaming processes on Kafka (aiokafka): the tick producer, the scorer, topic configuration and a
local single-node broker for development and tests."""

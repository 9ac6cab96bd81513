"""The served-model core every face shares: REST (serving.api), GraphQL, gRPC and the Kafka scorer.

`model_store` (the champion loaded from the MLflow registry), `market` (closed bars from the store or
the live source) and `auth` (key → role → allowed?). Nothing here imports a web or messaging framework.
"""

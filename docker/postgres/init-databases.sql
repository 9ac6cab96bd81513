-- Runs once, when the postgres volume is first initialised (docker-entrypoint-initdb.d), as
-- POSTGRES_USER: one database per consumer so each keeps its own schema migrations.
--   dagster  runs, event log, schedules (dagster-postgres; docker/dagster/dagster.yaml)
--   mlflow   tracking store and model registry (`mlflow server --backend-store-uri`)
--   serving  the API's signal and prediction history (CRYPTO_API_HISTORY_URL)
CREATE DATABASE dagster;
CREATE DATABASE mlflow;
CREATE DATABASE serving;

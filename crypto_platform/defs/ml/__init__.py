"""The `ml` group of the code location: model training, promotion, drift, and their automation.

`assets.py` (trained_model → model_promotion → feature_drift), `checks.py`, `sensors.py`, `schedules.py`,
`config.py` (run config and automation constants). Its resources (`mlflow`, `ml`) are built with the
others in `defs/resources.py`; crypto_platform/definitions.py wires everything.
"""

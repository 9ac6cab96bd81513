"""The `reports` group of the code location: the daily report asset, its job and its schedule."""

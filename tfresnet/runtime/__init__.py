"""Where and how a run computes: devices, cluster and strategy, precision, provenance."""

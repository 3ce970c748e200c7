"""Experiments: grids of pipeline runs, aggregated into one results JSON with tables."""

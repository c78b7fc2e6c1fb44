"""Reliability tests: kills, concurrency, bad input, properties and secrets (see conftest.py)."""

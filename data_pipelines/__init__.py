"""Offline data jobs (corpus builders, demo corpus)."""

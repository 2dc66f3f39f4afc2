"""convert.io."""

"""convert.decoder."""

"""convert.whisper."""

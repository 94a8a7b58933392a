"""Does k-Adam train better than AdamW? The comparison protocol (see :mod:`.protocol`)."""

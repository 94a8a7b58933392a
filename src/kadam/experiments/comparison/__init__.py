"""Does k-Adam train better than AdamW? The comparison protocol of issue 12 (see :mod:`.protocol`)."""

"""Section 4: k-Adam in training against Adam and AdamW: protocol, analysis, section, plots."""

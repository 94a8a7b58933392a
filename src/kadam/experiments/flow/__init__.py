"""Section 2: the continuous-time model against the real KAdam (THEORY §3): protocol, section, plots."""

"""Section 3: normalization and the meta-adaptive effect (THEORY §4): protocol, section, plots."""

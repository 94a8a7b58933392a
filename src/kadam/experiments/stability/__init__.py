"""Section 1: the stability of (β, γ) (THEORY §2, §3, §5): protocol, analysis, section, plots."""

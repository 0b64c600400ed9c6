"""Offline evaluation: a leak-free temporal split, metrics with confidence intervals, and tuned baselines."""

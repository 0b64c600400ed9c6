"""Offline work on public data sets: data readers, a leak-free temporal split, metrics with
confidence intervals, tuned baselines, evaluation protocols and LoRA training.

Nothing here runs in the serving path; it uses only the public interfaces of the engine stages.
"""

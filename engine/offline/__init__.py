"""Offline work on public data sets: data readers, evaluation protocols, baselines and LoRA training.

Nothing here runs in the serving path; it uses only the public interfaces of the engine stages.
"""

"""Learned two-stage recommender: stage-1 candidate models (ALS, transitions, co-occurrence, content, popularity, a
SASRec-style sequence model) and a LightGBM ranker over their pool. numpy / scipy / implicit / lightgbm, and torch to
train the sequence model (serving it is numpy); no store access.

Entry point: ``PersonaModel.fit(events, items, item_embeddings, LearnedConfig())`` then ``recommend`` / ``rank`` /
``save`` / ``load``. See ``model.py`` for the fit protocol.
"""

from .config import LearnedConfig
from .index import event_sort_key, tie_key
from .model import PersonaModel

__all__ = ["LearnedConfig", "PersonaModel", "event_sort_key", "tie_key"]

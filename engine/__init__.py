"""Persona: retrieval-augmented multimodal personalization.

    from engine import Engine
    with Engine.open("./data") as eng:
        eng.add_items(items); eng.add_events(events)
        eng.recommend("42", k=10)
"""

import typing as _t

from .config import Settings
from .errors import (
    BackendUnavailableError,
    ConflictError,
    DependencyMissingError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    PersonaError,
    PromptTemplateError,
    http_status,
)
from .types import (
    DeleteReport,
    Event,
    EventReport,
    Explanation,
    FitReport,
    IngestReport,
    Item,
    ItemError,
    ItemScore,
    Profile,
    Recommendation,
    Recommendations,
    SearchHit,
    SummaryVersion,
)

if _t.TYPE_CHECKING:
    from .engine import Engine

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "ConflictError",
    "DeleteReport",
    "DependencyMissingError",
    "Engine",
    "Event",
    "EventReport",
    "Explanation",
    "FitReport",
    "IngestReport",
    "InvalidInputError",
    "Item",
    "ItemError",
    "ItemScore",
    "NotFoundError",
    "OverloadedError",
    "PersonaError",
    "Profile",
    "PromptTemplateError",
    "Recommendation",
    "Recommendations",
    "SearchHit",
    "Settings",
    "SummaryVersion",
    "__version__",
    "http_status",
]


def __getattr__(name: str) -> _t.Any:
    # Engine pulls in the store and numpy; keep `import engine` light for config/types users.
    if name == "Engine":
        from .engine import Engine

        return Engine
    raise AttributeError(f"module 'engine' has no attribute {name!r}")

"""Adapters to other frameworks; each module imports its framework only when it is imported
itself (the framework is an extra), e.g. :mod:`engine.integrations.langchain`."""

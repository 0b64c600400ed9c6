"""Prompt templates: files in ``prompts/`` named ``NAME.vN.j2``, rendered in a sandboxed Jinja
environment with strict undefined variables. Untrusted text (item descriptions, reviews, summaries)
goes through the ``fence`` filter, which quotes it as data and strips anything that could close the fence."""

from __future__ import annotations

import re
import sys
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import FunctionLoader, StrictUndefined, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

from .errors import NotFoundError, PromptTemplateError

__all__ = ["PromptRegistry", "PromptTemplate", "fence"]

_FILE = re.compile(r"^(?P<name>[a-z0-9_]+)\.v(?P<version>\d+)\.j2$")
# Anything a reader could take for a fence mark: runs of angle brackets (spaced too) or guillemets, code fences.
_FENCE_MARK = re.compile(r"(?:<\s*){2,}|(?:>\s*){2,}|(?:`\s*){3,}|[«»‹›]{2,}")


def fence(value: Any, limit: int = 600) -> str:
    """Quote untrusted text as inert data: one line, no control characters, no fence markers, bounded."""
    text = unicodedata.normalize("NFKC", "" if value is None else str(value))  # fullwidth ＞＞＞ is >>> after this
    # invisible format characters (zero-width joiners...) go, so they cannot split a fence mark; other controls become spaces
    text = "".join("" if (cat := unicodedata.category(c)) == "Cf" else " " if cat[0] == "C" else c for c in text)
    text = _FENCE_MARK.sub(" ", text)
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return f"<<<{text}>>>"


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: int
    path: Path
    source: str

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"


class PromptRegistry:
    """Packaged templates, overridden by files of the same name in ``override_dir``."""

    def __init__(self, override_dir: Path | None = None, pins: dict[str, int] | None = None) -> None:
        self.pins = dict(pins or {})
        self.env = ImmutableSandboxedEnvironment(
            loader=FunctionLoader(self._load),
            undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=False
        )
        self.env.filters["fence"] = fence
        self._templates: dict[tuple[str, int], PromptTemplate] = {}
        dirs = [Path(str(resources.files("prompts")))]
        if override_dir is not None:
            dirs.append(Path(override_dir))
        for d in dirs:
            for path in sorted(d.glob("*.j2")):
                m = _FILE.match(path.name)
                if m:
                    key = (m["name"], int(m["version"]))
                    self._templates[key] = PromptTemplate(key[0], key[1], path, path.read_text(encoding="utf-8"))

    def _load(self, key: str) -> tuple[str, str, Any]:
        name, _, ver = key.rpartition(".v")
        tpl = self._templates[(name, int(ver))]
        return tpl.source, str(tpl.path), lambda: True

    def list(self) -> list[PromptTemplate]:
        return [self._templates[k] for k in sorted(self._templates)]

    def get(self, ref: str) -> PromptTemplate:
        """``name`` (pinned version, else the latest), ``name@vN`` or ``name@N``."""
        name, _, ver = ref.partition("@")
        versions = sorted(v for (n, v) in self._templates if n == name)
        if not versions:
            raise NotFoundError(f"no prompt named {name!r}; known: {sorted({n for n, _ in self._templates})}")
        if not ver:
            pinned = self.pins.get(name)
            if pinned is not None and (name, pinned) in self._templates:
                return self._templates[(name, pinned)]
            return self._templates[(name, versions[-1])]
        try:
            v = int(ver.lstrip("v"))
        except ValueError as e:
            raise NotFoundError(f"bad prompt version {ver!r} in {ref!r}") from e
        if (name, v) not in self._templates:
            raise NotFoundError(f"prompt {name!r} has no version {v}; known: {versions}")
        return self._templates[(name, v)]

    def render(self, ref: str, **context: Any) -> str:
        tpl = self.get(ref)
        try:
            compiled = self.env.get_template(f"{tpl.name}.v{tpl.version}")
        except TemplateSyntaxError as e:
            raise PromptTemplateError(f"{tpl.path}:{e.lineno}: syntax error: {e.message}") from e
        try:
            return compiled.render(**context).strip()  # completion prompts must end right where the answer starts
        except (SecurityError, TemplateError) as e:
            line = _template_line(tpl.path)
            kind = "unsafe operation blocked" if isinstance(e, SecurityError) else "render error"
            raise PromptTemplateError(f"{tpl.path}:{line or '?'}: {kind}: {e}") from e

    def check(self, ref: str) -> None:
        """Compile a template (syntax only); raises PromptTemplateError naming file and line."""
        tpl = self.get(ref)
        try:
            self.env.parse(tpl.source)
        except TemplateSyntaxError as e:
            raise PromptTemplateError(f"{tpl.path}:{e.lineno}: syntax error: {e.message}") from e


def _template_line(path: Path) -> int | None:
    """Line of the template being rendered when the current exception was raised."""
    tb = sys.exc_info()[2]
    line = None
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename == str(path):
            line = tb.tb_lineno
        tb = tb.tb_next
    return line

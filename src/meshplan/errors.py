"""The one exception type for bad input."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


class PlanError(ValueError):
    """Invalid input: the message names the field, the value and the fix, on one line."""


def suggest(name: str, choices: Iterable[str], limit: int = 3) -> str:
    """A ' Did you mean: a, b?' suffix listing the closest names, or '' when none is close."""
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=limit, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean: " + ", ".join(lowered[c] for c in close) + "?"


def first_error(exc: ValidationError) -> tuple[str, str, Any]:
    """Where (dotted field path), what (pydantic's message) and the value of a validation's first error: the
    parts every one-line message about bad input is made of."""
    err = exc.errors()[0]
    return ".".join(str(p) for p in err["loc"]), str(err["msg"]), err.get("input")

"""Declarative checks for the JSON documents edgeseg reads back (bundle manifests, run folders).

A check is a function `(value, path)` that raises `Invalid(path, problem)`; `validate` turns the first
problem into a one-line EdgesegError naming the file and the field, e.g.
`b/edgeseg.json: invalid manifest: artifacts.int8.input.height must be an integer >= 1, got 'sixty'`.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath
from typing import Any, Callable, Optional

from .errors import EdgesegError

Check = Callable[[Any, str], None]


class Invalid(Exception):
    """A value that breaks its check, at a field path such as `artifacts.int8.file` or `palette[2]`."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path} {problem}" if path else problem)


def show(value: Any) -> str:
    """A short rendering of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _bounds(low: Optional[float], high: Optional[float], above: Optional[float] = None) -> str:
    parts = [f">= {low}"] if low is not None else []
    parts += [f"> {above}"] if above is not None else []
    parts += [f"<= {high}"] if high is not None else []
    return " " + " and ".join(parts) if parts else ""


def integer(low: Optional[int] = None, high: Optional[int] = None) -> Check:
    def check(value: Any, path: str) -> None:
        if (isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low)
                or (high is not None and value > high)):
            raise Invalid(path, f"must be an integer{_bounds(low, high)}, got {show(value)}")
    return check


def number(low: Optional[float] = None, high: Optional[float] = None, above: Optional[float] = None) -> Check:
    """A finite int or float within the bounds (`above`: strictly greater)."""
    def check(value: Any, path: str) -> None:
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or (low is not None and value < low) or (high is not None and value > high)
                or (above is not None and value <= above)):
            raise Invalid(path, f"must be a finite number{_bounds(low, high, above)}, got {show(value)}")
    return check


def text(*choices: str) -> Check:
    """A non-empty string (one of `choices` if given)."""
    def check(value: Any, path: str) -> None:
        if not isinstance(value, str) or not value:
            raise Invalid(path, f"must be a non-empty string, got {show(value)}")
        if choices and value not in choices:
            raise Invalid(path, f"must be one of {', '.join(choices)}, got {show(value)}")
    return check


def matching(pattern: str, what: str) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, str) or not re.fullmatch(pattern, value):
            raise Invalid(path, f"must be {what}, got {show(value)}")
    return check


def boolean(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        raise Invalid(path, f"must be true or false, got {show(value)}")


def anything(value: Any, path: str) -> None:
    """Any JSON value (a field kept as it is)."""


def optional(inner: Check) -> Check:
    """`inner`, or null."""
    def check(value: Any, path: str) -> None:
        if value is not None:
            inner(value, path)
    return check


def relative_file(value: Any, path: str) -> None:
    """A file name inside the document's folder: relative, no `..`, no backslashes."""
    if (not isinstance(value, str) or not value or "\\" in value or PurePosixPath(value).is_absolute()
            or ".." in PurePosixPath(value).parts):
        raise Invalid(path, f"must name a file inside the folder, got {show(value)}")


def list_of(item: Check, length: Optional[int] = None, min_length: int = 0) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, (list, tuple)):
            raise Invalid(path, f"must be a list, got {show(value)}")
        if length is not None and len(value) != length:
            raise Invalid(path, f"must have {length} entries, has {len(value)}")
        if len(value) < min_length:
            raise Invalid(path, f"must have at least {min_length} entries, has {len(value)}")
        for i, v in enumerate(value):
            item(v, f"{path}[{i}]")
    return check


def dict_of(item: Check, key: Check = text(), min_length: int = 0) -> Check:
    """A JSON object whose keys pass `key` and values pass `item`."""
    def check(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise Invalid(path, f"must be an object, got {show(value)}")
        if len(value) < min_length:
            raise Invalid(path, f"must have at least {min_length} entries, has {len(value)}")
        for k, v in value.items():
            where = f"{path}.{k}" if path else str(k)
            key(k, where)
            item(v, where)
    return check


def record(fields: Mapping[str, Check], required: Iterable[str] = (), open_ended: bool = False) -> Check:
    """A JSON object with these `fields` (those in `required` must be present); other keys are an
    error unless `open_ended`."""
    required = tuple(required)

    def check(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise Invalid(path, f"must be an object, got {show(value)}")
        prefix = f"{path}." if path else ""
        for name in required:
            if name not in value:
                raise Invalid(f"{prefix}{name}", "is missing")
        for name, v in value.items():
            if name in fields:
                fields[name](v, f"{prefix}{name}")
            elif not open_ended:
                raise Invalid(f"{prefix}{name}", "is not a known field")
    return check


def validate(data: Any, check: Check, source: str, what: str) -> None:
    """Raise a one-line EdgesegError (`SOURCE: invalid WHAT: FIELD problem`) if `data` fails `check`."""
    try:
        check(data, "")
    except Invalid as exc:
        raise EdgesegError(f"{source}: invalid {what}: {exc}") from None


RGB = list_of(integer(0, 255), length=3)

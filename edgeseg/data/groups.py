"""Recording groups: which video (or session) each sample comes from.

Frames of one recording are near-duplicates, so a validation split drawn from recordings that are also in
training measures memory, not accuracy on new footage. A sample's group comes from a regular expression on
its file name: the first capture group if the pattern has one, else the whole match. CamVid's (and the
synthetic data's) `<recording>_<frame>.png` names give the prefix before the first `_` without a flag;
`dataset.yaml` may set `group_pattern`, and `--group-pattern` overrides both.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from edgeseg.runtime.errors import EdgesegError

#: The prefix before the first `_` (CamVid's `<sequence>_<frame>.png`).
PREFIX_PATTERN = r"^([^_]+)_"
#: The warning shown wherever an evaluation split shares recordings with the training data.
OVERLAP_WARNING = ("{what} frames come from recordings also in train ({groups}): its mIoU will overstate "
                   "accuracy on new footage")


def compile_pattern(pattern: str, where: str = "--group-pattern") -> re.Pattern[str]:
    """The compiled group pattern; a one-line error names `where` it came from when it is invalid."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise EdgesegError(f"{where}: invalid group pattern {pattern!r} ({exc})") from None


def group_of(path: Path, pattern: re.Pattern[str] | None) -> str | None:
    """The group of the file at `path` (its stem searched with `pattern`), or None where it does not match."""
    if pattern is None:
        return None
    match = pattern.search(path.stem)
    if not match:
        return None
    return match.group(1) if pattern.groups else match.group(0)


def parse_groups(text: str | None) -> list[str]:
    """'a,b' -> ['a', 'b'] (empty names dropped)."""
    return [g.strip() for g in (text or "").split(",") if g.strip()]


def counts(groups: Iterable[str | None]) -> dict[str, int]:
    """Frames per group, in name order (frames without a group counted under '?')."""
    tally = Counter(g if g is not None else "?" for g in groups)
    return dict(sorted(tally.items()))


def shared(train_groups: Iterable[str | None], eval_groups: Iterable[str | None]) -> list[str]:
    """Groups (recordings) present in both; frames without a known group never count as shared."""
    return sorted({g for g in train_groups if g is not None} & {g for g in eval_groups if g is not None})


def overlap_warning(what: str, train_groups: Iterable[str | None], eval_groups: Sequence[str | None]) -> str | None:
    """The one-line warning when `what` (e.g. 'val') shares recordings with training, else None."""
    common = shared(train_groups, eval_groups)
    return OVERLAP_WARNING.format(what=what, groups=", ".join(common)) if common else None

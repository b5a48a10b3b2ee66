"""One-line summaries of a bundle's evaluation, shared by export, info, build and bench."""
from __future__ import annotations

from collections.abc import Sequence


def heldout_line(heldout: dict) -> str:
    """'held-out estimate (groups never trained on: G): mIoU INT8 x, float y (n frames)', plus how many
    group folds were pooled when there were several."""
    parts = [f"{'INT8' if name == 'int8' else name} {heldout[name]['miou'] * 100:.2f}"
             for name in ("int8", "float") if isinstance(heldout.get(name), dict)]
    figures = ", ".join(parts) or f"{heldout['miou'] * 100:.2f}"
    return (f"held-out estimate (groups never trained on: {', '.join(heldout['groups'])}): mIoU {figures} "
            f"({heldout['num_images']} frames{_pooled(heldout.get('folds', ()))})")


def _pooled(folds: Sequence[dict]) -> str:
    return f", {len(folds)} group folds pooled" if len(folds) > 1 else ""

"""The activity regularizer's sums over output tiles as they are computed (the formulas are layer/regularizers.py's)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..layer.regularizers import l1_l2


class ActivityAccumulator:
    """Sums |y| and y^2 over output tiles, for an `activity_regularizer` of the l1/l2 family."""

    def __init__(self, regularizer: Mapping[str, Any] | None) -> None:
        self.regularizer = regularizer
        self.sum_abs = 0.0
        self.sum_sq = 0.0
        self.tiles = 0
        self.active = regularizer is not None and regularizer["name"] != "orthogonal_regularizer"

    def add(self, y: Any) -> None:
        """Add one output tile (a torch tensor, any layout); a no-op without an activity regularizer."""
        if not self.active:
            return
        with torch.inference_mode():
            # Views over the first two axes: the float64 upcast never holds more than one block of a tile.
            blocks = [b for outer in y.detach().unbind(0) for b in outer.unbind(0)] if y.ndim >= 3 else [y.detach()]
            for block in blocks:
                self.sum_abs += float(torch.linalg.vector_norm(block, 1, dtype=torch.float64))
                self.sum_sq += float(torch.linalg.vector_norm(block, 2, dtype=torch.float64)) ** 2
        self.tiles += 1

    def value(self, batch: int) -> float:
        cfg = self.regularizer["config"]  # type: ignore[index]
        return l1_l2(cfg.get("l1", 0.0), cfg.get("l2", 0.0), self.sum_abs, self.sum_sq) / max(int(batch), 1)

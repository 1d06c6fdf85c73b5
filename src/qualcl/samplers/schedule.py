"""``CosineCountSchedule``: CoMCL's shrinking number of hard negatives ``K_t``."""

from __future__ import annotations

import math

__all__ = ["CosineCountSchedule"]


class CosineCountSchedule:
    r"""``K_t = max(min_count, floor(total * cos(pi t / (2 max_steps))))``.

    All candidates at ``t = 0``, shrinking to the hardest ``min_count`` at ``t = max_steps``: a
    hardening curriculum. ``t`` is clamped to ``[0, max_steps]`` and ``K_t`` to ``[1, total]``.

    Args:
        total: The total number of negatives ``delta``; ``None`` means "all candidates", resolved
            per call from the ``total`` argument of :meth:`__call__`.
        max_steps: ``T_max``, the last training step, ``>= 1``.
        min_count: Floor of ``K_t``, ``>= 1`` (the formula reaches 0 at ``T_max``).

    Examples:
        >>> schedule = CosineCountSchedule(total=100, max_steps=10)
        >>> [schedule(t) for t in (0, 5, 10)]
        [100, 70, 1]
        >>> CosineCountSchedule(None, max_steps=4)(2, total=8)
        5

    Reference:
        CoMCL (Hou et al., MICCAI 2024), Sec. 2.2: ``K_t = floor(delta * cos(pi t / (2 T_max)))``.
    """

    def __init__(self, total: int | None, max_steps: int, min_count: int = 1) -> None:
        for name, value, low in (("max_steps", max_steps, 1), ("min_count", min_count, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 1):
            raise ValueError(f"total must be a positive integer or None, got {total!r}")
        self.total = total
        self.max_steps = max_steps
        self.min_count = min_count

    def __repr__(self) -> str:
        return f"CosineCountSchedule(total={self.total}, max_steps={self.max_steps}, min_count={self.min_count})"

    def __call__(self, step: int, total: int | None = None) -> int:
        """Return ``K_t`` at integer ``step``; ``total`` is required when ``self.total`` is None."""
        delta = self.total if self.total is not None else total
        if delta is None:
            raise ValueError("total must be given: this schedule was built with total=None (all candidates)")
        if delta < 1:
            raise ValueError(f"total must be >= 1, got {delta}")
        t = min(max(int(step), 0), self.max_steps)
        count = math.floor(delta * math.cos(math.pi * t / (2 * self.max_steps)))
        return min(delta, max(self.min_count, count))

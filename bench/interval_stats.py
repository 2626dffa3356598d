"""Measures over recorded calls and starts: concurrency overlap, slot utilisation, starts per window.

Shared by the flow-control tests and ``bench/limits.py`` so both judge the limits the same way.
"""

from __future__ import annotations


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant (a departure at t frees the slot before an arrival at t)."""
    points = sorted([(a, 1) for a, _ in intervals] + [(d, -1) for _, d in intervals], key=lambda p: (p[0], p[1]))
    best = current = 0
    for _, step in points:
        current += step
        best = max(best, current)
    return best


def utilisation(intervals: list[tuple[float, float]], slots: int) -> float:
    """Busy slot-time / (slots × span), span = first arrival → last departure."""
    span = max(d for _, d in intervals) - min(a for a, _ in intervals)
    return sum(d - a for a, d in intervals) / (slots * span)


def max_starts_in_window(starts: list[float], window_secs: float) -> int:
    """Most starts in any half-open interval [t, t + window) with t at a recorded start (where maxima lie)."""
    ordered = sorted(starts)
    best, j = 0, 0
    for i, t in enumerate(ordered):
        j = max(j, i)
        while j < len(ordered) and ordered[j] < t + window_secs:
            j += 1
        best = max(best, j - i)
    return best


def achieved_rate_fraction(starts: list[float], limit: int, window_secs: float) -> float:
    """Starts per second over (first start → last start + one window), as a fraction of limit / window.

    A perfectly packed log of ``k × limit`` starts (bursts of ``limit`` every ``window``) scores 1.0.
    """
    span = max(starts) - min(starts) + window_secs
    return (len(starts) / span) / (limit / window_secs)

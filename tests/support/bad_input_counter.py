"""How many generated bad-input cases ran, by family (tests/unit/test_bad_input_property.py).

The property tests count every case they run and every case that ended as it must; the
``pytest_terminal_summary`` hook in tests/conftest.py prints the totals, so a run shows how much
was tried, not only that nothing failed.
"""

from __future__ import annotations

from collections import Counter

FAMILIES = ("configs", "data files", "CLI", "resource plans")
TRIED: Counter = Counter()
CLEAN: Counter = Counter()  # ended as required (exit 2, one line, nothing left behind, ...)


def tried(family: str) -> None:
    TRIED[family] += 1


def clean(family: str) -> None:
    CLEAN[family] += 1


def summary() -> str | None:
    """The line for the terminal summary, or None when no case ran."""
    total = sum(TRIED.values())
    if not total:
        return None
    parts = ", ".join(f"{family} {TRIED[family]}" for family in FAMILIES if TRIED[family])
    failed = total - sum(CLEAN.values())
    if failed:
        outcome = f"{failed} did not end cleanly (see the failures above)"
    else:
        outcome = "every one exit 2 with one line" if total - TRIED["resource plans"] else ""
        if TRIED["resource plans"]:
            outcome += (" (plans: a ResourceError with the numbers)" if outcome
                        else "every plan a ResourceError with the numbers")
    return f"bad-input property tests: {total} cases tried ({parts}), {outcome}"

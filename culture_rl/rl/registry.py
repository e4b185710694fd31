"""Name -> function tables for pluggable pieces (advantage estimators, losses, KL estimators,
rewards): adding one is one decorated function."""

from __future__ import annotations

from typing import Callable


class Registry(dict):
    def __init__(self, what: str):
        super().__init__()
        self.what = what  # named in errors, e.g. "advantage estimator"

    def register(self, name: str):
        def decorate(fn: Callable) -> Callable:
            if name in self:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self[name] = fn
            return fn
        return decorate

    def lookup(self, name: str) -> Callable:
        if name not in self:
            raise KeyError(f"unknown {self.what} {name!r}; registered: {', '.join(sorted(self))}")
        return self[name]

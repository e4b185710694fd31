"""One piece of work run on a background thread while the caller does something else: the PPO
controller's next rollout (``ppo.overlap_rollout``), generated while this step trains.

A daemon thread rather than an executor: a thread still blocked in ``ray.get`` when the run
fails must not hold the interpreter open at exit (an executor's threads are joined then).
"""

from __future__ import annotations

import threading
from typing import Any, Callable


class Prefetch:
    """Starts ``work()`` at once; ``wait()`` blocks until it ends, ``result()`` returns what it
    returned or raises what it raised (in the caller's thread, so the caller's error handling
    and messages apply). ``tag`` is what the caller needs to know about it later."""

    def __init__(self, work: Callable[[], Any], tag: Any = None, name: str = "prefetch"):
        self.tag = tag
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(work,), name=name, daemon=True)
        self._thread.start()

    def _run(self, work: Callable[[], Any]) -> None:
        try:
            self._value = work()
        except BaseException as error:  # noqa: BLE001 -- re-raised by result()
            self._error = error

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self, timeout: float | None = None) -> bool:
        """True when the work has ended (within ``timeout`` seconds)."""
        self._thread.join(timeout)
        return self.done()

    def result(self) -> Any:
        self.wait()
        if self._error is not None:
            raise self._error
        return self._value

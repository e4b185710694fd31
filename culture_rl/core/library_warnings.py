"""Silence deprecation warnings that our dependencies raise from their own internal calls.

Every Ray worker process (Ray Train ranks, PPO trainers, generators) prints each of these once,
so a demo's log carried ~20 copies of warnings no user can act on: DeepSpeed's ZeRO calls
torch's deprecated ``all_gather_into_tensor``, and TRL and peft read transformers' deprecated
``is_gradient_checkpointing``. Only these exact messages are filtered; every other warning,
ours or a library's, still shows.
"""

from __future__ import annotations

import warnings

# Message starts (regular expressions, matched at the start of the warning's text).
LIBRARY_DEPRECATIONS = (
    r"`torch\.distributed\.all_gather_into_tensor` is deprecated",  # DeepSpeed ZeRO, torch 2.13
    r"`is_gradient_checkpointing` is deprecated",  # TRL, peft, transformers 5.23
)


def silence_library_deprecations() -> None:
    for message in LIBRARY_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)

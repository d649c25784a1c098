"""Process plumbing shared by the agent's zygote, ``berth up`` and the local launcher."""

from __future__ import annotations

import contextlib
import ctypes
import signal

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux).

    Use as ``preexec_fn`` or call first thing in a forked child: a parent killed
    hard (SIGKILL, OOM) then leaves no orphans holding ports, GPUs or NATS
    connections. Elsewhere this is a no-op.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)

"""Preemption: SIGTERM / SIGUSR1 (what SLURM sends before it kills a job) set a flag.

The loop checks the flag at its sync points and all ranks agree on it with one
all-reduce, so every rank stops at the same step; rank 0 then writes a checkpoint
and the job exits cleanly, ready for ``resume=auto`` after a requeue.

A signal always ends the process, even when the loop cannot reach a sync point (a
data stream stuck on a dead file system, a hung collective): a second signal takes
the default action at once, and ``grace_s`` after the first the process exits with
128 + the signal's number.

A rank started by a launcher (``accelerate launch``, ``torchrun``) lives in its own
session, so a signal to the launcher's process group never reaches it; a launcher
that dies of that signal would leave its ranks training on as orphans. Each such
rank therefore asks the kernel for a signal when its parent dies (Linux
``PR_SET_PDEATHSIG``): orphaned ranks checkpoint and stop like preempted ones. The
signal is a real-time one of its own, not SIGTERM: the kernel sends it again as each
of the dying launcher's threads exits, and those repeats must not count as the
"second signal" that ends a process at once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from typing import Dict, Mapping, Optional

import torch

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
LAUNCHER_ENV = "TORCHELASTIC_RUN_ID"  # set by torchrun and accelerate launch in every rank they start
PARENT_DIED = getattr(signal, "SIGRTMIN", 0) + 2  # Linux real-time signal; no one else sends it


def signal_when_parent_dies(signum: int) -> bool:
    """Have the kernel send ``signum`` to this process when its parent exits (0: no longer); False where unsupported."""
    if not sys.platform.startswith("linux") or not hasattr(signal, "SIGRTMIN"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if signum and (parent == 1 or os.getppid() != parent):  # the parent died before the request took effect
        os.kill(os.getpid(), signum)
    return True


def launched_rank(environ: Mapping[str, str] = os.environ) -> bool:
    """True in a process started by a torchelastic launcher."""
    return LAUNCHER_ENV in environ


class PreemptionFlag:
    """Installs handlers on creation (main thread only); ``restore()`` puts the old ones back."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
    # A repeat this soon after the first is the same notice arriving by a second path, not a second request:
    # under SLURM, srun signals every process of the step and the launcher forwards the signal to its ranks too.
    RELAYED_WITHIN_S = 0.25

    def __init__(self, grace_s: float = 300.0) -> None:
        self.signal_name = ""
        self.grace_s = grace_s
        self._deadline: Optional[threading.Timer] = None
        self._old: Dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
            if launched_rank() and hasattr(signal, "SIGRTMIN"):
                self._old[PARENT_DIED] = signal.signal(PARENT_DIED, self._parent_died)
                self._watching_parent = signal_when_parent_dies(PARENT_DIED)

    _watching_parent = False
    _first_at = 0.0

    def _handle(self, signum, _frame) -> None:
        if self.signal_name and time.monotonic() - self._first_at < self.RELAYED_WITHIN_S:
            return  # the same notice, relayed
        if self.signal_name:  # asked twice: stop now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self._raise(signal.Signals(signum).name, signum)

    def _parent_died(self, _signum, _frame) -> None:
        """The launcher is gone: stop as on SIGTERM. Repeats (one per exiting launcher thread) change nothing."""
        if not self.signal_name:
            self._raise("launcher gone", signal.SIGTERM)

    def _raise(self, name: str, signum: int) -> None:
        self.signal_name = name
        self._first_at = time.monotonic()
        self._deadline = threading.Timer(self.grace_s, self._expire, args=(signum,))
        self._deadline.daemon = True
        self._deadline.start()

    def _expire(self, signum: int) -> None:
        """The loop did not reach a sync point in time: leave without the checkpoint."""
        print(f"{signal.Signals(signum).name} {self.grace_s:g} s ago and no sync point reached: exiting without "
              "a checkpoint (resume=auto continues from the last one)", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    @property
    def raised(self) -> bool:
        return bool(self.signal_name)

    def agreed(self, accelerator) -> bool:
        """True on every rank if any rank was signalled."""
        if accelerator.num_processes == 1:
            return self.raised
        flag = torch.tensor([1.0 if self.raised else 0.0], device=accelerator.device)
        flag = accelerator.reduce(flag, reduction="sum")
        if flag.item() > 0 and not self.signal_name:
            self.signal_name = "peer"
        return flag.item() > 0

    def restore(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        if self._watching_parent:
            signal_when_parent_dies(0)
            self._watching_parent = False
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

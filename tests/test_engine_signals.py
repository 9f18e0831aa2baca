"""Preemption signals: the first asks for a clean stop at the next sync point, and the
process always ends, even when that sync point never comes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from conftest import REPO

WAITER = """
import sys, time
sys.path.insert(0, {repo!r})
from dist_gan.engine.signals import PreemptionFlag
flag = PreemptionFlag(grace_s={grace})
print("ready", flush=True)
time.sleep(120)  # a loop that never reaches its sync point
"""


def _start(grace: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WAITER.format(repo=str(REPO), grace=grace)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_stuck_process_exits_after_the_grace_period():
    proc = _start(grace=1.0)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert time.monotonic() - t0 < 20
    assert "no sync point reached" in proc.stderr.read()


def test_a_second_signal_ends_it_at_once():
    proc = _start(grace=600.0)
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    assert proc.poll() is None  # the first only sets the flag
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=30) == -signal.SIGUSR1


def test_the_same_notice_relayed_twice_at_once_is_one_request():
    proc = _start(grace=600.0)
    proc.send_signal(signal.SIGUSR1)  # srun and the launcher both deliver SLURM's notice, milliseconds apart
    time.sleep(0.05)  # apart enough that the handler runs twice (back to back, the kernel would merge them)
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    assert proc.poll() is None  # still stopping cleanly
    proc.send_signal(signal.SIGUSR1)  # a real second request
    assert proc.wait(timeout=30) == -signal.SIGUSR1


def test_the_flag_records_the_signal_and_restore_puts_the_handler_back():
    from dist_gan.engine.signals import PreemptionFlag

    before = signal.getsignal(signal.SIGUSR1)
    flag = PreemptionFlag(grace_s=600)
    try:
        signal.raise_signal(signal.SIGUSR1)
        assert flag.raised and flag.signal_name == "SIGUSR1"
    finally:
        flag.restore()
    assert signal.getsignal(signal.SIGUSR1) is before

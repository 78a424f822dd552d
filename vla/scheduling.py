"""Keeping the policy's process at normal scheduling when libraries reach for realtime.

Two libraries vla runs raise threads to ``SCHED_FIFO`` at priority 99 wherever the process may
(as root with ``CAP_SYS_NICE``, e.g. on a lab workstation or a VM; a default Docker container
lacks the capability):

- ``franky.Robot`` raises the thread that constructs it;
- the SVT-AV1 encoder that LeRobot records video with starts ~80 worker threads at FIFO 99 for
  each episode, and raises the thread that encodes when it is not a streaming encoder's.

A FIFO-99 thread runs before every normal one. Encoder threads at that priority preempt the
control loop, the ROS executor and the simulator while an episode is recorded, and a main
thread left at it hands the policy to every thread and process it starts afterwards: a test
run on a 2-core machine starved so, and a deploy loop would miss its deadlines.

Linux only; elsewhere both context managers do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from contextlib import contextmanager

CAP_SYS_NICE = 23  # linux/capability.h
_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None


_LIBC = _libc() if hasattr(os, "sched_getscheduler") else None


def _capabilities() -> tuple[_CapHeader, ctypes.Array] | None:
    """The calling thread's capability sets (version 3: two 32-bit words), or None."""
    if _LIBC is None or not hasattr(_LIBC, "capget"):
        return None
    header, data = _CapHeader(_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    if _LIBC.capget(ctypes.byref(header), data) != 0:
        return None
    return header, data


@contextmanager
def keeps_thread_scheduling() -> Iterator[None]:
    """Give the calling thread its scheduling policy back afterwards (around ``franky.Robot``).
    The control thread libfranka runs a motion on is another one, and keeps what it is given."""
    if not hasattr(os, "sched_getscheduler"):  # not Linux
        yield
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)  # 0: the calling thread
    try:
        yield
    finally:
        if (os.sched_getscheduler(0), os.sched_getparam(0)) != (policy, param):
            os.sched_setscheduler(0, policy, param)


@contextmanager
def without_realtime_threads() -> Iterator[None]:
    """No thread started inside (nor their threads) may take a realtime policy: around calls
    that start video encoders. The calling thread drops ``CAP_SYS_NICE`` from its effective
    capabilities for the duration; threads inherit the set they are created with, so an
    encoder's request for FIFO 99 is refused (it encodes at normal priority, as it does for
    any user without the capability). The capability stays permitted and comes back to the
    calling thread afterwards, for a franky connection that does need realtime."""
    caps = _capabilities()
    bit = 1 << CAP_SYS_NICE
    if caps is None or not caps[1][0].effective & bit:  # nothing to drop: realtime is refused anyway
        with keeps_thread_scheduling():
            yield
        return
    header, data = caps
    data[0].effective &= ~bit
    dropped = _LIBC.capset(ctypes.byref(header), data) == 0
    try:
        with keeps_thread_scheduling():
            yield
    finally:
        if dropped:
            data[0].effective |= bit
            header.version, header.pid = _CAPABILITY_VERSION_3, 0
            _LIBC.capset(ctypes.byref(header), data)

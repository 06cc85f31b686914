"""The requestor reactor pause (producers/requestor.py): ``_is_paused`` is true only when the
reactor loop is blocked on its checkpoint, so a ``send_*`` call cannot lose its response."""

from __future__ import annotations

import threading
import time

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from radstream.producers.requestor import CountingEvent, GuardedAssociation, guard

pytestmark = pytest.mark.unit


def _blocked_waiter(event: CountingEvent) -> threading.Thread:
    t = threading.Thread(target=event.wait, daemon=True)
    t.start()
    deadline = time.monotonic() + 5
    while event.blocked() == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert event.blocked() == 1
    return t


def test_counting_event_counts_blocked_waiters_until_set_releases_them() -> None:
    event = CountingEvent()
    assert event.blocked() == 0
    assert event.wait(0) is False and event.blocked() == 0  # timed out: not counted
    waiter = _blocked_waiter(event)
    event.set()
    event.clear()
    # released by set(): no longer blocked, whether or not the thread has run since
    assert event.blocked() == 0
    waiter.join(5)
    assert not waiter.is_alive() and event.blocked() == 0
    event.set()
    assert event.wait() is True and event.blocked() == 0


def _association() -> GuardedAssociation:
    assoc = guard(Association(AE(ae_title="TEST"), "requestor"))
    assert isinstance(assoc, GuardedAssociation)
    assoc.is_alive = lambda: True  # type: ignore[method-assign]  # as while its reactor runs
    return assoc


def test_flag_raised_but_loop_already_past_the_checkpoint_is_not_paused() -> None:
    """The moment pynetdicom's own flag lies: the loop set it, found the checkpoint still set
    and is on its way to the DIMSE queue; then a send_* call clears the checkpoint."""
    assoc = _association()
    assoc._is_paused = True  # the loop, just before checkpoint.wait() (which returns at once)
    assert assoc._reactor_checkpoint.wait() is True
    assoc._reactor_checkpoint.clear()  # send_*: pause the reactor
    assert assoc._is_paused is False  # stock pynetdicom answers True here and loses the response
    assoc._is_paused = False  # the loop, after the checkpoint
    assert assoc._is_paused is False


def test_paused_once_the_loop_blocks_and_not_after_the_send_releases_it() -> None:
    assoc = _association()
    checkpoint = assoc._reactor_checkpoint
    checkpoint.clear()  # send_* pauses the reactor
    assoc._is_paused = True  # the loop raises its flag, then blocks on the cleared checkpoint
    assert assoc._is_paused is False
    loop = _blocked_waiter(checkpoint)
    assert assoc._is_paused is True
    checkpoint.set()  # send_* done: the reactor may run again
    checkpoint.clear()  # the next send_* call, before the loop has woken up
    assert assoc._is_paused is False
    loop.join(5)


def test_unpaused_flag_and_kill_as_pynetdicom_sets_them() -> None:
    assoc = _association()
    assert assoc._is_paused is False  # a new association: its loop has not paused
    assoc._reactor_checkpoint.set()
    assoc._is_paused = True  # kill(): checkpoint set, flag raised
    assert assoc._is_paused is True
    assoc.is_alive = lambda: False  # type: ignore[method-assign]
    assoc._reactor_checkpoint.clear()
    assert assoc._is_paused is True  # a loop that is gone cannot take anything


def test_guard_is_idempotent_and_keeps_the_flag() -> None:
    assoc = Association(AE(ae_title="TEST"), "requestor")
    assoc._is_paused = True
    guarded = guard(assoc)
    assert guard(guarded) is guarded
    assert guarded._is_paused is True

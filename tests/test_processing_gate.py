"""The processing gate: a bounded number of holders, the earliest deadline first."""

from __future__ import annotations

import threading
import time

import pytest

from generation.processing_gate import ProcessingGate

pytestmark = pytest.mark.unit


def wait_until(condition, timeout: float = 5.0) -> None:
    """Poll until another thread has made `condition` true."""
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, "timed out waiting for another thread"
        time.sleep(0.005)


def test_gate_never_lets_more_than_its_slots_in():
    gate, inside, peak, lock = ProcessingGate(3), [0], [0], threading.Lock()

    def work():
        with gate.slot(time.monotonic()):
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            time.sleep(0.02)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] == 3 and gate.busy == 0


def test_gate_serves_the_earliest_deadline_first():
    gate, order = ProcessingGate(1), []
    release = threading.Event()

    def hold():
        with gate.slot(0.0):
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    wait_until(lambda: gate.busy == 1)

    def wait_for(deadline):
        """Record the deadline on getting the slot, then free it."""
        with gate.slot(deadline):
            order.append(deadline)

    threads = [threading.Thread(target=wait_for, args=(d,)) for d in (30.0, 10.0, 20.0)]
    for queued, thread in enumerate(threads, start=1):
        thread.start()
        wait_until(lambda n=queued: gate.waiting == n)  # all three are queued before the slot frees
    release.set()
    holder.join()
    for thread in threads:
        thread.join()
    assert order == [10.0, 20.0, 30.0]


def test_gate_frees_its_slot_when_the_block_raises():
    gate = ProcessingGate(1)
    with pytest.raises(RuntimeError), gate.slot(1.0):
        raise RuntimeError("boom")
    assert gate.busy == 0
    with gate.slot(1.0):
        assert gate.busy == 1

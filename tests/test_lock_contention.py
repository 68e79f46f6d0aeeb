"""Many real processes against one lock (spec tests 12-14)."""
import json
import multiprocessing as mp
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
from test_locking import ask, dead_pid, start_holder

from wrds_sync_nb import events
from wrds_sync_nb.errors import LockAcquisitionError
from wrds_sync_nb.locking import AtomicFileLock, read_lock

ctx = mp.get_context("fork")


class FastLock(AtomicFileLock):
    MAX_BACKOFF_SECONDS = 0.02


def _contend(lock_dir, counter, out, cycles, barrier):
    lk = FastLock(lock_dir, "crsp", f"w{os.getpid()}")
    barrier.wait()
    spans = []
    for _ in range(cycles):
        tok = lk.acquire(timeout_seconds=300)
        t0 = time.monotonic_ns()
        n = int(Path(counter).read_text())      # an unprotected read-modify-write:
        Path(counter).write_text(str(n + 1))    # only the lock keeps it correct
        t1 = time.monotonic_ns()
        lk.release(tok)
        spans.append((t0, t1))
    Path(out).write_text(json.dumps(spans))


@pytest.mark.slow
def test_12_contention_8_processes_200_cycles(tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_contend, args=(tmp_path / "locks", counter, tmp_path / f"spans{i}", 200, barrier))
             for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
        assert p.exitcode == 0
    assert counter.read_text() == "1600"
    spans = sorted(s for i in range(8) for s in json.loads((tmp_path / f"spans{i}").read_text()))
    assert len(spans) == 1600
    overlaps = [(a, b) for a, b in zip(spans, spans[1:], strict=False) if b[0] <= a[1]]
    assert overlaps == []


def _try_once(lock_dir, start, done, results):
    lk = AtomicFileLock(lock_dir, "crsp", f"w{os.getpid()}")
    start.wait()
    try:
        lk.acquire(timeout_seconds=0)
        results.put("won")
    except LockAcquisitionError:
        results.put("lost")
    done.wait()  # hold the lock until every contender has tried


@pytest.mark.slow
def test_13_concurrent_stale_recovery_has_exactly_one_winner(tmp_path):
    lock_dir = tmp_path / "locks"
    lk = AtomicFileLock(lock_dir, "crsp")
    for rep in range(50):
        lock_dir.mkdir(exist_ok=True)
        lk.path.unlink(missing_ok=True)
        lk.path.write_bytes(lk.new_token().model_copy(update={"pid": dead_pid()}).to_json())
        start, done, results = ctx.Barrier(8), ctx.Barrier(9), ctx.Queue()
        procs = [ctx.Process(target=_try_once, args=(lock_dir, start, done, results)) for _ in range(8)]
        for p in procs:
            p.start()
        outcomes = sorted(results.get(timeout=120) for _ in range(8))
        done.wait()
        for p in procs:
            p.join(60)
        assert outcomes == ["lost"] * 7 + ["won"], f"repetition {rep}: {outcomes}"
        assert not list(lock_dir.glob("crsp.lock.recovery.*"))


def test_14_split_brain_stale_holder_loses_and_cannot_delete_new_lock(tmp_path):
    lock_dir = tmp_path / "locks"
    a = start_holder(lock_dir, expiry=1.0)  # a live holder whose lock expires in 1 s
    try:
        os.kill(a.pid, signal.SIGSTOP)        # it stops refreshing (suspended laptop, long GC pause...)
        b = AtomicFileLock(lock_dir, "crsp", "b")
        with events.capture_events() as got:
            tok_b = b.acquire(timeout_seconds=30)  # waits for the expiry, then recovers
        assert any(e["event"] == events.LOCK_STALE and e["reason"].startswith("expired") for e in got)
        os.kill(a.pid, signal.SIGCONT)
        assert ask(a, "release") == "LockOwnershipError"
        assert ask(a, "refresh") == "LockOwnershipError"
        assert read_lock(b.path)[0] == tok_b   # the new holder's file is untouched
        b.release(tok_b)
    finally:
        a.kill()
        a.wait()


def test_two_processes_take_turns(tmp_path):
    lock_dir = tmp_path / "locks"
    a = start_holder(lock_dir)
    try:
        b = AtomicFileLock(lock_dir, "crsp", "b", lock_timeout=timedelta(minutes=1))
        with pytest.raises(LockAcquisitionError):
            b.acquire(timeout_seconds=0)
        assert ask(a, "release") == "ok"
        b.release(b.acquire(timeout_seconds=0))
    finally:
        a.kill()
        a.wait()

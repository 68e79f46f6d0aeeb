"""AtomicFileLock against real processes and a real filesystem (spec tests 1-11, plus the defences)."""
import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import fastcore.test as ft
import pytest

from wrds_sync_nb import events, locking
from wrds_sync_nb.errors import LockAcquisitionError, LockOwnershipError, MalformedLockFileError
from wrds_sync_nb.locking import (
    AtomicFileLock,
    ForeignLockFileError,
    LockHeartbeat,
    atomic_lock,
    judge_lock_file,
    judge_token,
    read_lock,
    recover_stale_lock,
)
from wrds_sync_nb.manifest import utcnow

HOLDER = textwrap.dedent("""
    import sys
    from datetime import timedelta
    from wrds_sync_nb.locking import AtomicFileLock
    lk = AtomicFileLock(sys.argv[1], sys.argv[3], "holder", lock_timeout=timedelta(seconds=float(sys.argv[2])))
    tok = lk.acquire(timeout_seconds=10)
    print("acquired", flush=True)
    for cmd in sys.stdin:
        try:
            if cmd.strip() == "release": lk.release(tok)
            elif cmd.strip() == "refresh": tok = lk.refresh(tok)
            print("ok", flush=True)
        except Exception as e:
            print(type(e).__name__, flush=True)
""")


def start_holder(lock_dir, expiry=3600.0, dataset="crsp"):
    """A real process holding `dataset`'s lock; it answers 'release' and 'refresh' on stdin."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_dir), str(expiry), dataset],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "acquired"
    return p


def ask(p, cmd):
    p.stdin.write(cmd + "\n")
    p.stdin.flush()
    return p.stdout.readline().strip()


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def lock_dir(tmp_path):
    return tmp_path / "locks"


def test_01_acquire_when_unlocked_writes_token(lock_dir):
    lk = AtomicFileLock(lock_dir, "crsp", "me")
    tok = lk.acquire(timeout_seconds=0)
    on_disk, st = read_lock(lk.path)
    assert on_disk == tok and tok.pid == os.getpid() and tok.writer_id == "me"
    assert oct(st.st_mode & 0o777) == "0o600"
    assert timedelta(hours=3, minutes=59) < tok.expires_at - tok.acquired_at <= timedelta(hours=4)


def test_02_acquire_fails_while_another_process_holds_it(lock_dir):
    p = start_holder(lock_dir)
    try:
        t0 = time.monotonic()
        with pytest.raises(LockAcquisitionError) as e:
            AtomicFileLock(lock_dir, "crsp").acquire(timeout_seconds=0.3)
        assert time.monotonic() - t0 >= 0.3
        msg = str(e.value)
        assert f"pid {p.pid}" in msg and "writer holder" in msg and "since" in msg and e.value.exit_code == 2
    finally:
        p.kill()
        p.wait()


def test_03_release_deletes_lock_file(lock_dir):
    lk = AtomicFileLock(lock_dir, "crsp")
    lk.release(lk.acquire())
    assert not lk.path.exists()


def test_04_expired_lock_is_stale_and_recovered(lock_dir):
    lk = AtomicFileLock(lock_dir, "crsp")
    old = lk.new_token().model_copy(update={"expires_at": utcnow() - timedelta(seconds=1)})
    lock_dir.mkdir()
    lk.path.write_bytes(old.to_json())
    stale, why = judge_lock_file(lk.path)
    assert stale and why.startswith("expired at")
    with events.capture_events() as got:
        tok = lk.acquire(timeout_seconds=0)
    assert tok.nonce != old.nonce
    assert any(e["event"] == events.LOCK_STALE and e["reason"].startswith("expired") for e in got)


def test_05_dead_pid_lock_is_recovered(lock_dir):
    lk = AtomicFileLock(lock_dir, "crsp")
    lock_dir.mkdir()
    lk.path.write_bytes(lk.new_token().model_copy(update={"pid": dead_pid()}).to_json())
    assert judge_lock_file(lk.path)[0]
    assert recover_stale_lock(lk) is True
    assert not lk.path.exists()
    assert recover_stale_lock(lk) is False


def test_06_pid_reuse_detected_by_process_start(lock_dir):
    sleeper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        lk = AtomicFileLock(lock_dir, "crsp")
        real = locking.process_start_ticks(sleeper.pid)
        live = lk.new_token().model_copy(update={"pid": sleeper.pid, "process_start": real})
        assert judge_token(live, utcnow()) == (False, f"held by live pid {sleeper.pid}")
        reused = live.model_copy(update={"process_start": real - 1})
        assert judge_token(reused, utcnow()) == (True, f"pid {sleeper.pid} was reused by another process")
        rebooted = live.model_copy(update={"boot_id": "another-boot"})
        assert judge_token(rebooted, utcnow())[0]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_remote_host_lock_trusts_expiry_only(lock_dir):
    lk = AtomicFileLock(lock_dir, "crsp")
    remote = lk.new_token().model_copy(update={"hostname": "other-host", "pid": dead_pid()})
    assert judge_token(remote, utcnow())[0] is False
    lock_dir.mkdir()
    lk.path.write_bytes(remote.to_json())
    with pytest.raises(LockAcquisitionError, match="on host other-host"):
        lk.acquire(timeout_seconds=0)
    assert judge_token(remote.model_copy(update={"expires_at": utcnow() - timedelta(1)}), utcnow())[0]


@pytest.mark.parametrize("content,where", [
    (b"{not json", "json_invalid"),
    (b'{"dataset": "crsp"}', "pid"),
])
def test_07_malformed_lock_rejected(lock_dir, content, where):
    lock_dir.mkdir()
    (lock_dir / "crsp.lock").write_bytes(content)
    with pytest.raises(MalformedLockFileError) as e:
        read_lock(lock_dir / "crsp.lock")
    assert "is malformed" in str(e.value)


def test_08_extra_fields_and_wrong_types_rejected(lock_dir):
    lk = AtomicFileLock(lock_dir, "crsp")
    good = json.loads(lk.new_token().to_json())
    lock_dir.mkdir()
    for bad in ({**good, "admin": True}, {**good, "pid": str(good["pid"])}, {**good, "nonce": None}):
        lk.path.write_text(json.dumps(bad))
        with pytest.raises(MalformedLockFileError):
            read_lock(lk.path)


def test_fresh_malformed_lock_waits_old_one_is_recovered(lock_dir):
    lk = AtomicFileLock(lock_dir, "crsp")
    lock_dir.mkdir()
    lk.path.write_text("{")
    with pytest.raises(LockAcquisitionError, match="malformed but only"):
        lk.acquire(timeout_seconds=0.1)
    assert lk.path.read_text() == "{"
    past = time.time() - locking.MALFORMED_GRACE_SECONDS - 5
    os.utime(lk.path, (past, past))
    tok = lk.acquire(timeout_seconds=0)
    assert read_lock(lk.path)[0] == tok


def test_09_release_with_foreign_token_raises_and_keeps_file(lock_dir):
    a, b = AtomicFileLock(lock_dir, "crsp", "a"), AtomicFileLock(lock_dir, "crsp", "b")
    tok = a.acquire()
    before = lk_bytes = a.path.read_bytes()
    for bad in (b.new_token(), tok.model_copy(update={"nonce": "x" * 32}), tok.model_copy(update={"writer_id": "b"})):
        with pytest.raises(LockOwnershipError):
            a.release(bad)
        assert a.path.read_bytes() == before == lk_bytes


def test_10_refresh_extends_expiry_atomically(lock_dir):
    lk = AtomicFileLock(lock_dir, "crsp", lock_timeout=timedelta(minutes=5))
    tok = lk.acquire()
    new = lk.refresh(tok)
    assert new.expires_at > tok.expires_at and new.nonce == tok.nonce
    assert read_lock(lk.path)[0] == new
    assert sorted(p.name for p in lock_dir.iterdir()) == [".crsp.lock.guard", "crsp.lock"]
    lk.release(new)
    with pytest.raises(LockOwnershipError, match="is gone"):
        lk.refresh(new)


def test_11_fsync_called_on_lock_file_then_directory(lock_dir, monkeypatch):
    seen = []
    real = os.fsync

    def spy(fd):
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(locking, "_fsync", spy)
    monkeypatch.setattr(os, "fsync", spy)
    lk = AtomicFileLock(lock_dir, "crsp")
    lk.acquire()
    assert seen[-2:] == [str(lk.path), str(lock_dir)]


def test_symlink_at_lock_path_is_refused_and_victim_untouched(lock_dir, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    lock_dir.mkdir()
    (lock_dir / "crsp.lock").symlink_to(victim)
    lk = AtomicFileLock(lock_dir, "crsp")
    for action in (lambda: lk.acquire(timeout_seconds=0), lambda: lk.force_unlock("test")):
        with pytest.raises(ForeignLockFileError, match="symlink|not a regular file"):
            action()
    assert victim.read_text() == "precious" and (lock_dir / "crsp.lock").is_symlink()


def test_fifo_at_lock_path_is_refused_without_hanging(lock_dir):
    lock_dir.mkdir()
    os.mkfifo(lock_dir / "crsp.lock")
    code = ("import sys\nfrom wrds_sync_nb.locking import AtomicFileLock\n"
            "try: AtomicFileLock(sys.argv[1], 'crsp').acquire(timeout_seconds=0)\n"
            "except Exception as e: print(type(e).__name__, e)")
    out = subprocess.run([sys.executable, "-c", code, str(lock_dir)], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("ForeignLockFileError") and "not a regular file" in out.stdout


def test_huge_lock_file_rejected_without_reading_it(lock_dir):
    lock_dir.mkdir()
    with open(lock_dir / "crsp.lock", "wb") as f:
        f.write(b"{" + b" " * (100 << 20))

    def rchar():
        return int(next(ln for ln in Path("/proc/self/io").read_text().splitlines() if ln.startswith("rchar")).split()[1])

    before = rchar()
    with pytest.raises(ForeignLockFileError, match="over the 65536 limit"):
        AtomicFileLock(lock_dir, "crsp").acquire(timeout_seconds=0)
    assert rchar() - before < 1 << 20
    assert (lock_dir / "crsp.lock").stat().st_size > 100 << 20


def test_leftover_recovery_files_are_cleaned(lock_dir):
    lock_dir.mkdir()
    gone = lock_dir / f"crsp.lock.recovery.{dead_pid()}.abcd"
    live = lock_dir / f"crsp.lock.recovery.{os.getpid()}.abcd"
    gone.write_text("{}")
    live.write_text("{}")
    AtomicFileLock(lock_dir, "crsp").acquire()
    assert not gone.exists() and live.exists()


def test_heartbeat_refreshes_and_detects_a_lost_lock(lock_dir):
    lk = AtomicFileLock(lock_dir, "crsp", lock_timeout=timedelta(seconds=30))
    tok = lk.acquire()
    hb = LockHeartbeat(lk, tok, interval=0.01).start()
    AtomicFileLock(lock_dir, "crsp").force_unlock(by="operator")
    hb._thread.join(timeout=30)
    assert isinstance(hb.lost, LockOwnershipError)
    with pytest.raises(LockOwnershipError):
        hb.ensure_held()


def test_atomic_lock_releases_on_error(lock_dir):
    with pytest.raises(ZeroDivisionError):
        with atomic_lock(lock_dir, "crsp"):
            raise ZeroDivisionError
    assert not (lock_dir / "crsp.lock").exists()


def test_force_unlock_logs_who_and_whom(lock_dir):
    p = start_holder(lock_dir)
    try:
        with events.capture_events() as got:
            st = AtomicFileLock(lock_dir, "crsp").force_unlock(by="alice")
        assert st.token.pid == p.pid and not (lock_dir / "crsp.lock").exists()
        ev = next(e for e in got if e["event"] == events.LOCK_FORCED)
        ft.test_eq((ev["by"], ev["holder_pid"], ev["holder_writer"]), ("alice", p.pid, "holder"))
        assert ask(p, "release") == "LockOwnershipError"
    finally:
        p.kill()
        p.wait()

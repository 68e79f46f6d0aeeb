"""A data dir's home on object storage (issue: object storage), first part: the store interface, the lock and
the commit by conditional writes, and the probe, run by one suite on a folder and on real S3-compatible servers
started on 127.0.0.1 (SeaweedFS and moto's server)."""
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from stores import PACED_UPLOADS, SECRET, dropping_proxy, start_seaweedfs, wait_stale

from wrds_sync_nb.errors import ChecksumMismatchError, ConfigError, LockAcquisitionError, LockOwnershipError
from wrds_sync_nb.layout import DataLayout
from wrds_sync_nb.manifest import ManifestManager
from wrds_sync_nb.objectstore import (
    LocalStore,
    ObjectStore,
    StoreLock,
    check_store,
    commit_manifest,
    probe,
    upload_checked,
)


@pytest.fixture(params=["local", "seaweedfs", "moto"])
def store(request, tmp_path, monkeypatch):
    """A fresh data dir home on each implementation."""
    if request.param == "local":
        return LocalStore(tmp_path / "home")
    srv = request.getfixturevalue(request.param)
    for k, v in srv.env().items():
        monkeypatch.setenv(k, v)
    return ObjectStore(srv.url())


def test_every_store_keeps_the_contract(store):
    check_store(store)


def test_the_probe_passes_real_stores_and_refuses_one_that_ignores_conditional_writes(store, moto, monkeypatch):
    probe(store)
    assert store.head(".wrds-sync-store") is not None
    endpoint, srv = dropping_proxy(moto.endpoint)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
            monkeypatch.setenv(k, moto.env()[k])
        careless = ObjectStore(moto.url())
        with pytest.raises(ConfigError, match=r"does not refuse a second create-if-absent \(If-None-Match: \*\)"):
            probe(careless)
        assert careless.head(".wrds-sync-store") is None   # never marked as trusted
    finally:
        srv.shutdown()


def test_a_second_writer_is_refused_with_exit_2_and_takes_the_lock_once_released(store):
    a, b = StoreLock(store, "crsp", "a"), StoreLock(store, "crsp", "b")
    a.acquire()
    with pytest.raises(LockAcquisitionError, match="is locked on .* by a") as e:
        b.acquire()
    assert e.value.exit_code == 2 and "could not release" in e.value.fix
    a.release()
    b.acquire()
    a.release()   # a no longer holds it: nothing happens to b's lock
    with pytest.raises(LockAcquisitionError):
        StoreLock(store, "crsp", "c").acquire()


def test_a_stale_lock_is_taken_over_by_exactly_one_of_eight(store):
    lease = timedelta(seconds=2)
    StoreLock(store, "taq", "dead", lease=lease).acquire()
    wait_stale(store, "locks/taq.lock", lease)
    go, won, lost = threading.Barrier(8), [], []

    def race(i):
        lk = StoreLock(store, "taq", f"r{i}", lease=lease)
        go.wait()
        try:
            lk.acquire()
            won.append(i)
        except LockAcquisitionError:
            lost.append(i)
    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 7, (won, lost)


PAUSED = textwrap.dedent("""
    import os, signal, sys
    from datetime import timedelta
    from wrds_sync_nb.objectstore import LocalStore, ObjectStore, StoreLock, commit_manifest
    where, ready = sys.argv[1], sys.argv[2]
    store = ObjectStore(where) if "://" in where else LocalStore(where)
    lk = StoreLock(store, "crsp", "paused", lease=timedelta(seconds=2))
    lk.acquire()
    open(ready, "w").close()
    os.kill(os.getpid(), signal.SIGSTOP)       # paused here (a laptop lid closed) until SIGCONT
    try:
        lk.refresh()                           # the check before committing
        commit_manifest(store, "crsp", 1, b"the paused writer's version 1")
    except Exception as e:
        print(type(e).__name__, e)
        sys.exit(3)
""")


def test_a_writer_paused_past_its_lease_cannot_commit(store, tmp_path):
    where = str(store.root) if isinstance(store, LocalStore) else store.url
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", PAUSED, where, str(ready)], stdout=subprocess.PIPE, text=True,
                             env=os.environ)
    try:
        os.waitpid(child.pid, os.WUNTRACED)          # returns once the child has stopped itself
        assert ready.exists()
        wait_stale(store, "locks/crsp.lock", timedelta(seconds=2))
        lk = StoreLock(store, "crsp", "second", lease=timedelta(seconds=2))
        lk.acquire()
        commit_manifest(store, "crsp", 1, b"the second writer's version 1")
        os.kill(child.pid, signal.SIGCONT)
        out, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 3 and out.startswith("LockOwnershipError") and "was taken over" in out, out
    assert store.read("manifests/history/crsp/1.json")[0] == b"the second writer's version 1"
    with pytest.raises(LockOwnershipError, match="committed by another writer"):
        commit_manifest(store, "crsp", 1, b"a late commit")


def test_uploads_are_checked_and_an_object_replaced_behind_our_back_is_detected(store, tmp_path):
    f = tmp_path / "2024.parquet"
    f.write_bytes(os.urandom(7 * 1024 * 1024))      # past obstore's multipart threshold
    sha = hashlib.sha256(f.read_bytes()).hexdigest()
    rel = f"versions/crsp/daily/2024-{sha[:16]}.parquet"
    assert upload_checked(store, rel, f, sha) is True
    assert upload_checked(store, rel, f, sha) is False   # never over an object that is there
    got = store.read(rel)
    store.swap(rel, b"replaced", got[1].etag)             # someone else's write
    with pytest.raises(ChecksumMismatchError, match="holds other bytes"):
        upload_checked(store, rel, f, sha)


def test_store_check_through_the_installed_script(seaweedfs, moto, tmp_path):
    from test_cli import script
    r = script(tmp_path, "store-check", seaweedfs.url(), env_extra=seaweedfs.env())
    assert r.returncode == 0 and "refuses a second create-if-absent and a stale compare-and-swap" in r.stdout, r.stderr
    endpoint, srv = dropping_proxy(moto.endpoint)
    try:
        r = script(tmp_path, "store-check", moto.url(), env_extra={**moto.env(), "AWS_ENDPOINT_URL": endpoint})
    finally:
        srv.shutdown()
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "does not refuse a second create-if-absent (If-None-Match: *)" in r.stderr and SECRET not in r.stderr
    r = subprocess.run([str(Path(sys.executable).parent / "wrds-sync"), "--data-dir", "s3://wrds/x", "backup"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "`wrds-sync backup` works on a data dir in a folder, and s3://wrds/x is on an object store" in r.stderr


KILLED_PUSH = textwrap.dedent("""
    import os, signal, sys
    from datetime import timedelta
    import wrds_sync_nb.objectstore as O
    from wrds_sync_nb.layout import DataLayout
    data, where = sys.argv[1], sys.argv[2]
    store = O.ObjectStore(where) if "://" in where else O.LocalStore(where)
    real, sent = O.upload_checked, []
    def dying(*a):                     # killed after its second file is up
        real(*a)
        sent.append(1)
        if len(sent) == 2: os.kill(os.getpid(), signal.SIGKILL)
        return True
    O.upload_checked = dying
    lk = O.StoreLock(store, "fama_french", "killed", lease=timedelta(seconds=2))
    lk.acquire()
    O.push_version(DataLayout(data), store, lk, 1)
""")


def test_a_push_killed_mid_upload_shows_nothing_and_the_next_one_commits(store, env, tmp_path):
    from test_cli import script

    from wrds_sync_nb.objectstore import pull_manifests, push_version, stored_sha256
    data = tmp_path / "d"
    assert script(data, "full-sync", "--dataset", "fama_french", "--start-year", "2024").returncode == 0
    where = str(store.root) if isinstance(store, LocalStore) else store.url
    r = subprocess.run([sys.executable, "-c", KILLED_PUSH, str(data), where], capture_output=True, text=True,
                       env=os.environ)
    assert r.returncode == -9, r.stderr
    assert len(store.listing("versions/fama_french")) == 2           # two files up ...
    assert store.listing("manifests") == []                           # ... and no version: nothing visible
    assert pull_manifests(store, DataLayout(tmp_path / "reader"), "fama_french") == []
    wait_stale(store, "locks/fama_french.lock", timedelta(seconds=2))
    lk = StoreLock(store, "fama_french", "next", lease=timedelta(seconds=2))
    lk.acquire()
    m = ManifestManager(DataLayout(data)).load("fama_french")
    assert push_version(DataLayout(data), store, lk, 1) == len(m.files()) - 2   # the rest, then the commit
    assert pull_manifests(store, DataLayout(tmp_path / "reader"), "fama_french") == [1]
    assert all(stored_sha256(store, rel) == e.sha256 for rel, e in m.files().items())


def test_a_pushed_version_is_read_in_place_by_duckdb_and_a_later_one_only_once_committed(store, env, demo, wrds_db,
                                                                                        tmp_path):
    from datetime import date

    from test_cli import script

    from wrds_sync_nb.objectstore import push_version
    from wrds_sync_nb.store_reader import connect_store
    data = tmp_path / "d"
    assert script(data, "full-sync", "--dataset", "fama_french", "--start-year", "2024").returncode == 0
    count = "select count(*), sum(mktrf) from fama_french_daily where year(date) = 2024"
    lk = StoreLock(store, "fama_french", "pusher")
    lk.acquire()
    push_version(DataLayout(data), store, lk, 1)
    first = connect_store(store).sql(count).fetchone()
    want = demo.execute("select count(*), sum(mktrf) from ff.factors_daily where extract(year from date) = 2024",
                        database=wrds_db)[0]
    assert first[0] == want[0] and first[1] == pytest.approx(float(want[1]), rel=1e-12)
    demo.restate_year("ff.factors_daily", "date", 2024, "mktrf", 2.0, database=wrds_db)
    demo.bump_comment("ff.factors_daily", date(2026, 3, 1), database=wrds_db)
    assert script(data, "incremental", "--dataset", "fama_french").returncode == 0
    assert connect_store(store).sql(count).fetchone() == first          # version 2 not pushed: not seen
    push_version(DataLayout(data), store, lk, 2)
    lk.release()
    now = connect_store(store).sql(count).fetchone()
    assert now[1] == pytest.approx(2 * first[1], rel=1e-9)
    assert connect_store(store, datasets=["fama_french"], version=1).sql(count).fetchone() == first


def test_push_and_store_verify_through_the_installed_script(seaweedfs, env, tmp_path, monkeypatch):
    from test_cli import script

    from wrds_sync_nb.store_reader import connect_store
    data, url, e = tmp_path / "d", seaweedfs.url(), seaweedfs.env()
    assert script(data, "full-sync", "--dataset", "fama_french", "--start-year", "2024").returncode == 0
    for k, v in e.items():
        monkeypatch.setenv(k, v)
    holder = StoreLock(ObjectStore(url), "fama_french", "another writer")
    holder.acquire()
    r = script(data, "push", "--to", url, env_extra=e)
    assert r.returncode == 2 and "is locked on" in r.stderr and "another writer" in r.stderr, r.stderr
    holder.release()
    r = script(data, "push", "--to", url, env_extra=e)
    assert r.returncode == 0 and "fama_french: pushed version(s) 1" in r.stdout, r.stdout + r.stderr
    assert script(data, "push", "--to", url, env_extra=e).stdout.strip() == "fama_french: nothing new"
    assert script(data, "store-verify", url, env_extra=e).returncode == 0
    rows = connect_store(ObjectStore(url)).sql("select count(*) from fama_french_monthly").fetchone()[0]
    assert rows == ManifestManager(DataLayout(data)).load("fama_french").tables["monthly"].rows
    store = ObjectStore(url)
    victim = sorted(m.path for m in store.listing("versions/fama_french"))[0]
    store.swap(victim, b"replaced", store.head(victim).etag)
    r = script(data, "store-verify", url, env_extra=e)
    assert r.returncode == 1 and f"{victim} holds other bytes" in r.stdout, r.stdout


def test_a_read_only_credential_reads_and_verifies_but_cannot_push(seaweedfs, env, tmp_path, monkeypatch):
    from stores import READER_KEY, READER_SECRET
    from test_cli import script

    from wrds_sync_nb.store_reader import connect_store
    data, url = tmp_path / "d", seaweedfs.url()
    assert script(data, "full-sync", "--dataset", "fama_french", "--start-year", "2024").returncode == 0
    assert script(data, "push", "--to", url, env_extra=seaweedfs.env()).returncode == 0
    reader = {**seaweedfs.env(), "AWS_ACCESS_KEY_ID": READER_KEY, "AWS_SECRET_ACCESS_KEY": READER_SECRET}
    assert script(data, "store-verify", url, env_extra=reader).returncode == 0
    for k, v in reader.items():
        monkeypatch.setenv(k, v)
    rows = connect_store(ObjectStore(url)).sql("select count(*) from fama_french_daily").fetchone()[0]
    assert rows == ManifestManager(DataLayout(data)).load("fama_french").tables["daily"].rows
    other = seaweedfs.url()   # a fresh prefix: the reader cannot create its probe there
    r = script(data, "push", "--to", other, env_extra=reader)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "refused" in r.stderr, r.stderr
    assert READER_SECRET not in r.stderr and ObjectStore(other).listing("") == []
    r = script(data, "store-verify", url, env_extra={**reader, "AWS_SECRET_ACCESS_KEY": "wrong-secret"})
    assert r.returncode == 1 and "the object store refused reading its manifests" in r.stderr, r.stderr
    assert "wrong-secret" not in r.stderr




def test_a_store_stopped_mid_push_then_restarted_takes_the_next_push(env, tmp_path, monkeypatch):
    from test_cli import script
    data, home = tmp_path / "d", tmp_path / "weed"
    home.mkdir()
    assert script(data, "full-sync", "--dataset", "fama_french", "--start-year", "2024").returncode == 0
    srv = start_seaweedfs(home)
    try:
        url, up, go = srv.url(), tmp_path / "up", tmp_path / "go"
        e = {**srv.env(), "WRDS_SYNC_STORE_LEASE_SECONDS": "3"}
        child = subprocess.Popen([sys.executable, "-c", PACED_UPLOADS, "wrds_sync_nb.objectstore", str(up), str(go),
                                  "--data-dir", str(data), "push", "--to", url],
                                 env={**os.environ, **e}, stderr=subprocess.PIPE, text=True)
        from stores import wait_for
        wait_for(up.exists, "the push's first upload")
        srv.proc.kill()                    # the store goes down in the middle of the push
        srv.proc.wait(30)
        go.touch()
        _, err = child.communicate(timeout=120)
        assert child.returncode == 1 and err.count("\n") == 1 and "the object store failed during" in err, err
        srv = start_seaweedfs(home, srv.ports)
        for k, v in e.items():
            monkeypatch.setenv(k, v)
        assert ObjectStore(url).listing("manifests") == []        # nothing of the cut push is visible
        wait_stale(ObjectStore(url), "locks/fama_french.lock", timedelta(seconds=3))   # the cut push's lock
        r = script(data, "push", "--to", url, env_extra=e)
        assert r.returncode == 0 and "fama_french: pushed version(s) 1" in r.stdout, r.stdout + r.stderr
        assert script(data, "store-verify", url, env_extra=e).returncode == 0
    finally:
        srv.proc.kill()

"""A data dir on an object store (issue: object storage): `--data-dir s3://bucket/prefix` for every command,
run through the installed script against real S3-compatible servers started on 127.0.0.1 (SeaweedFS, and
moto's server), syncing from the WRDS-shaped test PostgreSQL."""
import os
import signal
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest
from stores import (
    PACED_UPLOADS,
    READER_KEY,
    READER_SECRET,
    SECRET,
    dropping_proxy,
    start_seaweedfs,
    wait_for,
    wait_stale,
)
from test_cli import one_error, script

from wrds_sync_nb.manifest import parse_manifest
from wrds_sync_nb.objectstore import ObjectStore, StoreLock, store_versions

FF = ("--dataset", "fama_french", "--start-year", "2024")


@pytest.fixture
def on_store(request, tmp_path, monkeypatch):
    """A fresh data dir on a store (SeaweedFS by default): its URL and the environment that reaches it."""
    srv = request.getfixturevalue(getattr(request, "param", "seaweedfs"))
    e = {**srv.env(), "WRDS_SYNC_STAGE_DIR": str(tmp_path / "stages"), "WRDS_SYNC_STORE_LEASE_SECONDS": "3"}
    for k, v in e.items():
        monkeypatch.setenv(k, v)
    return srv.url(), e


def manifest(store, ds, n):
    return parse_manifest(ds, store.read(f"manifests/history/{ds}/{n}.json")[0], "test")


def source_sums(demo, db):
    return demo.execute("select count(*), sum(mktrf) from ff.factors_daily where extract(year from date) >= 2024",
                        database=db)[0]


def read_sums(url):
    import wrds_sync_nb as w
    return w.connect(url).sql("select count(*), sum(mktrf) from ff.factors_daily where year(date) >= 2024").fetchone()


@pytest.mark.parametrize("on_store", ["seaweedfs", "moto"], indirect=True)
def test_a_data_dir_on_a_store_syncs_reads_and_keeps_history_equal_to_the_source(on_store, env, demo, wrds_db,
                                                                                tmp_path):
    url, e = on_store
    store = ObjectStore(url)
    r = script(url, "full-sync", *FF, env_extra=e)
    assert r.returncode == 0 and "version 1" in r.stdout, r.stdout + r.stderr
    m1 = manifest(store, "fama_french", 1)
    assert {o.path for o in store.listing("versions/fama_french")} == set(m1.files())
    assert not list((tmp_path / "stages").rglob("*.parquet"))        # uploaded, checked, gone from the stage
    want = source_sums(demo, wrds_db)
    got = read_sums(url)
    assert got[0] == want[0] and got[1] == pytest.approx(float(want[1]), rel=1e-12)
    demo.restate_year("ff.factors_daily", "date", 2024, "mktrf", 2.0, database=wrds_db)
    demo.bump_comment("ff.factors_daily", date(2026, 3, 1), database=wrds_db)
    assert script(url, "incremental", "--dataset", "fama_french", env_extra=e).returncode == 0
    m2 = manifest(store, "fama_french", 2)
    sent = {o.path for o in store.listing("versions/fama_french")} - set(m1.files())
    assert sent and all(p.startswith("versions/fama_french/daily/2024-") for p in sent)   # the restated year only
    r = script(url, "incremental", "--dataset", "fama_french", env_extra=e)
    assert "nothing changed at the source; still version 2" in r.stdout and store_versions(store, "fama_french") == [1, 2]
    assert read_sums(url)[1] == pytest.approx(float(source_sums(demo, wrds_db)[1]), rel=1e-12)
    r = script(url, "verify", "--all", env_extra=e)
    assert r.returncode == 0 and "fama_french: ok" in r.stdout, r.stdout + r.stderr
    r = script(url, "status", env_extra=e)
    assert r.returncode == 0 and f"wrds-sync status: {url}" in r.stdout and "daily" in r.stdout, r.stdout + r.stderr
    r = script(url, "history", "--dataset", "fama_french", env_extra=e)
    assert r.returncode == 0 and "2" in r.stdout and "replaced" in r.stdout, r.stdout + r.stderr
    r = script(url, "diff", "--dataset", "fama_french", "--from", "1", "--to", "2", env_extra=e)
    assert r.returncode == 0 and r.stdout.startswith("daily/2024 ") and "; keys +0 -0 ~" in r.stdout, r.stdout + r.stderr
    r = script(url, "cite", "--dataset", "fama_french", env_extra=e)
    assert "fama_french version 2, committed" in r.stdout and m2.content_sha256 in r.stdout, r.stdout + r.stderr
    assert "no longer in this data dir" not in r.stdout
    r = script(url, "cite", "--dataset", "fama_french", "--version", "1", env_extra=e)
    assert m1.content_sha256 in r.stdout and "no longer" not in r.stdout, r.stdout + r.stderr


def test_a_second_writer_gets_exit_2_and_a_store_without_conditional_writes_is_refused(on_store, env, moto):
    url, e = on_store
    holder = StoreLock(ObjectStore(url), "fama_french", "another machine")
    holder.acquire()
    r = script(url, "full-sync", *FF, env_extra=e)
    assert r.returncode == 2 and one_error(r.stderr) and "another machine" in r.stderr, r.stderr
    assert ObjectStore(url).listing("manifests") == []
    holder.release()
    endpoint, proxy = dropping_proxy(moto.endpoint)
    try:
        careless = {**e, **moto.env(), "AWS_ENDPOINT_URL": endpoint}
        r = script(moto.url(), "full-sync", *FF, env_extra=careless)
    finally:
        proxy.shutdown()
    assert r.returncode == 1 and one_error(r.stderr), r.stderr
    assert "does not refuse a second create-if-absent" in r.stderr and SECRET not in r.stderr


def paused_sync(url, e, tmp_path):
    """A full sync in a child process, held after its first upload; its process and its two files."""
    up, go = tmp_path / "up", tmp_path / "go"
    args = ["--data-dir", url, "full-sync", *FF]
    child = subprocess.Popen([sys.executable, "-c", PACED_UPLOADS, "wrds_sync_nb.storedir", str(up), str(go), *args],
                             env={**os.environ, **e}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(up.exists, "the sync's first upload")
    return child, go


def test_a_sync_killed_mid_upload_shows_nothing_and_the_rerun_sends_only_the_rest(on_store, env, demo, wrds_db,
                                                                                tmp_path):
    url, e = on_store
    store = ObjectStore(url)
    child, _ = paused_sync(url, e, tmp_path)
    child.kill()
    child.wait(30)
    first = {o.path: o.etag for o in store.listing("versions/fama_french")}
    assert len(first) == 1 and store.listing("manifests") == []      # an upload, and no version: nothing visible
    wait_stale(store, "locks/fama_french.lock", timedelta(seconds=3))
    r = script(url, "full-sync", *FF, env_extra=e)
    assert r.returncode == 0 and "version 1" in r.stdout, r.stdout + r.stderr
    after = {o.path: o.etag for o in store.listing("versions/fama_french")}
    assert set(after) == set(manifest(store, "fama_french", 1).files())
    assert all(after[p] == tag for p, tag in first.items())           # the first upload was not sent again
    assert script(url, "verify", "--dataset", "fama_french", env_extra=e).returncode == 0
    assert read_sums(url)[0] == source_sums(demo, wrds_db)[0]


def test_a_writer_paused_past_its_lease_cannot_commit_and_the_other_version_stands(on_store, env, tmp_path):
    url, e = on_store
    store = ObjectStore(url)
    child, go = paused_sync(url, e, tmp_path)
    os.kill(child.pid, signal.SIGSTOP)                                # its lock refresher stops too
    wait_stale(store, "locks/fama_french.lock", timedelta(seconds=3))
    other = {**e, "WRDS_SYNC_STAGE_DIR": str(tmp_path / "other-machine")}
    r = script(url, "full-sync", *FF, env_extra=other)
    assert r.returncode == 0 and "version 1" in r.stdout, r.stdout + r.stderr
    theirs = manifest(store, "fama_french", 1)
    go.touch()
    os.kill(child.pid, signal.SIGCONT)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 1 and one_error(err), err
    assert "was taken over" in err or "was committed by another writer" in err, err
    assert store_versions(store, "fama_french") == [1] and manifest(store, "fama_french", 1) == theirs
    assert script(url, "status", env_extra=e).returncode == 0          # the paused writer's stage, made theirs
    assert script(url, "verify", "--all", env_extra=e).returncode == 0


def test_a_store_stopped_mid_sync_fails_in_one_line_and_the_rerun_commits(env, demo, wrds_db, tmp_path):
    home = tmp_path / "weed"
    home.mkdir()
    srv = start_seaweedfs(home)
    try:
        url = srv.url()
        e = {**srv.env(), "WRDS_SYNC_STAGE_DIR": str(tmp_path / "stages"), "WRDS_SYNC_STORE_LEASE_SECONDS": "3"}
        child, go = paused_sync(url, e, tmp_path)
        srv.proc.kill()                                               # the store goes down mid-sync
        srv.proc.wait(30)
        go.touch()
        _, err = child.communicate(timeout=180)
        assert child.returncode == 1 and one_error(err) and "the object store failed during" in err, err
        assert SECRET not in err
        srv = start_seaweedfs(home, srv.ports)
        os.environ.update(e)
        try:
            assert ObjectStore(url).listing("manifests") == []
            wait_stale(ObjectStore(url), "locks/fama_french.lock", timedelta(seconds=3))
        finally:
            for k in e:
                os.environ.pop(k)
        r = script(url, "full-sync", *FF, env_extra=e)
        assert r.returncode == 0 and "version 1" in r.stdout, r.stdout + r.stderr
        assert script(url, "verify", "--all", env_extra=e).returncode == 0
    finally:
        srv.proc.kill()


def test_verify_finds_a_replaced_object_repair_sets_it_aside_and_a_sync_fetches_it(on_store, env, tmp_path):
    url, e = on_store
    store = ObjectStore(url)
    assert script(url, "full-sync", *FF, env_extra=e).returncode == 0
    m1 = manifest(store, "fama_french", 1)
    victim = sorted(m1.files())[0]
    store.swap(victim, b"replaced behind our back", store.head(victim).etag)
    r = script(url, "verify", "--all", env_extra=e)
    assert r.returncode == 1 and f"{victim} holds other bytes" in r.stdout, r.stdout + r.stderr
    r = script(url, "repair", "--dataset", "fama_french", env_extra=e)
    assert r.returncode == 0 and "1 damaged file(s) of version 1 set aside" in r.stdout, r.stdout + r.stderr
    r = script(url, "full-sync", *FF, env_extra=e)
    assert r.returncode == 0 and "still version 1" in r.stdout, r.stdout + r.stderr
    assert script(url, "verify", "--all", env_extra=e).returncode == 0
    assert len(store.listing("quarantine")) == 1                       # the replaced bytes, kept aside


def test_a_read_only_credential_reads_and_verifies_but_cannot_sync(on_store, env, tmp_path, monkeypatch):
    url, e = on_store
    assert script(url, "full-sync", *FF, env_extra=e).returncode == 0
    reader = {**e, "AWS_ACCESS_KEY_ID": READER_KEY, "AWS_SECRET_ACCESS_KEY": READER_SECRET,
              "WRDS_SYNC_STAGE_DIR": str(tmp_path / "reader-stages")}
    assert script(url, "verify", "--all", env_extra=reader).returncode == 0
    assert script(url, "status", env_extra=reader).returncode == 0
    for k, v in reader.items():
        monkeypatch.setenv(k, v)
    assert read_sums(url)[0] > 0
    r = script(url, "incremental", "--dataset", "fama_french", "--deep", env_extra=reader)
    assert r.returncode == 1 and one_error(r.stderr) and "the object store refused" in r.stderr, r.stderr
    assert READER_SECRET not in r.stderr and store_versions(ObjectStore(url), "fama_french") == [1]


def test_vacuum_removes_an_unnamed_upload_and_the_data_dir_comes_from_the_environment(on_store, env, tmp_path):
    url, e = on_store
    wrds_sync = str(Path(sys.executable).parent / "wrds-sync")
    by_env = {**os.environ, **e, "WRDS_SYNC_DATA_DIR": url}
    r = subprocess.run([wrds_sync, "full-sync", *FF], capture_output=True, text=True, env=by_env, timeout=120)
    assert r.returncode == 0 and "version 1" in r.stdout, r.stdout + r.stderr
    store = ObjectStore(url)
    orphan = "versions/fama_french/daily/2020-0123456789abcdef.parquet"   # an upload no commit named
    store.create(orphan, b"x")
    r = script(url, "vacuum", "--grace-hours", "1", env_extra=e)
    assert "fama_french: removed 0 file(s)" in r.stdout, r.stdout + r.stderr
    r = script(url, "vacuum", "--grace-hours", "0", env_extra=e)
    assert r.returncode == 0 and "fama_french: removed 1 file(s), 1 bytes; versions kept: 1" in r.stdout, r.stdout
    assert store.head(orphan) is None and script(url, "verify", "--all", env_extra=e).returncode == 0
    r = script(url, "backup", env_extra=e)
    assert r.returncode == 1 and one_error(r.stderr) and "works on a data dir in a folder" in r.stderr


def test_lock_status_and_force_unlock_on_a_store(on_store, env):
    import json

    from wrds_sync_nb.errors import LockOwnershipError
    url, e = on_store
    holder = StoreLock(ObjectStore(url), "crsp", "nightly on another machine")
    holder.acquire()
    r = script(url, "lock-status", "--json", env_extra=e)
    crsp = next(x for x in json.loads(r.stdout) if x["dataset"] == "crsp")
    assert crsp["held"] and not crsp["stale"] and crsp["writer"] == "nightly on another machine", crsp
    r = script(url, "force-unlock", "--dataset", "crsp", env_extra=e)     # no terminal to confirm on
    assert r.returncode == 1 and one_error(r.stderr) and "pass --yes" in r.stderr, r.stderr
    r = script(url, "force-unlock", "--dataset", "crsp", "--yes", env_extra=e)
    assert r.returncode == 0 and "crsp: lock released (by " in r.stdout, r.stdout + r.stderr
    with pytest.raises(LockOwnershipError):                            # the forced-out writer cannot commit
        holder.refresh()
    r = script(url, "lock-status", "--json", env_extra=e)
    assert not next(x for x in json.loads(r.stdout) if x["dataset"] == "crsp")["held"]


def test_a_table_added_on_one_machine_is_defined_and_synced_on_another(on_store, env, tmp_path):
    url, e = on_store
    r = script(url, "add", "comp.secd", "--name", "secd_x", env_extra=e)
    assert r.returncode == 0, r.stdout + r.stderr
    other = {**e, "WRDS_SYNC_STAGE_DIR": str(tmp_path / "other-machine")}
    assert "secd_x" in script(url, "datasets", env_extra=other).stdout
    r = script(url, "full-sync", "--dataset", "secd_x", "--start-year", "2025", env_extra=other)
    assert r.returncode == 0 and "version 1" in r.stdout, r.stdout + r.stderr
    assert store_versions(ObjectStore(url), "secd_x") == [1]
    r = script(url, "add", "comp.secd", "--name", "secd_x", "--where", "prccd > 90", env_extra=e)   # redefined
    assert r.returncode == 1 and one_error(r.stderr) and "--replace" in r.stderr, r.stderr


@pytest.mark.parametrize("on_store", ["seaweedfs", "moto"], indirect=True)
def test_every_table_is_an_iceberg_table_in_the_store_read_in_place_at_each_version(on_store, env, demo, wrds_db,
                                                                                   tmp_path, monkeypatch):
    import json

    import duckdb

    import wrds_sync_nb as w
    from wrds_sync_nb.iceberg import load_duckdb_iceberg
    from wrds_sync_nb.store_reader import store_session
    url, e = on_store
    assert script(url, "full-sync", *FF, env_extra=e).returncode == 0
    before = read_sums(url)
    demo.restate_year("ff.factors_daily", "date", 2024, "mktrf", 2.0, database=wrds_db)
    demo.bump_comment("ff.factors_daily", date(2026, 3, 1), database=wrds_db)
    other = {**e, "WRDS_SYNC_STAGE_DIR": str(tmp_path / "other-machine")}   # version 2 made on another machine
    assert script(url, "incremental", "--dataset", "fama_french", env_extra=other).returncode == 0
    r = script(url, "status", "--json", env_extra=other)
    meta = {t["table"]: t["iceberg_metadata"] for t in json.loads(r.stdout)["tables"]}
    assert meta["daily"].startswith(f"{url}/iceberg/fama_french/daily/metadata/00001-"), meta   # extended, not redone
    con = duckdb.connect()
    store_session(con)
    load_duckdb_iceberg(con)
    q = "select count(*), sum(mktrf) from iceberg_scan('{}') where year(date) >= 2024"
    now = con.sql(q.format(meta["daily"])).fetchone()
    assert now[0] == before[0] and now[1] == pytest.approx(float(source_sums(demo, wrds_db)[1]), rel=1e-12)
    t = w.iceberg_table("fama_french", "daily", url)               # on this machine: the store says what is current
    v1 = t.scan(snapshot_id=t.metadata.refs["v1"].snapshot_id).to_arrow()
    assert v1.num_rows >= before[0] and pytest.approx(before[1], rel=1e-12) == sum(
        x for x, d in zip(v1["mktrf"].to_pylist(), v1["date"].to_pylist(), strict=True) if d.year >= 2024)
    assert script(url, "verify", "--all", env_extra=e).returncode == 0
    store = ObjectStore(url)
    first = next(o.path for o in store.listing("iceberg/fama_french/daily/metadata")
                 if o.path.rsplit("/", 1)[1].startswith("00000-") and o.path.endswith(".metadata.json"))
    pointer = "iceberg/fama_french/daily/current"
    store.swap(pointer, f"{url}/{first}".encode(), store.head(pointer).etag)   # back at version 1's metadata
    r = script(url, "verify", "--all", env_extra=e)
    assert r.returncode == 1 and "fama_french.daily: the Iceberg table" in r.stdout, r.stdout + r.stderr
    r = script(url, "iceberg", env_extra=e)
    assert r.returncode == 0 and f"fama_french.daily: {url}/iceberg/fama_french/daily/metadata/" in r.stdout, r.stdout
    assert script(url, "verify", "--all", env_extra=e).returncode == 0
    from datetime import datetime, timezone

    from wrds_sync_nb.datadir import DataDir
    from wrds_sync_nb.storedir import vacuum_store
    res = vacuum_store(DataDir(url), "fama_french", now=datetime.now(timezone.utc) + timedelta(days=92))
    assert res.kept_versions == [2] and [f for f in res.files if "/daily/2024-" in f], res
    t = w.iceberg_table("fama_french", "daily", url)
    assert sorted(t.metadata.refs) == ["main", "v2"]                 # v1 expired before its files went
    named = {x.data_file.file_path for snap in t.metadata.snapshots for m in snap.manifests(t.io)
             for x in m.fetch_manifest_entry(t.io, discard_deleted=True)}
    assert named and all(store.head(p.removeprefix(url + "/")) is not None for p in named)


def test_the_python_api_adds_syncs_and_reads_a_data_dir_on_a_store(on_store, env):
    url, e = on_store
    code = (f"import wrds_sync_nb as w\n"
            f"w.add_table('comp.secd', name='secd_api', data_dir={url!r})\n"
            f"w.sync('secd_api', start_year=2025, data_dir={url!r}, progress='none')\n"
            f"print(w.connect({url!r}).sql('select count(*) from secd_api_secd').fetchone()[0])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **e},
                       timeout=180)
    assert r.returncode == 0, r.stderr
    m = manifest(ObjectStore(url), "secd_api", 1)
    assert int(r.stdout.strip().splitlines()[-1]) == sum(t.rows for t in m.tables.values()) > 0
    assert "secd_api" in script(url, "datasets", env_extra=e).stdout   # the definition is in the store

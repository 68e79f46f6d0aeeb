"""Sync under real faults: kill -9 at random moments, a reader racing a sync, a full disk (tmpfs),
a partition that times out or loses its connection on the server."""
import json
import random
import re
import subprocess
import sys
import textwrap
import time
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import fill
from synchelp import assert_equal_to_source, file_digests, manager

from wrds_sync_nb import events
from wrds_sync_nb.checkpoint import load_checkpoint, uncommitted
from wrds_sync_nb.client import WRDSClient
from wrds_sync_nb.datasets import DatasetRegistry, DatasetSpec, TableSpec
from wrds_sync_nb.errors import DiskSpaceError, SyncIncompleteError
from wrds_sync_nb.integrity import check_integrity
from wrds_sync_nb.layout import DataLayout, sha256_file
from wrds_sync_nb.manifest import ManifestManager
from wrds_sync_nb.sync import SyncManager

CHILD = textwrap.dedent("""
    import os, signal, sys
    from pydantic import SecretStr
    from wrds_sync_nb import events
    from wrds_sync_nb.client import WRDSClient
    from wrds_sync_nb.config import WRDSConfig
    from wrds_sync_nb.sync import SyncManager
    sock, db, data, mode, n = sys.argv[1:6]
    if mode == "manifest":  # die half-way through writing the n-th manifest
        import wrds_sync_nb.manifest as M
        real, count = M.atomic_write_bytes, [0]
        def dying(target, content, mode=0o644, replace=True):
            if target.suffix == ".json":
                count[0] += 1
                if count[0] == int(n):
                    tmp = target.with_name(f".{target.name}.{os.getpid()}.dying.tmp")
                    tmp.write_bytes(content[: len(content) // 2])
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(target, content, mode, replace)
        M.atomic_write_bytes = dying
    events.configure_logging("json", verbose=True, stream=sys.stdout)
    cfg = WRDSConfig(username="wrds_reader", password=SecretStr("demo-password"), host=sock, port=5432, database=db, sslmode="disable",
                     rate_limit_queries_per_minute=100000, application_name="kill9-child")
    SyncManager(WRDSClient(cfg), data, batch_rows=300).full_sync("crsp", start_year=2021, end_year=2025)
""")
PARTITIONS = 12  # crsp: daily 5 + monthly 5 + security_info + ccm_link
PUBLISHED = re.compile(r"(\d{4}|all)\.parquet")
VERSION = re.compile(r"(\d{4}|all)-[0-9a-f]{16}\.parquet")


def published_files_are_complete(data: Path):
    for folder, name in (("wrds", PUBLISHED), ("versions", VERSION)):
        for f in (data / folder).rglob("*"):
            if f.is_file():
                assert name.fullmatch(f.name), f"unexpected file {f}"
                assert pq.ParquetFile(f).metadata.num_rows > 0  # a complete Parquet file: footer readable


def sessions_closed(demo, deadline=30.0):
    """Wait (polling the server) until the killed child's sessions are gone, as its backends notice and exit."""
    end = time.monotonic() + deadline
    while demo.execute("select count(*) from pg_stat_activity where application_name = 'kill9-child'", database="postgres")[0][0]:
        assert time.monotonic() < end, "the killed run's sessions did not end"
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume(demo, wrds_db, tmp_path):
    rng = random.Random(20261126)
    sock = demo.socket_dir
    kinds = []
    for i in range(20):
        data = tmp_path / f"run{i}"
        mode, n = ("manifest", rng.randint(1, 10)) if i % 4 == 0 else ("events", rng.randint(1, 45))
        p = subprocess.Popen([sys.executable, "-c", CHILD, sock, wrds_db, str(data), mode, str(n)],
                             stdout=subprocess.PIPE, text=True)
        if mode == "events":
            for _ in range(n):  # let it run to its n-th event, whatever that is, then kill it
                line = p.stdout.readline()
                if not line:
                    break
                kinds.append(json.loads(line)["event"])
            p.kill()
        p.wait()
        p.stdout.close()
        sessions_closed(demo)  # the killed run's sessions end on the server before the next run counts against the role's limit
        published_files_are_complete(data)
        problems = check_integrity(SyncManager(None, data), "crsp")  # never writes: an uncommitted publish is no damage
        m = ManifestManager(DataLayout(data)).load("crsp")
        prog = load_checkpoint(DataLayout(data), "crsp")
        carried = {(t, k): e.path for t, es in uncommitted(prog).items() for k, e in es.items()  # published, not committed
                   if (data / e.path).exists() and sha256_file(data / e.path) == e.sha256}
        versions = {f.relative_to(data).as_posix() for f in (data / "versions").rglob("*") if f.is_file()}
        if m is not None:  # the run committed: one version holds every partition (killed before its views
            # moved, verify says which views are stale, and the next sync re-points them)
            assert all(p.startswith("stale view ") for p in problems) and len(m.files()) == PARTITIONS, problems
        else:  # killed before the commit: nothing visible, every published file is in the checkpoint for adoption
            assert problems == [f"dataset 'crsp' has no manifest: it has never been synced into {data}"]
            assert versions == set(carried.values())
            assert not list((data / "wrds").rglob("*.parquet"))  # no view before a commit
        finished = prog is not None and prog.status == "completed"
        done = PARTITIONS if finished else len(carried)  # after a finished run a full sync fetches nothing
        sm = manager(demo, wrds_db, data)
        with events.capture_events() as got:
            sm.full_sync("crsp", start_year=2021, end_year=2025)
        sm.client.close()
        fetched = sum(e["event"] == events.PARTITION_COMPLETED for e in got)
        assert fetched == PARTITIONS - done, f"run {i} ({mode} {n}): fetched {fetched}, {done} were done"
        assert check_integrity(SyncManager(None, data), "crsp") == []
        assert_equal_to_source(demo, wrds_db, data, "crsp", range(2021, 2026))
    assert events.PARTITION_COMPLETED in kinds and events.PARTITION_STARTED in kinds


READER = textwrap.dedent("""
    import glob, hashlib, io, json, os, sys
    import polars as pl
    root, stop = sys.argv[1], sys.argv[2]
    reads = errors = 0
    msgs, seen = [], set()
    while not os.path.exists(stop):
        for f in glob.glob(f"{root}/wrds/crsp/**/*.parquet", recursive=True):
            try:  # open each file once: a replaced partition is a new inode, so this sees the old or the new file
                with open(f, "rb") as fh:
                    data = fh.read()
                assert pl.read_parquet(io.BytesIO(data)).height > 0
                seen.add((os.path.relpath(f, root), hashlib.sha256(data).hexdigest()))
                reads += 1
            except FileNotFoundError:
                pass  # listed, then withdrawn at the source and moved to quarantine: not a read of a partial file
            except Exception as e:
                errors += 1; msgs.append(repr(e)[:200])
        open(stop + ".ready", "w").close()
    print(json.dumps({"reads": reads, "errors": errors, "msgs": msgs[:5], "seen": sorted(seen)}))
""")


def test_a_concurrent_reader_never_errors(demo, wrds_db, tmp_path):
    stop, data = tmp_path / "stop", tmp_path / "data"  # the reader's stop files stay out of the data dir
    reader = subprocess.Popen([sys.executable, "-c", READER, str(data), str(stop)], stdout=subprocess.PIPE, text=True)
    versions = set()  # every (table/partition, sha256) any manifest version ever listed

    def published():
        m = ManifestManager(DataLayout(data)).load("crsp")
        versions.update((f"{t}/{k}", e.sha256) for t, te in m.tables.items() for k, e in te.partitions.items())

    try:
        while not Path(str(stop) + ".ready").exists():  # the reader is looping
            assert reader.poll() is None
        sm = SyncManager(WRDSClient(demo.config(wrds_db)), data, batch_rows=200)
        sm.full_sync("crsp", start_year=2021, end_year=2025)
        published()
        for year, factor in ((2022, 1.1), (2025, 0.9)):  # incrementals that replace published years
            demo.restate_year("crsp.dsf_v2", "dlycaldt", year, "dlyprc", factor, database=wrds_db)
            demo.bump_comment("crsp.dsf_v2", date(2026, 3, year - 2020), database=wrds_db)
            sm.incremental_sync("crsp")
            published()
    finally:
        stop.touch()
        out = json.loads(reader.communicate(timeout=60)[0])
    assert out["errors"] == 0, out["msgs"]
    assert out["reads"] > 0
    seen = {(p.removeprefix("wrds/crsp/").removesuffix(".parquet"), h) for p, h in out["seen"]}
    assert seen <= versions, seen - versions  # per partition view, always a complete committed version
    assert len({h for p, h in seen if p == "daily/2022"}) == 2  # the reader saw 2022 before and after its restatement


def test_enospc_mid_partition_aborts_cleanly_and_resumes(demo, wrds_db, tmpfs):
    data = tmpfs / "data"
    sm = manager(demo, wrds_db, data)
    snapshot = {}

    def on_event(e):
        if e["event"] == events.PARTITION_STARTED and e["table"] == "daily" and e["partition"] == "2023" and not snapshot:
            snapshot["manifests"] = sorted(p.name for p in (data / "manifests").rglob("*.json"))
            snapshot["files"] = file_digests(data)
            snapshot["filler"] = fill(tmpfs)

    with events.listening(on_event), pytest.raises(DiskSpaceError) as e:
        sm.full_sync("crsp", start_year=2021, end_year=2025)  # two partition streams (the default budget of 3, less one)
    # the write that hit the full disk, or the other stream's check before its next partition: one line either way
    assert ("no space left on device" in str(e.value) or "% full" in str(e.value)) and "\n" not in str(e.value)
    assert sorted(p.name for p in (data / "manifests").rglob("*.json")) == snapshot["manifests"] == []  # nothing committed
    assert [f for f in (data / "tmp/staging").rglob("*") if f.is_file()] == []
    published_files_are_complete(data)
    prog = json.loads((data / "sync_progress/crsp.json").read_text())
    # tables run at once, so any of them; what was published but not checkpointed is journaled (and adopted if whole)
    carried = sorted(f"{t}/{k}" for t, es in uncommitted(load_checkpoint(DataLayout(data), "crsp")).items() for k, e in es.items()
                     if (data / e.path).exists() and sha256_file(data / e.path) == e.sha256)
    assert prog["status"] in ("running", "paused") and "daily/2023" not in carried  # 2021, 2022... as the streams got there
    now = file_digests(data)
    assert {k: now.get(k) for k in snapshot["files"]} == snapshot["files"]  # nothing published before was touched
    new = set(now) - set(snapshot["files"])  # the other streams' partitions, if they finished: in the checkpoint, kept
    assert all(k.startswith("versions/crsp/") and "/".join(k.split("/")[2:])[:-len("-0123456789abcdef.parquet")] in carried
               for k in new), (new, carried)

    snapshot["filler"].unlink()  # space is freed: the rerun resumes
    with events.capture_events() as got:
        sm.full_sync("crsp", start_year=2021, end_year=2025)
    assert sum(x["event"] == events.PARTITION_COMPLETED for x in got) == 12 - len(carried)  # only what was not carried
    assert_equal_to_source(demo, wrds_db, data, "crsp", range(2021, 2026))


def test_26_disk_over_95_percent_blocks_before_writing(demo, wrds_db, tmpfs):
    data = tmpfs / "data"
    DataLayout(data).ensure()
    fill(tmpfs, leave=300_000)  # ~96% used
    with events.capture_events() as got, pytest.raises(DiskSpaceError, match="% full"):
        manager(demo, wrds_db, data).full_sync("fama_french", start_year=2021, end_year=2025)
    assert [e for e in got if e["event"] == events.DISK_BLOCKED]
    assert not (data / "manifests/fama_french.json").exists()
    assert [f for f in (data / "wrds").rglob("*") if f.is_file()] == []


SLOW = """
create function ff.slow_guard(d date) returns boolean language plpgsql as $$
begin
  if extract(year from d) = 2023 and current_query() ilike '%order by "date"%' then
    if current_setting('wrds_test.mode', true) = 'kill' then perform pg_terminate_backend(pg_backend_pid()); end if;
    perform pg_sleep(0.05);
  end if;
  return true;
end $$;
create view ff.factors_guarded as select * from ff.factors_daily where ff.slow_guard(date);
grant select on ff.factors_guarded to wrds_reader;
"""


@pytest.mark.parametrize("fault", ["timeout", "connection killed"])
def test_36_a_failing_partition_does_not_stop_the_others_and_resumes(demo, wrds_db, tmp_path, fault):
    demo.execute(SLOW, database=wrds_db)
    if fault == "connection killed":
        demo.execute(f'alter database "{wrds_db}" set wrds_test.mode = \'kill\'', database="postgres")
    spec = DatasetSpec(name="ff_guarded", tables=[TableSpec(name="daily", source="ff.factors_guarded",
                                                            partition_column="date", key_columns=["date"])])
    reg = DatasetRegistry([spec])
    client = WRDSClient(demo.config(wrds_db, query_timeout_seconds=1))
    client.RETRY_INITIAL_WAIT = 0.05
    sm = SyncManager(client, tmp_path, registry=reg)
    with events.capture_events() as got, pytest.raises(SyncIncompleteError) as e:
        sm.full_sync("ff_guarded", start_year=2021, end_year=2025)
    assert "daily/2023" in str(e.value)
    done = sorted(ManifestManager(DataLayout(tmp_path)).load("ff_guarded").tables["daily"].partitions)
    assert done == ["2021", "2022", "2024", "2025"]
    assert [x["partition"] for x in got if x["event"] == events.PARTITION_FAILED] == ["2023"]
    demo.execute("create or replace function ff.slow_guard(d date) returns boolean language sql as 'select true'",
                 database=wrds_db)
    with events.capture_events() as got:
        sm.full_sync("ff_guarded", start_year=2021, end_year=2025)
    assert [x["partition"] for x in got if x["event"] == events.PARTITION_COMPLETED] == ["2023"]
    assert check_integrity(sm, "ff_guarded") == []


def test_27_damaged_checkpointed_file_is_quarantined_and_fetched_again(demo, wrds_db, tmp_path):
    data = tmp_path / "data"
    p = subprocess.Popen([sys.executable, "-c", CHILD, demo.socket_dir, wrds_db, str(data), "events", "0"],
                         stdout=subprocess.PIPE, text=True)
    for line in p.stdout:  # stop it once daily/2022 is complete (tables run at once: others may be too)
        e = json.loads(line)
        if e["event"] == events.PARTITION_COMPLETED and (e["table"], e["partition"]) == ("daily", "2022"):
            p.kill()
            break
    p.wait()
    p.stdout.close()
    victim = next((data / "versions/crsp/daily").glob("2022-*.parquet"))
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    with events.capture_events() as got:
        manager(demo, wrds_db, data).full_sync("crsp", start_year=2021, end_year=2025)
    assert [(x["partition"], x["stage"]) for x in got if x["event"] == events.CHECKSUM_MISMATCH] == [("2022", "resume")]
    assert list((data / "quarantine").glob(f"*_crsp_checksum*/{victim.name}"))
    assert ("daily", "2022") in [(x["table"], x["partition"]) for x in got if x["event"] == events.PARTITION_COMPLETED]
    assert_equal_to_source(demo, wrds_db, data, "crsp", range(2021, 2026))

"""SyncManager against the real embedded source (spec tests 20-42, plus)."""
import hashlib
import json
import os
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from synchelp import assert_equal_to_source, file_digests, manager

from wrds_sync_nb import events
from wrds_sync_nb.checkpoint import load_checkpoint
from wrds_sync_nb.datasets import DatasetRegistry
from wrds_sync_nb.errors import LockAcquisitionError, SchemaError, SyncIncompleteError
from wrds_sync_nb.integrity import check_integrity
from wrds_sync_nb.layout import DataLayout
from wrds_sync_nb.locking import AtomicFileLock
from wrds_sync_nb.manifest import ManifestManager
from wrds_sync_nb.periods import key_year
from wrds_sync_nb.schema import SchemaRegistry
from wrds_sync_nb.sync import SyncManager

YEARS = range(2021, 2026)
REGISTRY = DatasetRegistry.load()
ALL = REGISTRY.names()  # every built-in dataset: adding one to the registry adds it here


def last_year(ds, end=2025):
    return min(end, REGISTRY.get(ds).max_year or end)


def full(sm, ds, end=2025):
    return sm.full_sync(ds, start_year=2021, end_year=last_year(ds, end))


@pytest.mark.parametrize("dataset", ALL)
def test_34_full_sync_equals_source_for_every_builtin_dataset(demo, wrds_db, tmp_path, dataset):
    sm = manager(demo, wrds_db, tmp_path)
    m = full(sm, dataset)
    years = range(2021, last_year(dataset) + 1)
    assert_equal_to_source(demo, wrds_db, tmp_path, dataset, years)
    spec = DatasetRegistry.load().get(dataset)
    for name, t in m.tables.items():
        keys = sorted(t.partitions)
        if spec.table(name).templated:  # a table per year or day: the tables the source has in those years
            assert keys and all(key_year(k) in years for k in keys), name
        else:
            assert keys == (["all"] if t.partition_column is None else [str(y) for y in years]), name
    assert check_integrity(sm, dataset) == []
    assert m.last_sync_kind == "full" and m.last_success_at is not None


def test_20_21_staging_is_empty_after_success_and_after_failure(demo, wrds_db, tmp_path):
    sm = manager(demo, wrds_db, tmp_path)
    full(sm, "fama_french")
    assert [p for p in (tmp_path / "tmp" / "staging").rglob("*") if p.is_file()] == []
    published = sorted(p.name for p in (tmp_path / "wrds").rglob("*") if p.is_file())
    assert published and all(n.endswith(".parquet") for n in published)
    demo.drop_column("ff.factors_monthly", "rf", database=wrds_db)  # make the next run fail part-way
    demo.bump_comment("ff.factors_monthly", date(2026, 3, 1), database=wrds_db)
    with pytest.raises(SchemaError):
        sm.incremental_sync("fama_french")
    assert [p for p in (tmp_path / "tmp" / "staging").rglob("*") if p.is_file()] == []


def test_23_checksums_in_manifest_match_files(demo, wrds_db, tmp_path):
    m = full(manager(demo, wrds_db, tmp_path), "crsp")
    for rel, e in m.files().items():
        data = (tmp_path / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == e.sha256 and len(data) == e.bytes
        assert pq.ParquetFile(tmp_path / rel).metadata.num_rows == e.rows


def test_24_progress_checkpoint_lists_every_partition(demo, wrds_db, tmp_path):
    full(manager(demo, wrds_db, tmp_path), "compustat")
    prog = json.loads((tmp_path / "sync_progress" / "compustat.json").read_text())
    assert prog["status"] == "completed" and prog["pending"] == {}
    assert sorted(prog["completed"]["funda"]) == [str(y) for y in YEARS]
    assert prog["total_rows_synced"] == sum(demo.row_counts(wrds_db)[t] for t in ("comp.funda", "comp.fundq"))
    progress = load_checkpoint(DataLayout(tmp_path), "compustat")
    assert progress.years_completed == list(YEARS) and progress.years_remaining == []


def test_28_manifest_saved_only_after_data_is_fsynced_and_published(demo, wrds_db, tmp_path, monkeypatch):
    log = []
    real_fsync, real_save = os.fsync, ManifestManager.save

    def fsync(fd):
        log.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def save(self, m):
        for rel, e in m.files().items():  # everything the manifest will list is published, complete, durable
            p = tmp_path / rel
            assert p.exists() and hashlib.sha256(p.read_bytes()).hexdigest() == e.sha256
        log.append(("save", sorted(m.files())))
        return real_save(self, m)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(ManifestManager, "save", save)
    full(manager(demo, wrds_db, tmp_path), "fama_french")
    first_listing = {}
    for i, (kind, what) in enumerate(log):
        if kind == "save":
            for rel in what:
                first_listing.setdefault(rel, i)
    for rel, i in first_listing.items():
        fsynced = [j for j, (k, w) in enumerate(log[:i]) if k == "fsync" and "/tmp/staging/" in w
                   and Path(w).name.split(".")[0] == Path(rel).stem.split("-")[0]]
        dir_synced = [j for j, (k, w) in enumerate(log[:i]) if k == "fsync" and w == str((tmp_path / rel).parent)]
        assert fsynced and dir_synced, rel


def test_29_validation_gate_blocks_a_bad_partition(demo, wrds_db, tmp_path):
    demo.execute("insert into ff.factors_daily select * from ff.factors_daily where date = '2023-03-01'", database=wrds_db)
    sm = manager(demo, wrds_db, tmp_path)
    with events.capture_events() as got, pytest.raises(SyncIncompleteError) as e:
        full(sm, "fama_french")
    assert "daily/2023" in str(e.value) and "1 duplicate rows on key (date)" in str(e.value)
    m = ManifestManager(DataLayout(tmp_path)).load("fama_french")
    assert "2023" not in m.tables["daily"].partitions and "2022" in m.tables["daily"].partitions
    assert not (tmp_path / "wrds/fama_french/daily/2023.parquet").exists()
    q = [e for e in got if e["event"] == events.PARTITION_QUARANTINED]
    assert len(q) == 1 and q[0]["reason"] == "validation failed"
    note = json.loads((tmp_path / q[0]["where"]).parent.joinpath("note.json").read_text())
    assert note["failures"] == ["1 duplicate rows on key (date)"]


def test_30_incremental_moves_only_what_changed(demo, wrds_db, tmp_path):
    sm = manager(demo, wrds_db, tmp_path)
    full(sm, "crsp")
    before = file_digests(tmp_path)
    streamed = sm.client.rows_streamed
    with events.capture_events() as got:  # (1) nothing changed: no rows move, files untouched
        sm.incremental_sync("crsp")
    assert sm.client.rows_streamed == streamed and file_digests(tmp_path) == before
    assert sum(e["event"] == events.TABLE_UNCHANGED for e in got) == 4

    demo.execute("delete from crsp.dsf_v2 where dlycaldt >= '2025-12-01'", database=wrds_db)  # make room to append
    demo.bump_comment("crsp.dsf_v2", date(2026, 3, 1), database=wrds_db)
    sm.incremental_sync("crsp")
    base = file_digests(tmp_path)
    added = demo.append_days("crsp.dsf_v2", "dlycaldt", 3, database=wrds_db)  # (2) new days in the last year
    demo.bump_comment("crsp.dsf_v2", date(2026, 3, 2), database=wrds_db)
    with events.capture_events() as got:
        m = sm.incremental_sync("crsp")
    fetched = [(e["table"], e["partition"]) for e in got if e["event"] == events.PARTITION_COMPLETED]
    assert fetched == [("daily", "2025")] and added > 0
    after = file_digests(tmp_path)
    changed = {k.split("-")[0] if k.startswith("versions/") else k for k in after if base.get(k) != after[k]}
    assert changed == {"wrds/crsp/daily/2025.parquet", "versions/crsp/daily/2025"}  # a new version, and its view
    assert set(base) <= set(after)  # the version it replaced is kept
    assert m.tables["daily"].source_last_updated == "2026-03-02"

    demo.restate_year("crsp.dsf_v2", "dlycaldt", 2022, "dlyret", 1.1, database=wrds_db)  # (3) history restated
    demo.bump_comment("crsp.dsf_v2", date(2026, 3, 3), database=wrds_db)
    with events.capture_events() as got:
        sm.incremental_sync("crsp")
    assert [(e["table"], e["partition"]) for e in got if e["event"] == events.PARTITION_COMPLETED] == [("daily", "2022")]
    assert len(list((tmp_path / "versions/crsp/daily").glob("2022-*.parquet"))) == 2  # the old version is kept

    demo.delete_year("crsp.dsf_v2", "dlycaldt", 2021, database=wrds_db)  # (4) a year withdrawn
    demo.bump_comment("crsp.dsf_v2", date(2026, 3, 4), database=wrds_db)
    m = sm.incremental_sync("crsp")
    assert "2021" not in m.tables["daily"].partitions
    assert not (tmp_path / "wrds/crsp/daily/2021.parquet").exists()  # gone from the current view...
    assert list((tmp_path / "versions/crsp/daily").glob("2021-*.parquet"))  # ...kept for the versions that list it
    assert check_integrity(sm, "crsp") == []
    assert_equal_to_source(demo, wrds_db, tmp_path, "crsp", YEARS)  # daily 2021 is gone at the source too


def test_incremental_without_a_marker_compares_fingerprints(demo, wrds_db, tmp_path):
    demo.execute("comment on table ff.factors_daily is 'no marker here'", database=wrds_db)
    sm = manager(demo, wrds_db, tmp_path)
    full(sm, "fama_french")
    before = file_digests(tmp_path)
    sm.incremental_sync("fama_french")
    assert file_digests(tmp_path) == before  # fingerprints equal: nothing rewritten
    demo.restate_year("ff.factors_daily", "date", 2024, "smb", 2.0, database=wrds_db)
    with events.capture_events() as got:
        sm.incremental_sync("fama_french")
    assert [e["partition"] for e in got if e["event"] == events.PARTITION_COMPLETED] == ["2024"]


def test_37_reruns_are_idempotent(demo, wrds_db, tmp_path):
    sm = manager(demo, wrds_db, tmp_path)
    full(sm, "fama_french")
    first = {k: v[0] for k, v in file_digests(tmp_path).items()}
    full(sm, "fama_french")  # a second full sync rewrites, byte for byte the same
    sm.incremental_sync("fama_french")
    assert {k: v[0] for k, v in file_digests(tmp_path).items()} == first
    assert_equal_to_source(demo, wrds_db, tmp_path, "fama_french", YEARS)


def test_31_32_33_verify_needs_no_connection_and_finds_problems(demo, wrds_db, tmp_path):
    full(manager(demo, wrds_db, tmp_path), "fama_french")
    offline = SyncManager(None, tmp_path)
    assert check_integrity(offline, "fama_french") == []
    next((tmp_path / "versions/fama_french/daily").glob("2022-*.parquet")).unlink()
    p = tmp_path / "wrds/fama_french/daily/2023.parquet"  # the view is the version's file: this damages the version
    data = bytearray(p.read_bytes())
    data[100] ^= 0xFF
    p.write_bytes(bytes(data))
    (tmp_path / "wrds/fama_french/daily/stray.parquet").write_bytes(b"x")
    with events.capture_events() as got:
        problems = check_integrity(offline, "fama_french")
    assert problems[0].startswith("missing file versions/fama_french/daily/2022-")
    assert problems[1].startswith("checksum mismatch versions/fama_french/daily/2023-")
    assert problems[2:] == ["unknown file wrds/fama_french/daily/2022.parquet: not a version wrds-sync wrote",  # no version left
                            "unknown file wrds/fama_french/daily/stray.parquet: not a version wrds-sync wrote"]
    kinds = [e["event"] for e in got]
    assert kinds.count(events.CHECKSUM_MISMATCH) == 1 and kinds.count(events.MANIFEST_MISMATCH) == 3


def test_42_verify_checks_schemas_against_the_registry(demo, wrds_db, tmp_path):
    full(manager(demo, wrds_db, tmp_path), "fama_french")
    reg = SchemaRegistry(DataLayout(tmp_path))
    path = DataLayout(tmp_path).schema_path("fama_french", "daily")
    doc = json.loads(path.read_text())
    doc["versions"][0]["schema"]["columns"].pop()
    from wrds_sync_nb.schema import DatasetSchema
    doc["versions"][0]["fingerprint"] = DatasetSchema.model_validate(doc["versions"][0]["schema"]).fingerprint
    path.write_text(json.dumps(doc))
    assert len(reg.history("fama_french", "daily")) == 1
    problems = check_integrity(SyncManager(None, tmp_path), "fama_french")
    assert len(problems) == 5 and all("is not in the schema registry" in p for p in problems)


def test_38_new_column_accepted_warned_registered(demo, wrds_db, tmp_path):
    sm = manager(demo, wrds_db, tmp_path)
    full(sm, "fama_french")
    demo.add_column("ff.factors_daily", "rmw", database=wrds_db)
    demo.bump_comment("ff.factors_daily", date(2026, 3, 1), database=wrds_db)
    with events.capture_events() as got:
        sm.incremental_sync("fama_french")
    assert [e["columns"] for e in got if e["event"] == events.SCHEMA_NEW_COLUMNS] == [["rmw"]]
    hist = SchemaRegistry(DataLayout(tmp_path)).history("fama_french", "daily")
    assert [len(v.schema_.columns) for v in hist] == [6, 7]
    assert pq.read_schema(tmp_path / "wrds/fama_french/daily/2024.parquet").names[-1] == "rmw"
    assert check_integrity(sm, "fama_french") == []


@pytest.mark.parametrize("change", ["drop", "retype"])
def test_39_40_breaking_change_rejected_data_untouched(demo, wrds_db, tmp_path, change):
    sm = manager(demo, wrds_db, tmp_path)
    full(sm, "fama_french")
    before, mm = file_digests(tmp_path), ManifestManager(DataLayout(tmp_path))
    tables_before = mm.load("fama_french").tables
    if change == "drop":
        demo.drop_column("ff.factors_daily", "hml", database=wrds_db)
    else:
        demo.retype_column("ff.factors_daily", "smb", "text", database=wrds_db)
    demo.bump_comment("ff.factors_daily", date(2026, 3, 1), database=wrds_db)
    with events.capture_events() as got, pytest.raises(SchemaError) as e:
        sm.incremental_sync("fama_french")
    assert ("removed hml" if change == "drop" else "retyped smb Float64->String") in str(e.value)
    assert file_digests(tmp_path) == before
    assert mm.load("fama_french").tables["daily"] == tables_before["daily"]
    assert any(x["event"] == events.SCHEMA_BREAKING for x in got)


def test_sync_waits_for_and_reports_a_held_lock(demo, wrds_db, tmp_path):
    lock = AtomicFileLock(tmp_path / "locks", "fama_french", "other")
    tok = lock.acquire()
    sm = manager(demo, wrds_db, tmp_path)
    sm.lock_timeout_seconds = 0.2
    with pytest.raises(LockAcquisitionError) as e:
        full(sm, "fama_french")
    assert e.value.exit_code == 2 and not (tmp_path / "manifests" / "fama_french.json").exists()
    lock.release(tok)


def test_duration_slo_breach_is_reported(demo, wrds_db, tmp_path):
    sm = manager(demo, wrds_db, tmp_path)
    sm.FULL_SLO_SECONDS = 0
    with events.capture_events() as got:
        full(sm, "fama_french")
    slo = [e for e in got if e["event"] == events.DURATION_SLO_BREACH]
    assert len(slo) == 1 and slo[0]["kind"] == "full" and slo[0]["slo_seconds"] == 0


def test_legacy_crsp_ids_are_cast_to_int32(demo, wrds_db, tmp_path):
    full(manager(demo, wrds_db, tmp_path), "crsp_legacy")
    schema = pq.read_schema(tmp_path / "wrds/crsp_legacy/daily/2022.parquet")
    assert str(schema.field("permno").type) == "int32" and str(schema.field("permco").type) == "int32"


def test_incremental_keeps_to_the_synced_range(demo, wrds_db, tmp_path):
    sm = manager(demo, wrds_db, tmp_path)
    sm.full_sync("fama_french", start_year=2023, end_year=2025)
    demo.bump_comment("ff.factors_daily", date(2026, 3, 1), database=wrds_db)
    with events.capture_events() as got:
        m = sm.incremental_sync("fama_french")
    assert sorted(m.tables["daily"].partitions) == ["2023", "2024", "2025"]  # 2021-2022 exist at the source
    assert [e for e in got if e["event"] == events.PARTITION_COMPLETED] == []

"""Edge cases of the foundation modules: names, manifests (incl. crash safety), schemas, validation, datasets, logs."""
import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from datetime import date
from pathlib import Path

import fastcore.test as ft
import polars as pl
import pytest

from wrds_sync_nb import events
from wrds_sync_nb.datasets import DatasetRegistry
from wrds_sync_nb.errors import ConfigError, DatasetNameError, ManifestError, UnknownDatasetError
from wrds_sync_nb.layout import DataLayout, atomic_write_bytes
from wrds_sync_nb.manifest import ManifestManager, PartitionEntry, SyncManifest, TableEntry, utcnow
from wrds_sync_nb.schema import DatasetSchema, SchemaRegistry
from wrds_sync_nb.validation import DataValidator, PartitionRules

BAD_NAMES = ["../x", "a/b", "x;drop", "", "a" * 64, "..", "/etc", "crsp\n", "Crsp", "crsp-daily", " crsp"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_dataset_names_rejected_before_any_file_is_touched(tmp_path, name):
    lay = DataLayout(tmp_path / "data")
    for f in (lay.lock_path, lay.manifest_path, lay.progress_path, lay.dataset_dir, DatasetRegistry.load().get):
        with pytest.raises(DatasetNameError) as e:
            f(name)
        assert "\n" not in str(e.value) and "Fix:" in str(e.value)
    with pytest.raises(DatasetNameError):
        ManifestManager(lay).load(name)
    assert not (tmp_path / "data").exists()


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(UnknownDatasetError, match="known datasets: compustat, crsp, crsp_legacy, fama_french, optionmetrics, taq"):
        DatasetRegistry.load().get("ibes")


def _manifest(ds="crsp", rows=5):
    m = SyncManifest(dataset=ds)
    m.tables["daily"] = TableEntry(source_table="crsp.dsf_v2", partition_column="dlycaldt", partitions={
        "2020": PartitionEntry(path="wrds/crsp/daily/2020.parquet", rows=rows, bytes=9, sha256="00",
                               schema_fingerprint="11", synced_at=utcnow())})
    return m


def test_manifest_round_trip_and_versions(tmp_path):
    mm = ManifestManager(DataLayout(tmp_path).ensure())
    saved = mm.save(_manifest())
    assert mm.load("crsp") == saved and saved.version == 1
    again = mm.save(saved)
    assert again.version == 2 and again.tables == saved.tables
    assert mm.versions("crsp") == [1, 2] and mm.load_version("crsp", 1) == saved  # every version kept, unchanged


@pytest.mark.parametrize("edit", [
    lambda t: t.replace('"rows": 5', '"rows": 6'),                  # content changed, checksum not
    lambda t: t.replace('"dataset": "crsp"', '"dataset": "comp"'),  # moved between datasets
    lambda t: t[: len(t) // 2],                                       # torn
    lambda t: "",                                                     # empty
    lambda t: t.replace('"version": 1', '"version": "1"'),          # wrong type
    lambda t: json.dumps({**json.loads(t), "extra": True}),          # unknown field
])
def test_manifest_tampering_rejected(tmp_path, edit):
    lay = DataLayout(tmp_path).ensure()
    mm = ManifestManager(lay)
    mm.save(_manifest())
    p = mm.version_path("crsp", 1)  # the version file is the truth (the pointer is only a hint)
    p.write_text(edit(p.read_text()))
    with pytest.raises(ManifestError) as e:
        mm.load("crsp")
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_manifest_rollback_restores_previous_content(tmp_path):
    mm = ManifestManager(DataLayout(tmp_path).ensure())
    v1 = mm.save(_manifest(rows=5))
    mm.save(v1.model_copy(update={"tables": {}}))
    back = mm.rollback("crsp")
    assert back.tables["daily"].partitions["2020"].rows == 5 and back.version == 3


WRITER = textwrap.dedent("""
    import sys
    from wrds_sync_nb.layout import DataLayout
    from wrds_sync_nb.manifest import ManifestManager, PartitionEntry, SyncManifest, TableEntry, utcnow
    mm = ManifestManager(DataLayout(sys.argv[1]).ensure())
    m = mm.load_or_new("crsp")
    while True:
        parts = {str(y): PartitionEntry(path=f"wrds/crsp/daily/{y}.parquet", rows=m.version, bytes=1, sha256="0" * 64,
                 schema_fingerprint="f", synced_at=utcnow()) for y in range(1950, 2026)}
        m.tables["daily"] = TableEntry(source_table="crsp.dsf_v2", partitions=parts)
        m = mm.save(m)
        print(m.version, flush=True)
""")


def test_killed_manifest_writer_leaves_old_or_new_never_torn(tmp_path):
    lay = DataLayout(tmp_path).ensure()
    rng = random.Random(7)
    last = 0
    for _ in range(20):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(rng.randint(1, 4)):  # let it save a few versions, then kill it mid-stream
            assert p.stdout.readline()
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        p.stdout.close()
        m = ManifestManager(lay).load("crsp")  # raises if torn or tampered
        assert m is not None and m.version > last
        assert all(e.rows == m.version - 1 for e in m.tables["daily"].partitions.values())
        last = m.version
    leftovers = [f.name for f in lay.manifests_dir.iterdir() if f.name not in ("crsp.json", "crsp.json.prev", "history")]
    assert all(n.startswith(".crsp.json") and n.endswith(".tmp") for n in leftovers)


def test_atomic_write_never_shows_partial_content(tmp_path):
    target = tmp_path / "f.json"
    atomic_write_bytes(target, b"a" * 100_000)
    atomic_write_bytes(target, b"b" * 50)
    assert target.read_bytes() == b"b" * 50
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_schema_drift_classification_and_registry(tmp_path):
    a = DatasetSchema.from_dataframe(pl.DataFrame({"permno": pl.Series([1], dtype=pl.Int32), "ret": [0.5]}))
    reg = SchemaRegistry(DataLayout(tmp_path).ensure())
    reg.register_schema("crsp", "daily", a)
    add = DatasetSchema.from_dataframe(pl.DataFrame({"permno": pl.Series([1], dtype=pl.Int32), "ret": [0.5], "x": ["s"]}))
    drop = DatasetSchema.from_dataframe(pl.DataFrame({"permno": pl.Series([1], dtype=pl.Int32)}))
    retype = DatasetSchema.from_dataframe(pl.DataFrame({"permno": pl.Series([1.0]), "ret": [0.5]}))
    exp = reg.get_schema("crsp", "daily")
    assert exp.detect_drift(add).new_columns == ["x"] and not exp.detect_drift(add).has_breaking_changes
    assert exp.detect_drift(drop).removed_columns == ["ret"] and exp.detect_drift(drop).has_breaking_changes
    assert exp.detect_drift(retype).type_changes == {"permno": ("Int32", "Float64")}
    assert exp.detect_drift(retype).has_breaking_changes


@pytest.mark.parametrize("frame,failure", [
    (pl.DataFrame({"permno": [1, 1], "date": [date(2020, 1, 2)] * 2}), "1 duplicate rows on key"),
    (pl.DataFrame({"permno": [1, None], "date": [date(2020, 1, 2)] * 2}), "1 rows with a null in key"),
    (pl.DataFrame({"permno": [1, 2], "date": [date(2020, 1, 2), date(2021, 1, 4)]}), "1 rows with date outside 2020"),
    (pl.DataFrame({"permno": [1], "date": [date(2020, 1, 2)]}), "1 rows written but the source reported 2"),
    (pl.DataFrame({"permno": [], "date": []}, schema={"permno": pl.Int32, "date": pl.Date}), "partition is empty"),
])
def test_validator_rules_each_fail_on_a_crafted_parquet(tmp_path, frame, failure):
    p = tmp_path / "2020.parquet"
    frame.write_parquet(p)
    expected = 2 if failure.startswith("1 rows written") else len(frame)
    got = DataValidator().validate(p, PartitionRules(["permno", "date"], "date", 2020, expected))
    assert any(f.startswith(failure) for f in got), got


@pytest.mark.parametrize("text,needle", [
    ("[datasets.x]\ntables = [", "is not valid TOML"),
    ("[datasets.x]\ndescription = 1\ntables = [{name='t', source='a.b'}]", "key datasets.x.description"),
    ("[datasets.x]\ntables = [{name='t', source='a.b', wat=1}]", "key datasets.x.tables[0].wat: Extra inputs"),
    ("[datasets.x]\ntables = [{name='t', source='a.b', partition_column='d;drop'}]", "not a plain lowercase SQL identifier"),
    ("[datasets.x]\ntables = [{name='T', source='a.b'}]", "invalid table name 'T'"),
    ("[datasets.x]\ntables = [{name='t', source='a.b'}, {name='t', source='a.c'}]", "duplicate table names"),
    ("[other]\nx = 1", "key other: Extra inputs"),
])
def test_datasets_toml_errors_name_file_and_key(tmp_path, text, needle):
    f = tmp_path / "ds.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        DatasetRegistry.load(f)
    assert needle in str(e.value) and str(f) in str(e.value) and "\n" not in str(e.value)


def test_datasets_toml_overrides_builtin(tmp_path, monkeypatch):
    f = tmp_path / "ds.toml"
    f.write_text("[datasets.crsp]\ntables = [{name='daily', source='crsp.dsf', partition_column='date'}]\n")
    monkeypatch.setenv("WRDS_SYNC_DATASETS", str(f))
    assert [t.source for t in DatasetRegistry.load().get("crsp").tables] == ["crsp.dsf"]


def test_unreadable_datasets_file(tmp_path):
    d = tmp_path / "dir.toml"
    d.mkdir()
    with pytest.raises(ConfigError, match="cannot be read"):
        DatasetRegistry.load(d)


SECRET = "p@ss:w/rd %41\\ x"


def test_redaction_no_secret_in_any_event_or_log_line():
    events.register_secret(SECRET)
    buf = io.StringIO()
    h = events.configure_logging("json", stream=buf)
    try:
        with events.capture_events() as got:
            events.emit(events.SYNC_FAILED, dataset="crsp", error=f"FATAL: password authentication failed ({SECRET})")
            events.emit(events.CONNECTED, dsn=f"postgresql://ann:{SECRET}@host:9737/wrds", conninfo=f"password='{SECRET}'")
            events.emit(events.CONNECTED, nested={"list": [SECRET], "PGPASSWORD": "x"}, path=Path("/tmp") / SECRET)
            from urllib.parse import quote
            events.emit(events.CONNECTED, url=f"postgresql://ann:{quote(SECRET, safe='')}@h/db")
    finally:
        events.logger.removeHandler(h)
    out = buf.getvalue()
    assert len(out.splitlines()) == 4 and all(json.loads(line)["event"] for line in out.splitlines())
    for needle in ("p@ss", "w/rd", "%41", "p%40ss"):
        assert needle not in out and needle not in json.dumps(got)
    ft.test_eq(got[2]["nested"]["PGPASSWORD"], "***")


def test_config_error_for_data_dir_that_is_a_file(tmp_path):
    f = tmp_path / "data"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        DataLayout(f)
    assert f.read_text() == "x"

"""Every synced table an Iceberg table (issue: Iceberg): pyiceberg, DuckDB's iceberg_scan, polars and Daft read
crsp.daily equal to the source and its version 1 by tag and by time; a restore into another folder is read by
all of them; verify catches metadata that disagrees with the manifest; a kill -9 between our commit and the
Iceberg commit leaves a readable table the next command brings current; a shared PostgreSQL catalog."""
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import polars as pl
import pytest
from test_cli import script

import wrds_sync_nb as w
from wrds_sync_nb.datadir import DataDir
from wrds_sync_nb.history import vacuum
from wrds_sync_nb.iceberg import CATALOG_NAME, load_duckdb_iceberg, metadata_files
from wrds_sync_nb.integrity import check_integrity
from wrds_sync_nb.layout import DataLayout
from wrds_sync_nb.manifest import ManifestManager

CRSP = ["--dataset", "crsp", "--start-year", "2022", "--table", "daily"]
YEARLY = "select extract(year from dlycaldt)::int as y, count(*) as n, sum(dlyprc) as s from {} group by 1 order by 1"


def source(demo, db):
    """crsp.dsf_v2 at the source, per year: rows and the sum of prices."""
    rows = demo.execute(YEARLY.format("crsp.dsf_v2"), database=db)
    return {int(y): (int(n), float(s)) for y, n, s in rows if y >= 2022}


def per_year(frame: pl.DataFrame) -> dict:
    g = frame.group_by(pl.col("dlycaldt").dt.year().alias("y")).agg(pl.len().alias("n"), pl.col("dlyprc").sum())
    return {int(r["y"]): (int(r["n"]), float(r["dlyprc"])) for r in g.iter_rows(named=True)}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k][0] == b[k][0] and a[k][1] == pytest.approx(b[k][1], rel=1e-12)
                                        for k in a)


def engines(table, snapshot_id=None):
    """crsp.daily as each engine reads it (the current snapshot, or the one given), per year."""
    import daft
    con = duckdb.connect()
    load_duckdb_iceberg(con)
    at = f", snapshot_from_id={snapshot_id}" if snapshot_id else ""
    duck = con.sql(f"select * from iceberg_scan('{table.metadata_location}'{at})").pl()
    return {
        "pyiceberg": per_year(pl.from_arrow(table.scan(snapshot_id=snapshot_id).to_arrow())),
        "duckdb": per_year(duck),
        "polars": per_year(pl.scan_iceberg(table, snapshot_id=snapshot_id).collect()),
        "daft": per_year(pl.from_arrow(daft.read_iceberg(table, snapshot_id=snapshot_id).to_arrow())),
    }


def listing(root: Path):
    return {(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def restate(demo, db):
    demo.restate_year("crsp.dsf_v2", "dlycaldt", 2024, "dlyprc", 1.5, database=db)
    demo.bump_comment("crsp.dsf_v2", date(2026, 3, 3), database=db)


def test_every_engine_reads_crsp_daily_and_its_version_1_by_tag_and_by_time(env, demo, wrds_db, tmp_path):
    data = tmp_path / "d"
    assert script(data, "full-sync", *CRSP).returncode == 0
    before = source(demo, wrds_db)
    restate(demo, wrds_db)
    r = script(data, "incremental", "--dataset", "crsp")
    assert r.returncode == 0 and "version 2" in r.stdout, r.stdout + r.stderr
    now = source(demo, wrds_db)
    assert now[2024] != before[2024] and now[2023] == before[2023]
    files = listing(data)
    table = w.iceberg_table("crsp", "daily", data)
    assert sorted(n for n in table.metadata.refs if n != "main") == ["v1", "v2"]
    for name, got in engines(table).items():
        assert same(got, now), name
    v1 = table.snapshot_by_name("v1").snapshot_id
    for name, got in engines(table, v1).items():
        assert same(got, before), name
    committed = ManifestManager(DataLayout(data)).load_version("crsp", 1).updated_at
    con = duckdb.connect()
    load_duckdb_iceberg(con)
    at = con.sql(f"select * from iceberg_scan('{table.metadata_location}', "
                 f"snapshot_from_timestamp='{committed.isoformat()}')").pl()
    assert same(per_year(at), before)   # FOR TIMESTAMP AS OF a version's commit time: that version
    ours = w.connect(data, as_of=committed).sql("select * from crsp.dsf_v2").pl()
    assert same(per_year(ours), before)
    assert listing(data) == files         # reading through every engine wrote nothing in the data dir
    rows = json.loads(script(data, "status", "--json").stdout)["tables"]
    daily = next(r for r in rows if r["dataset"] == "crsp" and r["table"] == "daily")
    assert daily["iceberg_metadata"] == table.metadata_location


def test_vacuum_expires_a_snapshot_before_removing_its_files(env, demo, wrds_db, tmp_path):
    data = tmp_path / "d"
    assert script(data, "full-sync", *CRSP).returncode == 0
    restate(demo, wrds_db)
    assert script(data, "incremental", "--dataset", "crsp").returncode == 0
    res = vacuum(DataDir(data), "crsp", now=datetime.now(timezone.utc) + timedelta(days=92))
    assert [f for f in res.files if f.startswith("versions/")] and res.kept_versions == [2]
    table = w.iceberg_table("crsp", "daily", data)
    assert sorted(table.metadata.refs) == ["main", "v2"]
    io = table.io
    named = {e.data_file.file_path for s in table.metadata.snapshots for m in s.manifests(io)
             for e in m.fetch_manifest_entry(io, discard_deleted=True)}
    assert named and all(Path(p).is_file() for p in named)   # no snapshot names a removed file
    assert same(engines(table)["duckdb"], source(demo, wrds_db))
    assert check_integrity(DataDir(data), "crsp", current_only=True) == []  # (verify would judge at today)


def test_a_restore_into_another_folder_is_read_by_every_engine(env, demo, wrds_db, tmp_path):
    data, remote, restored = tmp_path / "d", tmp_path / "remote", tmp_path / "restored"
    assert script(data, "full-sync", *CRSP).returncode == 0
    before = source(demo, wrds_db)
    restate(demo, wrds_db)
    assert script(data, "incremental", "--dataset", "crsp").returncode == 0
    assert script(data, "backup", "--remote", str(remote)).returncode == 0
    r = script(restored, "restore", "--remote", str(remote), "--to", str(restored))
    assert r.returncode == 0, r.stderr
    table = w.iceberg_table("crsp", "daily", restored)
    assert table.metadata.location.startswith(str(restored))
    io = table.io
    paths = {e.data_file.file_path for m in table.current_snapshot().manifests(io)
             for e in m.fetch_manifest_entry(io, discard_deleted=True)}
    assert paths and all(p.startswith(str(restored)) for p in paths)   # the restored copy's files, not the old
    for name, got in engines(table).items():
        assert same(got, source(demo, wrds_db)), name
    for name, got in engines(table, table.snapshot_by_name("v1").snapshot_id).items():
        assert same(got, before), name
    assert script(restored, "verify", "--all").returncode == 0


def test_verify_fails_when_the_iceberg_metadata_and_the_manifest_disagree(env, demo, wrds_db, tmp_path):
    data = tmp_path / "d"
    assert script(data, "full-sync", "--dataset", "fama_french", "--start-year", "2023").returncode == 0
    first = metadata_files(DataLayout(data), "fama_french")["daily"]
    demo.restate_year("ff.factors_daily", "date", 2024, "mktrf", 2.0, database=wrds_db)
    demo.bump_comment("ff.factors_daily", date(2026, 3, 1), database=wrds_db)
    assert script(data, "incremental", "--dataset", "fama_french").returncode == 0
    assert script(data, "verify", "--dataset", "fama_french").returncode == 0
    with sqlite3.connect(data / "iceberg" / "catalog.db") as c:   # the catalog pointed back at version 1
        c.execute("update iceberg_tables set metadata_location = ? where catalog_name = ? and table_name = 'daily'",
                  (first, CATALOG_NAME))
    r = script(data, "verify", "--dataset", "fama_french")
    assert r.returncode == 1 and "fama_french.daily: the Iceberg table's current snapshot lists 1 file(s)" in r.stdout, r.stdout
    assert "wrds-sync iceberg --dataset fama_french" in r.stdout
    r = script(data, "iceberg", "--dataset", "fama_french", "--rebuild")
    assert r.returncode == 0 and "fama_french.daily: iceberg/fama_french/daily/metadata/" in r.stdout, r.stdout
    assert script(data, "verify", "--dataset", "fama_french").returncode == 0


KILLED = textwrap.dedent("""
    import importlib, os, signal, sys
    I = importlib.import_module("wrds_sync_nb.iceberg")
    def dying(*a):  # the new metadata written, the catalog not yet pointed at it: the Iceberg commit
        os.kill(os.getpid(), signal.SIGKILL)
    I.point_catalog = dying
    from wrds_sync_nb.cli import main
    sys.argv = ["wrds-sync", "--data-dir", sys.argv[1], "incremental", "--dataset", "crsp"]
    main()
""")


def test_a_kill_between_our_commit_and_the_iceberg_commit_leaves_a_table_the_next_command_brings_current(
        env, demo, wrds_db, tmp_path):
    data = tmp_path / "d"
    assert script(data, "full-sync", *CRSP).returncode == 0
    before = source(demo, wrds_db)
    restate(demo, wrds_db)
    r = subprocess.run([sys.executable, "-c", KILLED, str(data)], capture_output=True, text=True, env=os.environ)
    assert r.returncode == -9, r.stderr
    assert ManifestManager(DataLayout(data)).load("crsp").version == 2      # our commit happened
    table = w.iceberg_table("crsp", "daily", data)                         # the Iceberg one did not
    assert sorted(n for n in table.metadata.refs if n != "main") == ["v1"]
    assert same(engines(table)["duckdb"], before)                           # readable, at version 1
    r = script(data, "verify", "--dataset", "crsp")
    assert r.returncode == 1 and "crsp.daily: the Iceberg table" in r.stdout, r.stdout
    assert script(data, "incremental", "--dataset", "crsp").returncode == 0  # the next command
    table = w.iceberg_table("crsp", "daily", data)
    assert sorted(n for n in table.metadata.refs if n != "main") == ["v1", "v2"]
    assert same(engines(table)["duckdb"], source(demo, wrds_db))
    assert script(data, "verify", "--dataset", "crsp").returncode == 0


def test_a_shared_postgresql_catalog_is_kept_current_and_a_refusing_one_never_fails_the_sync(env, demo, wrds_db,
                                                                                            tmp_path):
    from pyiceberg.catalog.sql import SqlCatalog
    db = f"iceberg_{wrds_db}"
    demo.execute("do $$ begin if not exists (select from pg_roles where rolname = 'iceberg_owner') then "
                 "create role iceberg_owner login password 'cat-pw'; end if; end $$", database="postgres")
    demo.execute(f'create database "{db}" owner iceberg_owner', database="postgres")
    uri = f"postgresql+psycopg2://iceberg_owner:cat-pw@/{db}?host={demo.socket_dir}"
    data = tmp_path / "d"
    try:
        r = script(data, "full-sync", "--dataset", "fama_french", "--start-year", "2023",
                   env_extra={"WRDS_SYNC_ICEBERG_CATALOG": uri})
        assert r.returncode == 0, r.stderr
        shared = SqlCatalog(CATALOG_NAME, uri=uri).load_table(("fama_french", "daily"))
        assert shared.metadata_location == metadata_files(DataLayout(data), "fama_french")["daily"]
        want = demo.execute("select count(*) from ff.factors_daily where date >= '2023-01-01'", database=wrds_db)
        assert shared.scan().to_arrow().num_rows == want[0][0]
        bad = "postgresql+psycopg2://iceberg_owner:wrong-s3cret@127.0.0.1:1/nodb"
        demo.bump_comment("ff.factors_daily", date(2026, 3, 1), database=wrds_db)
        r = script(data, "incremental", "--dataset", "fama_french",
                   env_extra={"WRDS_SYNC_ICEBERG_CATALOG": bad})
        assert r.returncode == 0, r.stderr
        assert "wrong-s3cret" not in r.stdout + r.stderr
        assert "sync.iceberg.behind" in r.stderr and "check WRDS_SYNC_ICEBERG_CATALOG" in r.stderr, r.stderr
    finally:
        demo.execute(f'drop database if exists "{db}" with (force)', database="postgres")


def test_a_column_added_at_the_source_is_a_new_schema_and_version_1_keeps_its_own(env, demo, wrds_db, tmp_path):
    data = tmp_path / "d"
    assert script(data, "full-sync", "--dataset", "fama_french", "--start-year", "2024").returncode == 0
    demo.add_column("ff.factors_daily", "cma", "double precision", database=wrds_db)
    demo.bump_comment("ff.factors_daily", date(2026, 3, 1), database=wrds_db)
    assert script(data, "incremental", "--dataset", "fama_french").returncode == 0
    table = w.iceberg_table("fama_french", "daily", data)
    assert [len(s.fields) for s in table.metadata.schemas] == [6, 7]
    assert table.schema().find_field("cma").field_id == 7          # numbered after the columns before it
    v1 = pl.from_arrow(table.scan(snapshot_id=table.snapshot_by_name("v1").snapshot_id).to_arrow())
    now = pl.scan_iceberg(table).collect()
    assert "cma" not in v1.columns and now["cma"].null_count() == 0 and v1.height == now.height
    assert script(data, "verify", "--dataset", "fama_french").returncode == 0

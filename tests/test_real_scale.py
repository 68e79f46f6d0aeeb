"""WRDS at its real scale: sessions and logins per run counted on the wire, nothing fetched twice, a version only
when data changed (issue: real scale). Every command runs as the installed `wrds-sync` script, through a
counting proxy in front of the test server's socket."""
import importlib
import json
import time

import pytest
from pgproxy import CountingProxy
from synchelp import manager
from test_cli import FF, script

from wrds_sync_nb.errors import SyncIncompleteError
from wrds_sync_nb.layout import DataLayout
from wrds_sync_nb.manifest import ManifestManager


@pytest.fixture
def proxy(demo, env, tmp_path, monkeypatch):
    """WRDS_HOST pointing at a counting proxy in front of the test server."""
    p = CountingProxy(tmp_path / "proxy", f"{env['WRDS_HOST']}/.s.PGSQL.5432")
    monkeypatch.setenv("WRDS_HOST", str(p.folder))
    yield p
    p.close()


def versions(data, ds):
    return ManifestManager(DataLayout(data)).versions(ds)


def cite(data, ds):
    r = script(data, "cite", "--dataset", ds)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[0]


def test_a_second_full_sync_and_a_noop_incremental_move_little_and_commit_no_version(demo, proxy, tmp_path,
                                                                                    monkeypatch):
    demo.build("scale", daily_rows=60_000, start_year=2024, end_year=2025)  # about 6 MB of CRSP daily rows
    monkeypatch.setenv("WRDS_DATABASE", "scale")
    crsp = ["--dataset", "crsp", "--table", "daily", "--start-year", "2024", "--end-year", "2025"]
    data = tmp_path / "data"
    r = script(data, "full-sync", *crsp)
    assert r.returncode == 0, r.stderr
    _, first = proxy.reset()
    stamp = cite(data, "crsp")
    for args in (("full-sync", *crsp), ("incremental", "--dataset", "crsp")):
        r = script(data, *args)
        assert r.returncode == 0 and "nothing changed at the source; still version 1" in r.stdout, r.stderr
        _, moved = proxy.reset()
        assert moved < 0.05 * first, (args, moved, first)
    assert versions(data, "crsp") == [1] and cite(data, "crsp") == stamp
    rows = json.loads(script(data, "status", "--json").stdout)["tables"]
    daily = next(x for x in rows if (x["dataset"], x["table"]) == ("crsp", "daily"))
    assert (daily["version"], daily["kind"]) == (1, "incremental")  # the check is shown, the version stays


def test_full_sync_force_fetches_every_partition_again(proxy, tmp_path):
    data = tmp_path / "data"
    assert script(data, "full-sync", *FF).returncode == 0
    _, first = proxy.reset()
    r = script(data, "full-sync", *FF, "--force")
    assert r.returncode == 0, r.stderr
    _, again = proxy.reset()
    assert again > 0.5 * first
    assert versions(data, "fama_french") == [1]  # the same bytes again: still no new version


def test_a_run_opens_at_most_its_session_budget_in_all(proxy, tmp_path, monkeypatch):
    # the ADBC driver opens one more, short connection of its own when its database object starts (`SELECT
    # version()`, then closed: c/driver/postgresql/database.cc), whatever its type resolver; every other
    # connection is one of the run's sessions, opened once and reused
    for budget in (1, 3):
        monkeypatch.setenv("WRDS_MAX_CONNECTIONS", str(budget))
        for args in (("full-sync", *FF), ("incremental", "--dataset", "fama_french")):
            r = script(tmp_path / f"data{budget}", *args)
            assert r.returncode == 0, r.stderr
            opened, _ = proxy.reset()
            assert 2 <= opened <= budget + 1, (budget, args, opened)


def test_incremental_all_with_a_wrong_password_makes_one_login_attempt(proxy, tmp_path, monkeypatch):
    data = tmp_path / "data"
    for ds in ("fama_french", "compustat", "crsp"):
        r = script(data, "full-sync", "--dataset", ds, "--start-year", "2024", "--end-year", "2024",
                   *(("--table", "monthly") if ds == "crsp" else ()))
        assert r.returncode == 0, r.stderr
    proxy.reset()
    monkeypatch.setenv("WRDS_PASSWORD", "wrong")
    r = script(data, "incremental", "--all")
    opened, _ = proxy.reset()
    assert r.returncode == 1 and opened == 1, (opened, r.stderr)
    assert [x for x in r.stderr.splitlines() if x.startswith("error: ")][0].count("rejected") == 1
    assert "crsp:" not in r.stdout and "compustat:" not in r.stdout


def test_a_null_key_is_named_whatever_the_split(demo, wrds_db, tmp_path, monkeypatch):
    monkeypatch.setattr(importlib.import_module("wrds_sync_nb.partition"), "SPLIT_MIN_ROWS", 1)
    demo.execute("insert into crsp_a_stock.dsf_v2 (permno, dlycaldt) values (null, date '2024-06-03')",
                 database=wrds_db)
    for budget in (1, 3):
        sm = manager(demo, wrds_db, tmp_path / f"d{budget}", max_connections=budget)
        with pytest.raises(SyncIncompleteError) as e:
            sm.full_sync("crsp", 2024, 2024, tables=["daily"])
        sm.client.close()
        assert "null in key" in str(e.value) and "set its key_columns" in str(e.value), (budget, str(e.value))
        assert "rows written but the source reported" not in str(e.value)


BIG = "wrds_big_template"
CATALOGUE_SQL = """do $$ begin for i in 1..%s loop
  execute format('create schema lib%%s', i);
  execute format('grant usage on schema lib%%s to public', i);
  for j in 1..20 loop
    execute format('create table lib%%s.t%%s (gvkey varchar(6), datadate date, x numeric(10,2), y double precision,
                    z text)', i, j);
  end loop;
  for j in 1..10 loop execute format('create view lib%%s.v%%s as select * from lib%%s.t%%s', i, j, i, j); end loop;
  commit;
end loop; end $$"""


@pytest.fixture(scope="session")
def big_template(demo):
    """The WRDS-shaped template with a catalogue of WRDS's size added: 1,000 more libraries of 30 relations
    (about 70,000 pg_class and 60,000 pg_type rows), built once per test session."""
    from conftest import TEMPLATE
    demo.clone(TEMPLATE, BIG)
    conn = demo.connect(BIG)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(CATALOGUE_SQL % 1000)
    conn.close()
    return BIG


def catalogue_rows_scanned(demo, db):
    """Rows of pg_type and pg_attribute read by sequential scans in `db` so far (what a driver reading the whole
    type catalogue costs), from the server's own statistics."""
    demo.execute("select pg_stat_clear_snapshot()", database=db)
    return demo.execute("select coalesce(sum(seq_tup_read), 0)::bigint from pg_stat_sys_tables "
                        "where relname in ('pg_type', 'pg_attribute')", database=db)[0][0]


def test_commands_cost_the_same_on_a_wrds_sized_catalogue(demo, env, big_template, tmp_path, monkeypatch, capsys):
    big = "wrds_big_copy"
    demo.clone(big_template, big)
    try:
        timings = {}
        for name in (env["WRDS_DATABASE"], big):
            monkeypatch.setenv("WRDS_DATABASE", name)
            for args in (("libraries",), ("tables", "crsp"), ("describe", "crsp.dsf_v2"), ("full-sync", *FF)):
                before = catalogue_rows_scanned(demo, name)
                t0 = time.monotonic()
                r = script(tmp_path / name, *args)
                timings[(name, args[0])] = time.monotonic() - t0
                assert r.returncode == 0, (args, r.stderr)
                scanned = catalogue_rows_scanned(demo, name) - before
                assert scanned < 5_000, (name, args, scanned)  # a whole read of the big catalogue: 550,000
        with capsys.disabled():
            print({k: round(v, 2) for k, v in timings.items()})
        libs = script(tmp_path, "libraries").stdout
        assert "lib1000" in libs and "crsp" in libs
    finally:
        demo.execute(f'drop database if exists "{big}" with (force)', database="postgres")


def fetched_partitions(stderr):
    """(table, partition) of every partition a `-v --log-format json` run fetched."""
    evs = [json.loads(x) for x in stderr.splitlines() if x.startswith("{")]
    return sorted((e["table"], e["partition"]) for e in evs if e["event"] == "sync.partition.completed")


def test_a_dropped_column_and_an_in_place_edit_of_a_day_table_are_seen(env, demo, wrds_db, tmp_path):
    taq = ["--dataset", "taq", "--start-year", "2025"]
    r = script(tmp_path, "full-sync", *taq)
    assert r.returncode == 0, r.stderr
    demo.execute("alter table taqm_2025.ctm_20251222 drop column tr_id", database=wrds_db)   # its columns' digest
    r = script(tmp_path, "--log-format", "json", "-v", "incremental", "--dataset", "taq")
    assert r.returncode == 0 and fetched_partitions(r.stderr) == [("trades", "2025-12-22")], r.stderr
    demo.execute("update taqm_2025.complete_nbbo_20251229 set best_bid = best_bid * 2", database=wrds_db)
    demo.execute("analyze taqm_2025.complete_nbbo_20251229", database=wrds_db)   # the catalogue: as it was
    plans = json.loads(script(tmp_path, "incremental", "--dataset", "taq", "--dry-run", "--json", "--deep").stdout)
    assert [(t, it["partition"]) for t, p in plans["taq"].items() for it in p if it["action"] == "fetch"] == [
        ("nbbo", "2025-12-29")]
    r = script(tmp_path, "--log-format", "json", "-v", "incremental", "--dataset", "taq", "--deep")
    assert r.returncode == 0 and fetched_partitions(r.stderr) == [("nbbo", "2025-12-29")], r.stderr


def test_dry_runs_give_partitions_rows_and_bytes_before_a_big_pull(env, tmp_path):
    r = script(tmp_path, "full-sync", *FF, "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)["fama_french"]
    assert {it["action"] for p in plan.values() for it in p} == {"fetch"} and all(
        it["rows"] > 0 for it in plan["daily"])
    r = script(tmp_path, "full-sync", *FF, "--dry-run")
    assert "daily: fetch 5 (full sync); about" in r.stdout and "to download" in r.stdout, r.stdout
    assert not (tmp_path / "manifests").exists()   # a dry run writes nothing
    assert script(tmp_path, "full-sync", *FF).returncode == 0
    r = script(tmp_path, "full-sync", *FF, "--dry-run")
    assert "daily: keep 5 (source marker unchanged" in r.stdout, r.stdout   # the evidence it rests on


def test_status_and_connect_read_the_current_version_only_whatever_the_number_of_versions(env, tmp_path,
                                                                                          monkeypatch):
    from wrds_sync_nb import manifest, reader
    from wrds_sync_nb.datasets import DatasetRegistry
    from wrds_sync_nb.status import status_rows
    data = tmp_path / "d"
    assert script(data, "full-sync", *FF).returncode == 0
    mm = ManifestManager(DataLayout(data))
    m = mm.load("fama_french")
    for _ in range(60):   # 61 versions in the history
        m = mm.save(m)
    parsed: list[str] = []
    real = manifest.parse_manifest
    monkeypatch.setattr(manifest, "parse_manifest", lambda ds, data, where: parsed.append(where) or real(ds, data, where))
    rows = status_rows(DataLayout(data), DatasetRegistry.load())
    assert {r["version"] for r in rows if r["dataset"] == "fama_french"} == {61}
    assert len(parsed) <= 3, parsed   # the pointer and the current version, not the 60 before it
    parsed.clear()
    assert reader.connect(data).sql("select count(*) from ff.factors_monthly").fetchone()[0] > 0
    assert len(parsed) <= 3, parsed

"""Products WRDS keeps as one table per year or per day (OptionMetrics, TAQ): full syncs equal to the sources,
a new period's table fetched alone, a reloaded past table refetched alone, holidays that are no partition,
resume after kill -9 across source tables, and any such product added with `wrds-sync add`."""
import json
import random
import subprocess
import sys
import textwrap
from datetime import date

import polars as pl
import pyarrow.parquet as pq
from synchelp import (
    aggregates,
    file_digests,
    local_frame,
    manager,
    normalise,
    row_hash,
    templated_source_frame,
)
from test_cli import one_error, script
from test_sync_faults import sessions_closed

from wrds_sync_nb import events
from wrds_sync_nb.checkpoint import load_checkpoint, uncommitted
from wrds_sync_nb.datasets import DatasetRegistry
from wrds_sync_nb.integrity import check_integrity
from wrds_sync_nb.layout import DataLayout
from wrds_sync_nb.manifest import ManifestManager
from wrds_sync_nb.partition import is_intact
from wrds_sync_nb.sync import SyncManager

TAQ_DAYS = 14  # 20-31 December of 2024 and 2025, weekdays less Christmas: the template database's TAQ


def assert_templated_equal(demo, db, data, dataset, table, years):
    src = normalise(templated_source_frame(demo, db, dataset, table, years))
    loc = normalise(local_frame(data, dataset, table))
    assert loc.height == src.height > 0, (table, loc.height, src.height)
    assert sorted(loc.columns) == sorted(src.columns), table
    loc = loc.select(src.columns)
    assert aggregates(loc) == aggregates(src), table
    assert row_hash(loc) == row_hash(src), table


def completed(got):
    return sorted((e["table"], e["partition"]) for e in got if e["event"] == events.PARTITION_COMPLETED)


def test_full_sync_through_the_script_equals_the_sources_and_holidays_are_no_partition(env, demo, wrds_db, tmp_path):
    data = tmp_path / "d"
    for ds, years in (("taq", ("2024", "2025")), ("optionmetrics", ("2021", "2025"))):
        r = script(data, "full-sync", "--dataset", ds, "--start-year", years[0], "--end-year", years[1])
        assert r.returncode == 0, r.stderr
    for t in ("trades", "quotes", "nbbo"):
        assert_templated_equal(demo, wrds_db, data, "taq", t, range(2024, 2026))
    for t in ("option_prices", "security_prices"):
        assert_templated_equal(demo, wrds_db, data, "optionmetrics", t, range(2021, 2026))
    m = ManifestManager(DataLayout(data)).load("taq")
    keys = sorted(m.tables["trades"].partitions)
    assert len(keys) == TAQ_DAYS and "2024-12-25" not in keys and "2025-12-25" not in keys
    assert (data / "wrds/taq/trades/year=2025/2025-12-22.parquet").is_file()
    assert len(m.tables["trades"].sources) == TAQ_DAYS  # each day's table, as the catalogue saw it
    # the 2021 option table lacks forward_price: its file has the column, all null, and every file one schema
    opt = sorted((data / "wrds/optionmetrics/option_prices").glob("*.parquet"))
    assert len({pq.read_schema(f) for f in opt}) == 1
    assert pl.read_parquet(opt[0])["forward_price"].null_count() == pl.read_parquet(opt[0]).height > 0
    for args in (["verify", "--all"], ["incremental", "--dataset", "taq", "--dry-run"], ["status"]):
        r = script(data, *args)
        assert r.returncode == 0 and "missing" not in r.stdout.lower() and "remove" not in r.stdout, (args, r.stdout, r.stderr)


def test_new_day_and_new_year_tables_are_fetched_alone_and_an_unchanged_catalogue_scans_nothing(demo, wrds_db, tmp_path):
    sm = manager(demo, wrds_db, tmp_path)
    # without the rolling deep check (tested in test_real_scale), an unchanged catalogue scans no table
    sm.registry = DatasetRegistry([d.model_copy(update={"deep_check_days": 0}) for d in sm.registry])
    sm.full_sync("taq", 2024, 2025)
    sm.full_sync("optionmetrics", 2024, 2025, tables=["option_prices"])
    before = file_digests(tmp_path)
    q0 = sm.client.queries
    with events.capture_events() as got:
        sm.incremental_sync("taq")
    # catalogue queries only (per product: readable?, then its tables found and the newest described): no day table scanned
    assert completed(got) == [] and sm.client.queries - q0 <= 3 * 4
    day = demo.add_period_table("taqm_{year}.ctm_{date:%Y%m%d}", "2026-01-02", database=wrds_db)
    year = demo.add_period_table("optionm.opprcd{year}", "2026", database=wrds_db)
    with events.capture_events() as got:
        m = sm.incremental_sync("taq")
        sm.incremental_sync("optionmetrics")
    assert completed(got) == [("option_prices", "2026"), ("trades", "2026-01-02")], (day, year)
    assert m.tables["trades"].partitions["2026-01-02"].rows == demo.row_counts(wrds_db, [day])[day]
    assert (tmp_path / "wrds/taq/trades/year=2026/2026-01-02.parquet").is_file()
    after = file_digests(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing else rewritten
    sm.client.close()


def test_a_reloaded_past_table_is_refetched_alone(demo, wrds_db, tmp_path):
    sm = manager(demo, wrds_db, tmp_path)
    sm.full_sync("taq", 2024, 2025, tables=["trades"])
    sm.full_sync("optionmetrics", 2021, 2025, tables=["security_prices"])
    old = ManifestManager(DataLayout(tmp_path)).load("taq").tables["trades"].partitions
    demo.reload_table("taqm_2024.ctm_20241223", "price", 1.01, date(2026, 3, 2), database=wrds_db)
    demo.reload_table("optionm.secprd2022", "close", 1.01, date(2026, 3, 2), database=wrds_db)  # a view over a reloaded table
    with events.capture_events() as got:
        m = sm.incremental_sync("taq")
        sm.incremental_sync("optionmetrics")
    assert completed(got) == [("security_prices", "2022"), ("trades", "2024-12-23")]
    new = m.tables["trades"].partitions
    assert new["2024-12-23"].sha256 != old["2024-12-23"].sha256
    assert {k: e for k, e in new.items() if k != "2024-12-23"} == {k: e for k, e in old.items() if k != "2024-12-23"}
    assert m.tables["trades"].sources["taqm_2024.ctm_20241223"].marker == "2026-03-02"
    assert_templated_equal(demo, wrds_db, tmp_path, "taq", "trades", range(2024, 2026))
    sm.client.close()


def test_a_vanished_day_table_is_removed_but_a_vanished_product_is_refused(demo, wrds_db, tmp_path):
    sm = manager(demo, wrds_db, tmp_path)
    sm.full_sync("taq", 2025, 2025, tables=["nbbo"])
    demo.execute("drop table taqm_2025.complete_nbbo_20251231", database=wrds_db)
    with events.capture_events() as got:
        m = sm.incremental_sync("taq")
    assert [e["partition"] for e in got if e["event"] == events.PARTITION_REMOVED] == ["2025-12-31"]
    assert "2025-12-31" not in m.tables["nbbo"].partitions and len(m.tables["nbbo"].partitions) == 6
    for d in ("22", "23", "24", "26", "29", "30"):
        demo.execute(f"drop table taqm_2025.complete_nbbo_202512{d}", database=wrds_db)
    r = script(tmp_path, "incremental", "--dataset", "taq", env_extra=demo.environment(wrds_db))
    assert r.returncode == 1 and one_error(r.stderr) and "would remove the whole table" in r.stderr
    sm.client.close()


def test_an_unreadable_day_table_is_skipped_the_rest_synced_and_the_run_exits_1(env, demo, wrds_db, tmp_path):
    demo.execute("revoke select on taqm_2025.cqm_20251222 from wrds_reader", database=wrds_db)
    r = script(tmp_path, "full-sync", "--dataset", "taq", "--start-year", "2025")
    assert r.returncode == 1 and one_error(r.stderr), r.stderr
    assert "may not read taqm_2025.cqm_20251222: skipped" in r.stderr and "the rest is synced" in r.stderr
    m = ManifestManager(DataLayout(tmp_path)).load("taq")
    assert "2025-12-22" not in m.tables["quotes"].partitions and "2025-12-23" in m.tables["quotes"].partitions
    assert "2025-12-22" in m.tables["trades"].partitions and "2025-12-22" in m.tables["nbbo"].partitions
    demo.execute("grant select on taqm_2025.cqm_20251222 to wrds_reader", database=wrds_db)
    r = script(tmp_path, "--log-format", "json", "-v", "incremental", "--dataset", "taq")
    assert r.returncode == 0, r.stderr
    done = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
    fetched = [(e["table"], e["partition"]) for e in done if e["event"] == events.PARTITION_COMPLETED]
    assert fetched == [("quotes", "2025-12-22")], fetched


CHILD = textwrap.dedent("""
    import sys
    from pydantic import SecretStr
    from wrds_sync_nb import events
    from wrds_sync_nb.client import WRDSClient
    from wrds_sync_nb.config import WRDSConfig
    from wrds_sync_nb.sync import SyncManager
    sock, db, data = sys.argv[1:4]
    events.configure_logging("json", verbose=True, stream=sys.stdout)
    cfg = WRDSConfig(username="wrds_reader", password=SecretStr("demo-password"), host=sock, port=5432, database=db,
                     sslmode="disable", rate_limit_queries_per_minute=100000, application_name="kill9-child")
    SyncManager(WRDSClient(cfg), data, batch_rows=50).full_sync("taq", start_year=2024, end_year=2025)
""")


def test_kill_9_across_source_tables_then_resume(demo, wrds_db, tmp_path):
    rng = random.Random(20261203)
    for i in range(4):
        data = tmp_path / f"run{i}"
        n = rng.randint(1, 3 * TAQ_DAYS - 2)  # killed after its n-th published day
        p = subprocess.Popen([sys.executable, "-c", CHILD, demo.socket_dir, wrds_db, str(data)], stdout=subprocess.PIPE, text=True)
        seen = 0
        for line in p.stdout:
            seen += json.loads(line)["event"] == events.PARTITION_COMPLETED
            if seen == n:
                p.kill()
                break
        p.wait()
        p.stdout.close()
        sessions_closed(demo)
        assert ManifestManager(DataLayout(data)).load("taq") is None  # killed before the commit: nothing visible
        kept = [e for es in uncommitted(load_checkpoint(DataLayout(data), "taq")).values() for e in es.values()]
        carried = sum(is_intact(DataLayout(data), e) for e in kept)  # a journaled day killed before its publish
        assert carried >= n                                            # is fetched again
        sm = manager(demo, wrds_db, data)
        with events.capture_events() as got:
            m = sm.full_sync("taq", 2024, 2025)
        sm.client.close()
        assert len(completed(got)) == 3 * TAQ_DAYS - carried, (i, n, carried)
        assert sum(len(t.partitions) for t in m.tables.values()) == 3 * TAQ_DAYS
        assert check_integrity(SyncManager(None, data), "taq") == []
        assert not list((data / "tmp").rglob("*.tmp"))
    for t in ("trades", "quotes", "nbbo"):
        assert_templated_equal(demo, wrds_db, data, "taq", t, range(2024, 2026))


def test_add_a_year_template_and_a_filtered_day_template_through_the_script(env, demo, wrds_db, tmp_path):
    data = tmp_path / "d"
    r = script(data, "add", "optionm.opprcd{year}", "--partition-column", "date")  # built in as optionmetrics
    assert r.returncode == 1 and "--name" in r.stderr, r.stderr
    r = script(data, "add", "optionm.opprcd{year}", "--partition-column", "date", "--name", "optionm_opprcd")
    assert r.returncode == 0 and "as dataset optionm_opprcd (table opprcd)" in r.stdout, r.stderr
    assert "one WRDS table a year: 5 found, optionm.opprcd2021 to optionm.opprcd2025" in r.stdout
    r = script(data, "add", "taqm_{year}.ctm_{date:%Y%m%d}", "--name", "taq_t1", "--filter", "sym_root=T1",
               "--columns", "date,time_m,sym_root,price,size")
    assert r.returncode == 0 and "a market holiday" in r.stdout, r.stderr
    r = script(data, "incremental", "--all")  # each added dataset: its first (full) sync
    assert r.returncode == 0, r.stderr
    m = ManifestManager(DataLayout(data)).load("optionm_opprcd")
    assert sorted(m.tables["opprcd"].partitions) == ["2021", "2022", "2023", "2024", "2025"]
    t1 = pl.read_parquet(sorted((data / "wrds/taq_t1/ctm").rglob("*.parquet")))
    assert t1.columns == ["date", "time_m", "sym_root", "price", "size"] and set(t1["sym_root"]) == {"T1"}
    assert t1.height == demo.execute("select count(*) from taqm_2024.ctm_20241223 where sym_root = 'T1'", database=wrds_db)[0][0] * TAQ_DAYS
    demo.add_period_table("optionm.opprcd{year}", "2026", database=wrds_db)
    r = script(data, "--log-format", "json", "-v", "incremental", "--dataset", "optionm_opprcd")
    done = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
    assert r.returncode == 0 and [e["partition"] for e in done if e["event"] == events.PARTITION_COMPLETED] == ["2026"], r.stderr
    reg = DatasetRegistry.load(data_dir=data)
    assert reg.get("optionm_opprcd").tables[0].source == "optionm.opprcd{year}"


def test_months_of_a_year_table(demo, wrds_db, tmp_path):
    from wrds_sync_nb.datasets import DatasetSpec, TableSpec
    spec = DatasetSpec(name="opm", tables=[TableSpec(name="prices", source="optionm.opprcd{year}", partition_column="date",
                                                     granularity="month", key_columns=["secid", "date", "optionid"])])
    sm = manager(demo, wrds_db, tmp_path)
    sm.registry = DatasetRegistry([spec])
    m = sm.full_sync("opm", 2024, 2025)
    keys = sorted(m.tables["prices"].partitions)
    assert keys[0] == "2024-01" and len(keys) == 24 and (tmp_path / "wrds/opm/prices/year=2024/2024-01.parquet").is_file()
    demo.reload_table("optionm.opprcd2025", "best_bid", 1.01, date(2026, 3, 2), database=wrds_db)
    with events.capture_events() as got:
        sm.incremental_sync("opm")
    assert [k for _, k in completed(got)] == [f"2025-{m:02d}" for m in range(1, 13)]
    sm.client.close()
    src = demo.execute("select count(*) from optionm.opprcd2024", database=wrds_db)[0][0]
    assert local_frame(tmp_path, "opm", "prices").filter(pl.col("date").dt.year() == 2024).height == src


def test_a_filtered_copy_of_taq_through_the_script(env, demo, wrds_db, tmp_path):
    data = tmp_path / "d"
    r = script(data, "add", "taq", "--name", "taq_t1", "--filter", "sym_root=T1")
    assert r.returncode == 0 and "a copy of taq: its 3 tables, each keeping sym_root=T1" in r.stdout, r.stderr
    r = script(data, "full-sync", "--dataset", "taq_t1", "--start-year", "2025")
    assert r.returncode == 0, r.stderr
    for table, source in (("trades", "ctm"), ("quotes", "cqm"), ("nbbo", "complete_nbbo")):
        got = local_frame(data, "taq_t1", table)
        n = demo.execute(f"select count(*) from taqm_2025.{source}_20251222 where sym_root = 'T1'", database=wrds_db)[0][0]
        assert set(got["sym_root"]) == {"T1"} and got.height == 7 * n, table  # 7 trading days of 2025, each alike
    r = script(data, "add", "taq", "--filter", "sym_root=T1")
    assert r.returncode == 1 and one_error(r.stderr) and "--name" in r.stderr
    r = script(data, "add", "taq", "--name", "x", "--filter", "symbol=T1")
    assert r.returncode == 1 and one_error(r.stderr) and "has no column symbol" in r.stderr


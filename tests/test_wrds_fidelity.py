"""Against a PostgreSQL shaped like WRDS: exact types, the role's connection limit, server features, privileges,
the lock before the first connection, and a regular (non-editable) install."""
import json
import os
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from datetime import date
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from synchelp import assert_equal_to_source, manager
from test_cli import script
from test_locking import start_holder

from wrds_sync_nb.datasets import DatasetRegistry
from wrds_sync_nb.demo import DEMO_PASSWORD, DEMO_ROLE, DEMO_ROLE_LIMIT
from wrds_sync_nb.errors import SchemaError
from wrds_sync_nb.layout import DataLayout
from wrds_sync_nb.manifest import ManifestManager

ROOT = Path(__file__).resolve().parent.parent


@contextmanager
def role_limit(demo, n):
    demo.execute(f"alter role {DEMO_ROLE} connection limit {n}", database="postgres")
    try:
        yield
    finally:
        demo.execute(f"alter role {DEMO_ROLE} connection limit {DEMO_ROLE_LIMIT}", database="postgres")


@contextmanager
def session_peak(demo):
    """The most server sessions of the demo account seen at once while the block runs (sampled from outside)."""
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            n = demo.execute("select count(*) from pg_stat_activity where usename = %s and backend_type = 'client backend'", (DEMO_ROLE,), "postgres")[0][0]
            peak[0] = max(peak[0], n)

    t = threading.Thread(target=sample)
    t.start()
    try:
        yield peak
    finally:
        stop.set()
        t.join()


def events_of(stderr):
    return [json.loads(x) for x in stderr.splitlines() if x.startswith("{")]


def test_numeric_columns_become_exact_decimals_or_doubles(demo, wrds_db, tmp_path):
    manager(demo, wrds_db, tmp_path).full_sync("crsp", 2024, 2025)
    f = tmp_path / "wrds/crsp/daily/2024.parquet"
    sch = pq.read_schema(f)
    assert (str(sch.field("dlycap").type), str(sch.field("dlyprc").type)) == ("decimal128(20, 4)", "double")
    src = {(p, d): v for p, d, v in demo.execute(
        "select permno, dlycaldt, dlycap from crsp.dsf_v2 where extract(year from dlycaldt) = 2024", database=wrds_db)}
    loc = {(r["permno"], r["dlycaldt"]): r["dlycap"] for r in pq.read_table(f).to_pylist()}
    assert loc == src and all(isinstance(v, Decimal) for v in loc.values() if v is not None)  # every value, exactly
    avg = duckdb.sql(f"select avg(dlycap) from read_parquet('{f}')").fetchone()[0]
    exact = demo.execute("select avg(dlycap) from crsp.dsf_v2 where extract(year from dlycaldt) = 2024", database=wrds_db)[0][0]
    assert abs(Decimal(str(avg)) - exact) < Decimal("0.0001")
    assert_equal_to_source(demo, wrds_db, tmp_path, "crsp", range(2024, 2026))


def test_decimal_mode_picks_a_scale_that_holds_every_value(demo, wrds_db, tmp_path):
    toml = tmp_path / "ds.toml"
    toml.write_text('[datasets.ciz]\n[[datasets.ciz.tables]]\nname = "monthly"\nsource = "crsp.msf_v2"\n'
                    'partition_column = "mthcaldt"\nkey_columns = ["permno", "mthcaldt"]\nnumeric = "decimal"\n')
    demo.execute("update crsp.msf_v2 set mthprc = mthprc + 0.000001 where permno = 10001", database=wrds_db)
    sm = manager(demo, wrds_db, tmp_path / "data")
    sm.registry = DatasetRegistry.load(toml)
    sm.full_sync("ciz", 2025, 2025)
    t = pq.read_table(tmp_path / "data/wrds/ciz/monthly/2025.parquet")
    assert str(t.schema.field("mthprc").type) == "decimal128(38, 6)"
    src = dict(demo.execute("select permno * 100 + extract(month from mthcaldt)::int, mthprc from crsp.msf_v2 "
                            "where extract(year from mthcaldt) = 2025", database=wrds_db))
    assert {r["permno"] * 100 + r["mthcaldt"].month: r["mthprc"] for r in t.to_pylist()} == src


def test_a_type_without_exact_mapping_is_refused_before_its_download(demo, wrds_db, tmp_path):
    demo.execute("alter table ff.factors_daily add column meta jsonb", database=wrds_db)
    sm = manager(demo, wrds_db, tmp_path)
    with pytest.raises(SchemaError) as e:
        sm.full_sync("fama_french", 2024, 2025)
    assert "column meta of ff.factors_daily has type jsonb" in str(e.value) and 'casts = { meta = "Float64" }' in str(e.value)
    assert not (tmp_path / "wrds/fama_french/daily").exists()


@pytest.mark.parametrize("limit, budget", [(2, None), (1, "1")])
def test_sync_stays_within_the_role_limit_and_the_budget(env, demo, wrds_db, tmp_path, limit, budget):
    extra = {"WRDS_MAX_CONNECTIONS": budget} if budget else {}
    with role_limit(demo, limit), session_peak(demo) as peak:
        r = script(tmp_path / "d", "--log-format", "json", "full-sync", "--dataset", "crsp", "--start-year", "2023",
                   "--end-year", "2025", env_extra=extra, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 1 <= peak[0] <= limit
    limited = [e for e in events_of(r.stderr) if e["event"] == "wrds.connections.limited"]
    assert [e["max_connections"] for e in limited] == ([] if budget else [2])  # warned once when the role's limit is lower
    assert_equal_to_source(demo, wrds_db, tmp_path / "d", "crsp", range(2023, 2026))


def test_too_many_connections_is_its_own_error_not_a_credentials_one(env, demo, wrds_db, tmp_path):
    with role_limit(demo, 1):
        import psycopg2
        other = psycopg2.connect(host=demo.socket_dir, port=5432, user=DEMO_ROLE, password=DEMO_PASSWORD, dbname=wrds_db)  # another session
        try:
            r = script(tmp_path / "d", "full-sync", "--dataset", "fama_french", "--start-year", "2025", timeout=120)
        finally:
            other.close()
    assert r.returncode == 1
    lines = [x for x in r.stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and "too many connections for role" in lines[0] and "WRDS_MAX_CONNECTIONS" in lines[0]
    assert "rejected the credentials" not in r.stderr and not (tmp_path / "d").exists()


def test_unreadable_product_is_named_before_any_download(env, demo, wrds_db, tmp_path):
    toml = tmp_path / "ds.toml"
    toml.write_text('[datasets.holdings]\n[[datasets.holdings.tables]]\nname = "s34"\nsource = "tfn.s34"\npartition_column = "rdate"\n'
                    '[[datasets.holdings.tables]]\nname = "ff"\nsource = "ff.factors_monthly"\npartition_column = "date"\n')
    r = script(tmp_path / "d", "--datasets", str(toml), "full-sync", "--dataset", "holdings", "--start-year", "2024")
    assert r.returncode == 1
    assert [x for x in r.stderr.splitlines() if x.startswith("error: ")] == [
        "error: this WRDS account may not read tfn.s34: its subscription does not include it; nothing was downloaded. "
        "Fix: ask your WRDS representative for the subscription, or remove the table from the dataset definition."]
    assert not list((tmp_path / "d").rglob("*.parquet"))
    r = script(tmp_path / "d", "--datasets", str(toml), "datasets", "--check")
    assert r.returncode == 0
    rows = {ln.split()[0] + "/" + ln.split()[1]: ln.split()[-1] for ln in r.stdout.splitlines() if ln.strip().startswith("holdings")}
    assert rows == {"holdings/s34": "no", "holdings/ff": "yes"}, r.stdout


def test_md5_fingerprints_where_the_server_lacks_hash_record_extended(demo, wrds_db, tmp_path):
    sm = manager(demo, wrds_db, tmp_path, fingerprint_method="md5")  # forced: the server here has PostgreSQL 16
    m = sm.full_sync("fama_french", 2023, 2025)
    assert {e.source.digest.split(":")[0] for t in m.tables.values() for e in t.partitions.values()} == {"md5"}
    demo.bump_comment("ff.factors_daily", date(2026, 5, 1), database=wrds_db)
    demo.restate_year("ff.factors_daily", "date", 2024, "smb", 2.0, database=wrds_db)
    upgraded = manager(demo, wrds_db, tmp_path)  # the server now offers the better method
    from wrds_sync_nb import events
    with events.capture_events() as got:
        m2 = upgraded.incremental_sync("fama_french")
    fetched = [(e["table"], e["partition"]) for e in got if e["event"] == events.PARTITION_COMPLETED]
    assert fetched == [("daily", "2024")]  # not every year (a method change is not a restatement), and not none
    assert {e.source.method for e in m2.tables["daily"].partitions.values()} == {"md5"}
    assert_equal_to_source(demo, wrds_db, tmp_path, "fama_french", range(2023, 2026))


def test_a_held_lock_stops_the_sync_before_any_connection(env, demo, wrds_db, tmp_path):
    data = tmp_path / "d"
    DataLayout(data).ensure()
    sessions = lambda: demo.execute("select sessions from pg_stat_database where datname = %s", (wrds_db,), "postgres")[0][0]
    holder = start_holder(data / "locks", dataset="fama_french")
    try:
        before = sessions()
        r = script(data, "--lock-timeout", "0.5", "full-sync", "--dataset", "fama_french", "--start-year", "2025")
        after = sessions()
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2 and "is locked by" in r.stderr
    assert after == before  # waiting on someone else's lock never opened a session (no Duo push)
    assert ManifestManager(DataLayout(data)).load("fama_french") is None


@pytest.mark.slow
def test_a_regular_install_runs_the_drill_and_the_demo(tmp_path):
    src, dist = tmp_path / "src", tmp_path / "dist"  # built from a copy: the build leaves nothing in the checkout
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "data", "build", "dist", "_proc", "_docs"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)], check=True)
    wheel = next(dist.glob("wrds_sync_nb-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([venv / "bin/pip", "install", "-q", str(wheel)], check=True, timeout=900)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WRDS_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"
    data = tmp_path / "data"
    demo = subprocess.run([venv / "bin/wrds-sync", "--data-dir", str(data), "demo", "--rows", "3000"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=600)
    assert demo.returncode == 0 and "verified 3 datasets" in demo.stdout, demo.stderr[-2000:]
    drill = subprocess.run([venv / "bin/wrds-sync", "--data-dir", str(data), "drill", "verify"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=600)
    assert drill.returncode == 0 and "drill verify_drill passed" in drill.stdout, drill.stderr[-2000:]
    assert "site-packages/wrds_sync_nb/drill_notebooks" in subprocess.run(
        [venv / "bin/python", "-c", "from wrds_sync_nb.drills import drills_dir; print(drills_dir())"],
        capture_output=True, text=True, env=env, cwd=tmp_path).stdout


def test_windows_is_refused_at_import_with_one_line():
    deps = "import duckdb, polars, pyarrow.parquet, pyarrow.compute, pydantic_settings, psutil, tenacity, psycopg2.extensions, fcntl"
    r = subprocess.run([sys.executable, "-c", f"{deps}; import sys; sys.platform = 'win32'; import wrds_sync_nb.reader"],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("ImportError: wrds-sync-nb runs on Linux and macOS, not Windows")

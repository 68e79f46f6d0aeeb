"""Vintages: time travel after a restatement, WRDS names, readers that never write (read-only mount, another
Unix user), a reader holding an old version while syncs and vacuum run, citation stamps, history and diff,
backups that carry history, and the upgrade of a data dir written by the previous release."""
import json
import os
import pwd
import shutil
import site
import subprocess
import sys
import tempfile
import textwrap
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import polars as pl
import pytest
from test_cli import script

from wrds_sync_nb import reader
from wrds_sync_nb.datasets import DatasetRegistry
from wrds_sync_nb.history import vacuum
from wrds_sync_nb.integrity import check_integrity
from wrds_sync_nb.layout import DataLayout, sha256_file
from wrds_sync_nb.manifest import ManifestManager
from wrds_sync_nb.sync import SyncManager

REPO = Path(__file__).resolve().parent.parent
PREVIOUS_RELEASE = "334f60f"  # the last commit before vintages: its data dirs must upgrade losing nothing
SUM_2024 = "select sum(dlyprc) from crsp.dsf_v2 where year(dlycaldt) = 2024"


def restate(demo, db, year, factor, day):
    demo.restate_year("crsp.dsf_v2", "dlycaldt", year, "dlyprc", factor, database=db)
    demo.bump_comment("crsp.dsf_v2", date(2026, 3, day), database=db)


def shared_dir():
    """A data dir another Unix user can reach (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="wrds-vintages-"))
    os.chmod(d, 0o755)
    return d


def files_state(root: Path):
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")}


def test_time_travel_after_a_restatement_and_wrds_names(env, demo, wrds_db, tmp_path):
    data = tmp_path / "d"
    assert script(data, "full-sync", "--dataset", "crsp", "--start-year", "2021").returncode == 0
    con = reader.connect(data)
    source_count = demo.execute("select count(*) from crsp.dsf_v2", database=wrds_db)[0][0]
    assert con.sql("select count(*) from crsp.dsf_v2").fetchone()[0] == source_count == \
        con.sql("select count(*) from crsp_daily").fetchone()[0]
    old, before = float(con.sql(SUM_2024).fetchone()[0]), datetime.now(timezone.utc)
    restate(demo, wrds_db, 2024, 1.5, 1)
    assert script(data, "incremental", "--dataset", "crsp").returncode == 0
    new = float(demo.execute("select sum(dlyprc) from crsp.dsf_v2 where extract(year from dlycaldt) = 2024",
                             database=wrds_db)[0][0])
    assert float(reader.connect(data).sql(SUM_2024).fetchone()[0]) == pytest.approx(new)
    assert float(reader.connect(data, as_of=before).sql(SUM_2024).fetchone()[0]) == pytest.approx(old)
    assert float(reader.connect(data, as_of=before.isoformat()).sql(SUM_2024).fetchone()[0]) == pytest.approx(old)
    assert float(con.sql(SUM_2024).fetchone()[0]) == pytest.approx(old)  # the open connection keeps its version
    lazy = reader.scan("crsp", "daily", data, as_of=before).filter(pl.col("dlycaldt").dt.year() == 2024)
    assert float(lazy.select(pl.col("dlyprc").sum()).collect().item()) == pytest.approx(old)
    assert new != pytest.approx(old)


def test_a_saved_duckdb_database_keeps_working_after_the_next_sync(env, demo, wrds_db, tmp_path):
    data, db = tmp_path / "d", tmp_path / "analysis.duckdb"
    assert script(data, "full-sync", "--dataset", "crsp", "--start-year", "2023").returncode == 0
    reader.connect(data, database=str(db)).close()
    old = float(duckdb.connect(str(db)).sql(SUM_2024).fetchone()[0])
    restate(demo, wrds_db, 2024, 1.2, 2)
    assert script(data, "incremental", "--dataset", "crsp").returncode == 0
    with duckdb.connect(str(db), read_only=True) as con:  # the next day: its views read the version they were made on
        assert float(con.sql(SUM_2024).fetchone()[0]) == pytest.approx(old)
        assert con.sql("select version from wrds_sync_versions where dataset = 'crsp'").fetchone()[0] == 1


def test_history_diff_and_cite_through_the_installed_script(env, demo, wrds_db, tmp_path):
    data = tmp_path / "d"
    assert script(data, "full-sync", "--dataset", "crsp", "--start-year", "2023").returncode == 0
    stamp = script(data, "cite", "--dataset", "crsp").stdout.split()[0]
    demo.execute("delete from crsp_a_stock.dsf_v2 where permno = (select min(permno) from crsp_a_stock.dsf_v2) "
                 "and extract(year from dlycaldt) = 2024", database=wrds_db)
    restate(demo, wrds_db, 2024, 1.1, 3)
    assert script(data, "incremental", "--dataset", "crsp").returncode == 0
    h = script(data, "history", "--dataset", "crsp", "--table", "daily")
    assert h.returncode == 0 and "version 2" in h.stdout and "daily: replaced 2024; rows" in h.stdout, h.stdout
    rows = json.loads(script(data, "history", "--dataset", "crsp", "--json").stdout)
    assert [r["version"] for r in rows] == [1, 2] and rows[1]["changes"][0]["replaced"] == ["2024"]
    d = json.loads(script(data, "diff", "--dataset", "crsp", "--from", "1", "--to", "2", "--table", "daily", "--json").stdout)
    removed = demo.execute("select count(*) from crsp.dsf_v2 where extract(year from dlycaldt) = 2024", database=wrds_db)[0][0]
    assert [(r["partition"], r["status"]) for r in d] == [("2024", "replaced")]
    assert d[0]["keys_removed"] == d[0]["rows_from"] - removed > 0 and d[0]["keys_added"] == 0 and d[0]["keys_changed"] > 0
    con = reader.connect(data, version=stamp)  # the stamp opens exactly what was cited
    assert con.sql("select version, stamp from wrds_sync_versions").fetchone() == (1, stamp)
    forged = stamp[:-4] + "0000"
    with pytest.raises(Exception, match="does not match version 1"):
        reader.connect(data, version=forged)
    r = script(data, "diff", "--dataset", "crsp", "--from", "1", "--to", "9")
    assert r.returncode == 1 and "crsp has no version 9" in r.stderr
    v = next((data / "versions/crsp/daily").glob("2024-*.parquet"))
    old_2024 = [f for f in v.parent.glob("2024-*.parquet")]
    assert len(old_2024) == 2  # the replaced 2024 is kept by version 1
    r = script(data, "vacuum", "--dry-run")
    assert r.returncode == 0 and "crsp: would remove 0 file(s)" in r.stdout  # 90 days of retention: nothing goes
    victim = next(f for f in old_2024 if not os.path.samefile(f, data / "wrds/crsp/daily/2024.parquet"))
    victim.write_bytes(b"damaged")  # the replaced version, which only version 1 lists
    assert script(data, "verify", "--dataset", "crsp", "--current").returncode == 0
    r = script(data, "verify", "--dataset", "crsp")
    assert r.returncode == 1 and f"checksum mismatch {victim.relative_to(data)}" in r.stdout and "(version 1)" in r.stdout
    (data / "manifests/history/crsp/1.json").write_text("{")
    r = script(data, "vacuum", "--dataset", "crsp")
    assert r.returncode == 1 and "vacuum removes nothing while a version cannot be read" in r.stderr


READER = textwrap.dedent("""
    import json, sys, time
    from wrds_sync_nb.reader import connect
    data, ready, stop = sys.argv[1:4]
    con = connect(data)
    first = con.sql("select count(*), sum(dlyprc) from crsp.dsf_v2").fetchone()
    open(ready, "w").close()
    n, bad = 0, []
    import os
    while not os.path.exists(stop):
        got = con.sql("select count(*), sum(dlyprc) from crsp.dsf_v2").fetchone()
        n += 1
        if got[0] != first[0] or abs(float(got[1]) - float(first[1])) > 1e-6 * abs(float(first[1])): bad.append(str(got))
    got = con.sql("select count(*), sum(dlyprc) from crsp.dsf_v2").fetchone()  # once more, after vacuum ran
    print(json.dumps({"queries": n + 1, "bad": bad[:3], "last_ok": got[0] == first[0]}))
""")


def test_a_reader_holding_an_old_version_survives_restatements_and_vacuum(env, demo, wrds_db, tmp_path):
    data = tmp_path / "d"
    assert script(data, "full-sync", "--dataset", "crsp", "--start-year", "2023").returncode == 0
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    p = subprocess.Popen([sys.executable, "-c", READER, str(data), str(ready), str(stop)], stdout=subprocess.PIPE, text=True)
    try:
        while not ready.exists():  # synchronised on the reader's file, not on time
            assert p.poll() is None
        for i, year in enumerate((2023, 2024, 2025)):
            restate(demo, wrds_db, year, 1.3, 10 + i)
            assert script(data, "incremental", "--dataset", "crsp").returncode == 0
        base = DatasetRegistry.load()  # keep only the last version: version 1 has expired, the grace period protects it
        reg = DatasetRegistry([*(d for d in base if d.name != "crsp"), base.get("crsp").model_copy(update={"retention": "1 version"})])
        res = vacuum(SyncManager(None, data, registry=reg), "crsp", grace=timedelta(hours=1))
        v1 = ManifestManager(DataLayout(data)).load_version("crsp", 1)
        assert res.files == [] and res.kept_versions == [1, 2, 3, 4]  # expired minutes ago: inside the grace period
        assert all((data / e.path).exists() for e in v1.files().values())
    finally:
        stop.touch()
        out = json.loads(p.communicate(timeout=60)[0])
    assert out["bad"] == [] and out["queries"] > 1 and out["last_ok"]
    res = vacuum(SyncManager(None, data, registry=reg), "crsp", grace=timedelta(0))  # the reader is gone
    assert res.kept_versions == [4] and len(res.files) >= 3
    assert check_integrity(SyncManager(None, data), "crsp", current_only=True) == []


READ_EVERYTHING = textwrap.dedent("""
    import json, os, pwd, sys
    from datetime import datetime, timezone
    import duckdb, polars as pl, pyarrow.parquet   # the library imports these where used: here, before the switch
    import wrds_sync_nb.integrity, wrds_sync_nb.sync   # (the commands' own, likewise: /root is not theirs to read)
    from typer.testing import CliRunner
    import wrds_sync_nb as w
    from wrds_sync_nb import reader
    from wrds_sync_nb.cli import app
    data, user = sys.argv[1], sys.argv[2]
    runner = CliRunner()
    iceberg = lambda: w.iceberg_table("fama_french", "daily", data).scan().to_arrow().num_rows
    if user:  # verify and read once while /root (this Python's own library) is readable: their imports loaded
        runner.invoke(app, ["--data-dir", data, "verify", "--all"])
        iceberg()
        os.setgid(pwd.getpwnam(user).pw_gid); os.setuid(pwd.getpwnam(user).pw_uid)
    res = {c[0]: runner.invoke(app, ["--data-dir", data, *c]).exit_code
           for c in (["status", "--json"], ["verify", "--all"], ["history", "--dataset", "fama_french"],
                     ["cite", "--dataset", "fama_french"])}
    res["connect"] = reader.connect(data).sql("select count(*) from ff.factors_daily").fetchone()[0]
    res["scan"] = reader.scan("fama_french", "monthly", data).select(pl.len()).collect().item()
    res["as_of"] = reader.connect(data, as_of=datetime.now(timezone.utc)).sql("select count(*) from fama_french_monthly").fetchone()[0]
    res["iceberg"] = iceberg()
    print(json.dumps(res))
""")


def read_everything(data: Path, user: str = "") -> dict:
    """What the read commands and the Python readers give, in a fresh process (as `user`, when given)."""
    r = subprocess.run([sys.executable, "-c", READ_EVERYTHING, str(data), user], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.splitlines()[-1])


def synced_ff(demo, wrds_db):
    data = shared_dir() / "d"
    assert script(data, "full-sync", "--dataset", "fama_french", "--start-year", "2024").returncode == 0
    count = lambda t: demo.execute(f"select count(*) from {t} where date >= '2024-01-01'", database=wrds_db)[0][0]
    return data, {"status": 0, "verify": 0, "history": 0, "cite": 0, "connect": count("ff.factors_daily"),
                  "scan": count("ff.factors_monthly"), "as_of": count("ff.factors_monthly"),
                  "iceberg": count("ff.factors_daily")}


def test_readers_work_on_a_read_only_bind_mount(env, demo, wrds_db):
    data, expected = synced_ff(demo, wrds_db)
    mnt = data.parent / "ro"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root (CI runs as root)")
    r = subprocess.run(["mount", "--bind", str(data), str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {r.stderr.strip()}")
    try:
        r = subprocess.run(["mount", "-o", "remount,ro,bind", str(mnt)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {r.stderr.strip()}")
        with pytest.raises(OSError, match="Read-only file system"):
            (mnt / "probe").write_text("x")  # it really is read-only
        before = files_state(data)
        assert read_everything(mnt) == expected
        assert files_state(data) == before
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        shutil.rmtree(data.parent, ignore_errors=True)


def test_readers_work_as_another_unix_user(env, demo, wrds_db):
    data, expected = synced_ff(demo, wrds_db)
    if os.geteuid() != 0:
        pytest.skip("switching to another Unix user needs root (CI runs as root)")
    pwd.getpwnam("nobody")
    before = files_state(data)
    assert read_everything(data, "nobody") == expected
    assert files_state(data) == before
    shutil.rmtree(data.parent, ignore_errors=True)


def test_backup_and_restore_carry_the_history(env, demo, wrds_db, tmp_path):
    data, remote = tmp_path / "d", tmp_path / "remote"
    assert script(data, "full-sync", "--dataset", "crsp", "--start-year", "2023").returncode == 0
    before = datetime.now(timezone.utc)
    old = float(reader.connect(data).sql(SUM_2024).fetchone()[0])
    restate(demo, wrds_db, 2024, 1.7, 20)
    assert script(data, "incremental", "--dataset", "crsp").returncode == 0
    assert script(data, "backup", "--remote", str(remote)).returncode == 0
    r = script(tmp_path / "restored", "restore", "--remote", str(remote), "--to", str(tmp_path / "restored"))
    assert r.returncode == 0, r.stderr
    restored = tmp_path / "restored"
    assert float(reader.connect(restored, as_of=before).sql(SUM_2024).fetchone()[0]) == pytest.approx(old)
    assert script(restored, "history", "--dataset", "crsp", "--json").stdout == script(data, "history", "--dataset", "crsp", "--json").stdout
    assert check_integrity(SyncManager(None, restored), "crsp") == []
    assert (restored / "wrds/crsp/daily/2024.parquet").is_file()  # the views are rebuilt


OLD_SYNC = textwrap.dedent("""
    import sys
    from pydantic import SecretStr
    from wrds_sync_nb.client import WRDSClient
    from wrds_sync_nb.config import WRDSConfig
    from wrds_sync_nb.sync import SyncManager
    sock, db, data, kind = sys.argv[1:5]
    cfg = WRDSConfig(username="wrds_reader", password=SecretStr("demo-password"), host=sock, port=5432, database=db,
                     sslmode="disable", rate_limit_queries_per_minute=100000)
    sm = SyncManager(WRDSClient(cfg), data)
    sm.full_sync("crsp", start_year=2023) if kind == "full" else sm.incremental_sync("crsp")
""")


def previous_release(tmp_path: Path) -> Path:
    """The package as the previous release shipped it, from git (skipped where the history is not there)."""
    out = tmp_path / "old"
    out.mkdir()
    r = subprocess.run(f"git -C {REPO} archive {PREVIOUS_RELEASE} wrds_sync_nb | tar -x -C {out}", shell=True,
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"the previous release is not in this checkout's git history: {r.stderr.strip()[:200]}")
    return out


def test_a_data_dir_of_the_previous_release_upgrades_losing_nothing(env, demo, wrds_db, tmp_path):
    old_pkg, data = previous_release(tmp_path), tmp_path / "d"
    # -S and a cwd outside the checkout: neither the editable install nor the checkout shadows the old package
    path = f"{old_pkg}{os.pathsep}{site.getsitepackages()[0]}"
    run_old = lambda kind: subprocess.run([sys.executable, "-S", "-c", OLD_SYNC, demo.socket_dir, wrds_db, str(data), kind],
                                          env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, cwd=tmp_path)
    r = run_old("full")
    assert r.returncode == 0, r.stderr[-2000:]
    first = float(duckdb.sql(f"select sum(dlyprc) from '{data}/wrds/crsp/daily/2024.parquet'").fetchone()[0])
    restate(demo, wrds_db, 2024, 1.4, 25)
    r = run_old("incremental")
    assert r.returncode == 0, r.stderr
    kept = {sha256_file(p) for p in data.rglob("*.parquet")}  # everything the old release left, replaced files included
    assert not (data / "versions").exists()
    m = script(data, "migrate")
    assert m.returncode == 0 and "crsp:" in m.stdout, m.stderr
    assert script(data, "verify", "--all").returncode == 0
    assert kept <= {sha256_file(p) for p in (data / "versions").rglob("*.parquet")}  # nothing lost
    mm = ManifestManager(DataLayout(data))
    old_versions = [v for v in mm.versions("crsp") if v < mm.load("crsp").version]
    sums = {float(reader.connect(data, ["crsp"], version=v).sql(SUM_2024).fetchone()[0]) for v in old_versions}
    assert any(s == pytest.approx(first) for s in sums)  # the version before the restatement still reads as it was
    assert float(reader.connect(data).sql(SUM_2024).fetchone()[0]) != pytest.approx(first)
    restate(demo, wrds_db, 2025, 1.1, 26)
    assert script(data, "incremental", "--dataset", "crsp").returncode == 0  # and the new release syncs on
    assert script(data, "verify", "--all").returncode == 0


def test_migrate_carries_a_partition_the_previous_release_set_aside_as_vanished(env, demo, wrds_db, tmp_path):
    old_pkg, data = previous_release(tmp_path), tmp_path / "d"
    path = f"{old_pkg}{os.pathsep}{site.getsitepackages()[0]}"
    five_years = OLD_SYNC.replace("start_year=2023", "start_year=2021")  # one year of five: past the removal guard
    run_old = lambda kind: subprocess.run([sys.executable, "-S", "-c", five_years, demo.socket_dir, wrds_db, str(data), kind],
                                          env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, cwd=tmp_path)
    assert run_old("full").returncode == 0
    gone = sha256_file(data / "wrds/crsp/monthly/2023.parquet")
    demo.execute("delete from crsp_a_stock.msf_v2 where extract(year from mthcaldt) = 2023", database=wrds_db)
    demo.bump_comment("crsp.msf_v2", date(2026, 3, 2), database=wrds_db)
    r = run_old("incremental")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (data / "wrds/crsp/monthly/2023.parquet").exists()
    assert [p for p in (data / "quarantine").rglob("*.parquet") if sha256_file(p) == gone]  # set aside, not lost
    m = script(data, "migrate")
    assert m.returncode == 0, m.stderr
    assert script(data, "verify", "--all").returncode == 0
    assert gone in {sha256_file(p) for p in (data / "versions").rglob("*.parquet")}
    first = min(ManifestManager(DataLayout(data)).versions("crsp"))
    con = reader.connect(data, ["crsp"], version=first)
    assert con.sql("select count(*) from crsp.msf_v2 where year(mthcaldt) = 2023").fetchone()[0] > 0

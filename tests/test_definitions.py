"""A dataset's definition is part of its data (issue: definitions): a redefinition is said and refetched, adds
are serialised, a view left stale by a crash is reported and repaired, and the small promises around them."""
import json
import os
import subprocess
import sys
import textwrap
import warnings

import polars as pl
from test_cli import FF, script

from wrds_sync_nb import reader
from wrds_sync_nb.layout import DataLayout
from wrds_sync_nb.manifest import ManifestManager


def test_a_redefinition_is_refused_then_replaced_and_every_partition_refetched(env, demo, wrds_db, tmp_path):
    data = tmp_path / "d"
    assert script(data, "add", "comp.secd", "--name", "secd_x").returncode == 0
    assert script(data, "full-sync", "--dataset", "secd_x").returncode == 0
    narrower = ["add", "comp.secd", "--name", "secd_x", "--where", "prccd > 90", "--columns",
                "gvkey,iid,datadate,prccd"]
    r = script(data, *narrower)
    assert r.returncode == 1 and "already defined" in r.stderr and "--replace" in r.stderr, r.stderr
    r = script(data, *narrower, "--replace")
    assert r.returncode == 0 and "fetches every partition again under the new one" in r.stdout, r.stdout
    r = script(data, "verify", "--dataset", "secd_x")
    assert r.returncode == 1 and "synced under another definition" in r.stdout, r.stdout
    r = script(data, "incremental", "--dataset", "secd_x")
    assert r.returncode == 0 and "version 2" in r.stdout, r.stdout + r.stderr
    frame = reader.scan("secd_x", "secd", data).collect()
    want = demo.execute("select count(*) from comp.secd where prccd > 90", database=wrds_db)[0][0]
    assert frame.columns == ["gvkey", "iid", "datadate", "prccd"] and frame.height == want
    assert script(data, "verify", "--dataset", "secd_x").returncode == 0
    h = script(data, "history", "--dataset", "secd_x")
    assert "secd: definition changed; replaced" in h.stdout, h.stdout


def test_ten_adds_at_once_into_a_new_folder_keep_all_ten(env, demo, tmp_path):
    data = tmp_path / "new"
    demo.execute("alter role wrds_reader connection limit 40", database="postgres")
    try:
        procs = [subprocess.Popen([sys.executable, "-m", "wrds_sync_nb", "--data-dir", str(data), "add", "comp.secd",
                                   "--name", f"secd_{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(10)]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    finally:
        demo.execute("alter role wrds_reader connection limit 7", database="postgres")
    assert all(code == 0 for code, _ in results), results
    r = script(data, "datasets")
    assert all(f"secd_{i}" in r.stdout for i in range(10)), r.stdout


CHILD = textwrap.dedent("""
    import importlib, os, signal, sys
    S = importlib.import_module("wrds_sync_nb.sync")  # (`wrds_sync_nb.sync` is also the API's function)
    calls = []
    def dying(*a):  # the second refresh is the commit's: the run dies right after its manifest is saved
        calls.append(1)
        if len(calls) == 2: os.kill(os.getpid(), signal.SIGKILL)
    S.refresh_views = dying
    from wrds_sync_nb.cli import main
    sys.argv = ["wrds-sync", "--data-dir", sys.argv[1], "incremental", "--dataset", "fama_french"]
    main()
""")


def test_a_crash_between_the_commit_and_the_views_is_reported_and_repaired(env, demo, wrds_db, tmp_path):
    data = tmp_path / "d"
    assert script(data, "full-sync", *FF).returncode == 0
    demo.restate_year("ff.factors_daily", "date", 2024, "mktrf", 2.0, database=wrds_db)
    demo.bump_comment("ff.factors_daily", __import__("datetime").date(2026, 3, 1), database=wrds_db)
    r = subprocess.run([sys.executable, "-c", CHILD, str(data)], capture_output=True, text=True, env=os.environ)
    assert r.returncode == -9, r.stderr
    assert ManifestManager(DataLayout(data)).load("fama_french").version == 2   # committed, views not moved
    r = script(data, "verify", "--dataset", "fama_french")
    assert r.returncode == 1 and "stale view wrds/fama_french/daily/2024.parquet" in r.stdout, r.stdout
    r = script(data, "repair", "--dataset", "fama_french")
    assert r.returncode == 0 and "re-pointed 1 stale view(s)" in r.stdout, r.stdout + r.stderr
    assert script(data, "verify", "--dataset", "fama_french").returncode == 0
    view = pl.read_parquet(data / "wrds/fama_french/daily/2024.parquet")
    assert view.height == demo.execute("select count(*) from ff.factors_daily where extract(year from date) = 2024",
                                       database=wrds_db)[0][0]


def test_the_versions_table_reads_into_python_and_backup_of_nothing_says_so(env, tmp_path):
    data = tmp_path / "d"
    empty = tmp_path / "empty"
    (empty / "manifests").mkdir(parents=True)
    (empty / ".wrds-sync").write_text(json.dumps({"kind": "data", "format": 2}))
    r = script(empty, "backup")
    assert r.returncode == 1 and "nothing to back up" in r.stderr, r.stderr
    assert script(data, "full-sync", *FF).returncode == 0
    rows = reader.connect(data).sql("select dataset, version, committed_at from wrds_sync_versions").fetchall()
    assert rows[0][:2] == ("fama_french", 1) and rows[0][2].tzinfo is not None


def test_wrds_names_show_only_whole_copies_and_say_a_clash_once(env, demo, wrds_db, tmp_path):
    data = tmp_path / "d"
    taq = ["--start-year", "2025", "--table", "trades"]
    assert script(data, "add", "taq", "--name", "t1_copy", "--filter", "sym_root=T1").returncode == 0
    assert script(data, "full-sync", "--dataset", "t1_copy", *taq).returncode == 0
    con = reader.connect(data)
    assert con.sql("select count(*) from t1_copy_trades").fetchone()[0] > 0
    assert not con.sql("select * from information_schema.tables where table_schema = 'taqm_2025'").fetchall()
    assert script(data, "full-sync", "--dataset", "taq", *taq).returncode == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        con = reader.connect(data)
    want = demo.execute("select count(*) from taqm_2025.ctm_20251222", database=wrds_db)[0][0]
    assert con.sql("select count(*) from taqm_2025.ctm_20251222").fetchone()[0] == want and not caught
    assert script(data, "add", "taq", "--name", "taq_again").returncode == 0   # a second whole copy
    assert script(data, "full-sync", "--dataset", "taq_again", *taq).returncode == 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        con = reader.connect(data)
    assert len(caught) == 1 and "show taq's copy" in str(caught[0].message), [str(w.message) for w in caught]
    assert con.sql("select count(*) from taqm_2025.ctm_20251222").fetchone()[0] == want


def test_vacuum_frees_space_on_a_full_disk_and_cite_says_when_files_are_gone(env, demo, wrds_db, tmpfs):
    from datetime import date, datetime, timedelta, timezone

    from conftest import fill

    from wrds_sync_nb.datadir import DataDir
    from wrds_sync_nb.history import vacuum
    data = tmpfs / "d"
    assert script(data, "full-sync", *FF).returncode == 0
    demo.restate_year("ff.factors_daily", "date", 2024, "mktrf", 2.0, database=wrds_db)
    demo.bump_comment("ff.factors_daily", date(2026, 3, 1), database=wrds_db)
    assert script(data, "incremental", "--dataset", "fama_french").returncode == 0   # version 1's 2024: replaced
    filler = fill(tmpfs)
    try:
        r = script(data, "full-sync", *FF, "--force")
        assert r.returncode == 1, r.stderr   # the disk is full indeed: a sync cannot even take its lock
        res = vacuum(DataDir(data), "fama_french", now=datetime.now(timezone.utc) + timedelta(days=91))
        assert len([f for f in res.files if f.startswith("versions/")]) == 1 and res.bytes > 0
    finally:
        filler.unlink()
    r = script(data, "cite", "--dataset", "fama_french", "--version", "1")
    assert r.returncode == 0 and "are no longer in this data dir (vacuumed)" in r.stdout, r.stdout
    con = reader.connect(data)
    assert reader.cite(con, data_dir=None).split()[0] == script(data, "cite", "--dataset", "fama_french").stdout.split()[0]

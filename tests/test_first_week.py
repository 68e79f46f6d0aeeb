"""A researcher's first week (issue: first week): WRDS SQL as Tidy Finance writes it runs unchanged on the local
copy through `raw_sql`, with the official package's pandas dtypes."""
import json
from collections import Counter
from datetime import date, datetime
from decimal import Decimal

import pandas as pd
import pytest
from test_cli import FF, script

from wrds_sync_nb.rawsql import raw_sql


class Captured(Exception):
    """tidyfinance's query, captured where it would be sent to WRDS."""


def tidyfinance_queries(monkeypatch) -> dict[str, str]:
    """The SQL tidyfinance 1.0.0 sends to WRDS for each dataset, taken from its own code at test time: its one
    seam for WRDS reads (`_read_sql`, documented as the place tests patch) records the query instead."""
    tf = pytest.importorskip("tidyfinance.download_wrds")
    seen: dict[str, str] = {}

    def capture(query, con):
        raise Captured(query)

    monkeypatch.setattr(tf, "_read_sql", capture)
    monkeypatch.setattr(tf, "get_wrds_connection", lambda *a, **k: None)
    monkeypatch.setattr(tf, "disconnect_connection", lambda *a, **k: None)
    for ds, extra in (("crsp_monthly", {"version": "v2"}), ("compustat_annual", {}), ("compustat_quarterly", {}),
                      ("ccm_links", {})):
        with pytest.raises(Captured) as got:
            tf.download_data_wrds(ds, start_date="2023-01-01", end_date="2025-12-31", quiet=True, **extra)
        seen[ds] = str(got.value)
    return seen


def norm(v):
    """One value as both sides can agree on it: numbers rounded, datetimes at midnight as dates."""
    if v is None or v is pd.NA or v is pd.NaT or (isinstance(v, float) and v != v):
        return None
    if isinstance(v, (pd.Timestamp, datetime)):
        return v.date() if (v.hour, v.minute, v.second, v.microsecond) == (0, 0, 0, 0) else v
    if isinstance(v, (int, float, Decimal)) and not isinstance(v, bool):   # CCM's lpermno: double at WRDS, an
        return round(float(v), 6)                                            # integer in the copy (its cast)
    return v


def rows(df: pd.DataFrame) -> Counter:
    return Counter(tuple(norm(v) for v in r) for r in df.astype(object).itertuples(index=False))


def test_tidyfinance_queries_run_unchanged_on_the_local_copy(env, demo, wrds_db, tmp_path, monkeypatch):
    data = tmp_path / "d"
    for args in (("crsp", "--table", "monthly", "--table", "security_info", "--table", "ccm_link"),
                 ("compustat",)):
        r = script(data, "full-sync", "--dataset", args[0], "--start-year", "2023", *args[1:])
        assert r.returncode == 0, r.stderr
    queries = tidyfinance_queries(monkeypatch)
    conn = demo.connect(wrds_db)
    try:
        for ds, q in queries.items():
            local = raw_sql(q, data_dir=data)
            source = pd.read_sql_query(q, conn)
            assert len(local) > 0 and list(local.columns) == list(source.columns), ds
            assert rows(local) == rows(source), ds
    finally:
        conn.close()
    monthly = raw_sql(queries["crsp_monthly"], data_dir=data)
    assert str(monthly.shrout.dtype) == "Int64" and str(monthly.prc.dtype) == "Float64"
    shares = monthly.shrout * 1000   # Tidy Finance's own step: thousands of shares to shares
    assert shares.max() > 2**31 and (shares > 0).all()   # no wrap-around in 32 bits
    annual = raw_sql(queries["compustat_annual"], data_dir=data)
    assert str(annual["at"].dtype) == "Float64" and isinstance(annual.datadate[0], pd.Timestamp)
    assert annual.datadate.min().date() >= date(2023, 1, 1)


def test_every_line_of_a_json_log_run_is_json_failures_and_summaries_included(env, tmp_path, monkeypatch):
    data = tmp_path / "d"
    ok = script(data, "--log-format", "json", "full-sync", *FF)
    assert ok.returncode == 0, ok.stderr
    monkeypatch.setenv("WRDS_PASSWORD", "wrong")
    bad = script(data, "--log-format", "json", "incremental", "--all")
    monkeypatch.setenv("WRDS_HOST", "127.0.0.1")
    monkeypatch.setenv("WRDS_PORT", "9")   # nothing listens there
    down = script(data, "--log-format", "json", "incremental", "--all")
    status = script(data, "--log-format", "json", "status", "--json")
    for r in (ok, bad, down, status):
        for line in (r.stdout + r.stderr).splitlines():
            json.loads(line)   # jq reads every line
    evs = [json.loads(x) for x in (ok.stdout + ok.stderr).splitlines()]
    assert any(e["event"] == "sync.command.output" and "fama_french: version 1" in e["message"] for e in evs)
    for r in (bad, down):
        failed = [json.loads(x) for x in r.stderr.splitlines() if json.loads(x)["event"] == "sync.command.failed"]
        assert r.returncode == 1 and len(failed) == 1 and failed[0]["fix"], r.stderr


def test_one_naming_scheme_dataset_names_and_wrds_names(env, tmp_path):
    from wrds_sync_nb import reader
    from wrds_sync_nb.layout import DataLayout
    from wrds_sync_nb.manifest import ManifestManager
    data = tmp_path / "d"
    r = script(data, "full-sync", "--dataset", "crsp.msf_v2", "--start-year", "2024")
    assert r.returncode == 0 and "crsp: version 1" in r.stdout, r.stderr
    assert list(ManifestManager(DataLayout(data)).load("crsp").tables) == ["monthly"]
    by_wrds, ours = reader.scan("crsp", "msf_v2", data).collect(), reader.scan("crsp", "monthly", data).collect()
    assert by_wrds.equals(ours) and ours.height > 0
    r = script(data, "add", "crsp.msf_v2")
    assert r.returncode == 1 and "already table monthly of dataset crsp" in r.stderr, r.stderr
    r = script(data, "full-sync", "--dataset", "crps")
    assert r.returncode == 1 and "did you mean 'crsp'?" in r.stderr


def test_the_demo_served_as_wrds_to_a_second_process(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path
    demo_dir = tmp_path / "demo"
    wrds_sync = str(Path(sys.executable).parent / "wrds-sync")
    server = subprocess.Popen([wrds_sync, "--data-dir", str(demo_dir), "demo", "--serve", "--rows", "2000"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        exports = []
        while len(exports) < 7:   # the export lines come once the source is built and listening
            line = server.stdout.readline()
            assert line, server.stderr.read()
            if line.startswith("export "): exports.append(line.strip())
        env = dict(x.removeprefix("export ").split("=", 1) for x in exports)
        r = subprocess.run([wrds_sync, "--data-dir", str(demo_dir), "demo", "--env"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.split("\n")[:7] == exports, r.stdout + r.stderr
        child = {k: v for k, v in os.environ.items() if not k.startswith("WRDS_")}
        r = subprocess.run([wrds_sync, "full-sync", "--dataset", "fama_french", "--start-year", "2024"],
                           capture_output=True, text=True, env={**child, **env}, cwd=tmp_path)
        assert r.returncode == 0 and "fama_french: version 1" in r.stdout, r.stderr
        tables = raw_sql("select count(*) as n from ff.factors_daily", data_dir=env["WRDS_SYNC_DATA_DIR"])
        assert int(tables.n[0]) > 0
    finally:
        server.terminate()
        server.wait(timeout=60)
    r = subprocess.run([wrds_sync, "--data-dir", str(demo_dir), "demo", "--env"], capture_output=True, text=True)
    assert r.returncode == 1 and "demo --serve" in r.stderr   # stopped with its server


def test_a_read_only_data_dir_is_one_line_naming_the_path_the_cause_and_the_fix(env, tmp_path):
    import os
    import subprocess
    data, mnt = tmp_path / "d", tmp_path / "ro"
    assert script(data, "full-sync", *FF).returncode == 0
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root (CI runs as root)")
    mnt.mkdir()
    if subprocess.run(["mount", "--bind", str(data), str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here")
    try:
        r = subprocess.run(["mount", "-o", "remount,ro,bind", str(mnt)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {r.stderr.strip()}")
        r = script(mnt, "incremental", "--dataset", "fama_french")
        assert r.returncode == 1 and "unexpected" not in r.stderr, r.stderr
        line = r.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: cannot use {mnt}/") and "the filesystem is read-only" in line, line
        assert "Fix: use a data dir on a writable filesystem" in line
        assert script(mnt, "status").returncode == 0   # reading needs no write
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_status_shows_dates_and_a_failed_run_with_the_command_that_resumes_it(env, tmp_path):
    data = tmp_path / "d"
    assert script(data, "full-sync", *FF).returncode == 0
    r = script(data, "status", "--dataset", "ff.factors_monthly")
    assert r.returncode == 0 and "fama_french/monthly v1" in r.stdout and "fama_french/daily" not in r.stdout
    assert "2021-01-29 to 2025-12-31, 5 partition(s)" in r.stdout, r.stdout   # month ends of the demo
    # a key that is not unique at the source: the run ends with its partitions failed, its checkpoint kept
    assert script(data, "add", "comp.secd", "--name", "secd_dup", "--key", "gvkey").returncode == 0
    failed = script(data, "full-sync", "--dataset", "secd_dup", "--start-year", "2024", "--end-year", "2025")
    assert failed.returncode == 1 and "duplicate rows on key (gvkey)" in failed.stderr, failed.stderr
    r = script(data, "status", "--dataset", "secd_dup")
    assert "secd_dup: never synced" in r.stdout
    assert "a full sync failed at " in r.stdout and "0 partition(s) checkpointed" in r.stdout, r.stdout
    assert "resume with `wrds-sync full-sync --dataset secd_dup --start-year 2024 --end-year 2025`" in r.stdout
    rows = json.loads(script(data, "status", "--json", "--dataset", "secd_dup").stdout)["tables"]
    assert rows[0]["interrupted"].startswith("a full sync failed")


def test_history_and_diff_take_wrds_names_and_give_dataframes(env, tmp_path):
    import wrds_sync_nb as w
    data = tmp_path / "d"
    assert script(data, "full-sync", *FF).returncode == 0
    r = script(data, "history", "--dataset", "ff.factors_daily")
    assert r.returncode == 0 and "daily: added 2021-2025" in r.stdout and "monthly" not in r.stdout, r.stdout
    h = w.history("ff.factors_daily", data_dir=data)
    assert h["table"].to_list() == ["daily"] and h["added"].to_list() == [["2021", "2022", "2023", "2024", "2025"]]
    d = w.diff("fama_french", 1, 1, data_dir=data)
    assert d.height == 0 and d.columns[:3] == ["table", "partition", "status"]
    with pytest.raises(Exception, match="fama_french has no version 7"):
        w.diff("fama_french", 1, 7, data_dir=data)


def test_commands_that_read_no_data_load_no_dataframe_library(env, tmp_path):
    import subprocess
    import sys
    data = tmp_path / "d"
    assert script(data, "full-sync", *FF).returncode == 0
    code = ("import sys; from wrds_sync_nb.cli import main\n"
            "try: main(sys.argv[1:])\nexcept SystemExit: pass\n"
            "print('loaded:', [m for m in ('polars', 'pyarrow', 'duckdb', 'pandas') if m in sys.modules])")
    for args in (["--help"], ["status"], ["lock-status"], ["status", "--dataset", "ff.factors_daily"]):
        r = subprocess.run([sys.executable, "-c", code, "--data-dir", str(data), *args], capture_output=True,
                           text=True)
        assert r.stdout.strip().splitlines()[-1] == "loaded: []", (args, r.stdout[-300:], r.stderr[-300:])


def test_a_big_partitions_progress_moves_by_rows_before_it_completes(env, tmp_path):
    import io

    from wrds_sync_nb import events
    from wrds_sync_nb.client import WRDSClient
    from wrds_sync_nb.config import load_config
    from wrds_sync_nb.progress import TerminalDisplay
    from wrds_sync_nb.sync import SyncManager
    seen, screen = [], io.StringIO()
    display = TerminalDisplay(screen)
    with WRDSClient(load_config()) as client, events.listening(seen.append), events.listening(display):
        SyncManager(client, tmp_path / "d", batch_rows=200).full_sync("crsp", 2024, 2024, tables=["daily"])
    display.close()
    moves = [e["rows"] for e in seen if e["event"] == events.PARTITION_PROGRESS and e["partition"] == "2024"]
    done = next(e for e in seen if e["event"] == events.PARTITION_COMPLETED and e["partition"] == "2024")
    assert len(moves) > 2 and moves == sorted(moves) and moves[-1] == done["rows"], moves
    assert seen.index(done) > max(i for i, e in enumerate(seen) if e["event"] == events.PARTITION_PROGRESS)
    assert f"{done['rows']:,} rows" in screen.getvalue()

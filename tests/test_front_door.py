"""The researcher's front door: the one-import API, any WRDS table by its name (`add`), looking at WRDS
(`libraries`, `tables`, `describe`), `login`, progress and visible waits, Ctrl-C, honest defaults, errors whose
fix fits their cause, and the CLI's polish. Every command through CliRunner and as the installed script."""
import json
import os
import signal
import stat
import subprocess
import time
from datetime import date

import keyring
import keyring.backend
import polars as pl
import pytest
from test_cli import BIN, cli, one_error, script
from typer.testing import CliRunner

import wrds_sync_nb as w
from wrds_sync_nb.cli import app, ccm_book_equity
from wrds_sync_nb.config import load_config, resolve_credentials
from wrds_sync_nb.layout import DataLayout
from wrds_sync_nb.locking import AtomicFileLock
from wrds_sync_nb.login import login
from wrds_sync_nb.manifest import ManifestManager
from wrds_sync_nb.reader import connect


def both(data, *args, env_extra=None):
    """Run a command through CliRunner and as the installed script; both results."""
    return cli(data, *args), script(data, *args, env_extra=env_extra)


def test_looking_at_wrds_through_both_entry_points(env, tmp_path):
    runner, proc = both(tmp_path / "d", "libraries")
    for out in (runner.output, proc.stdout):
        assert {"crsp", "comp", "ff"} <= set(out.split())
    runner, proc = both(tmp_path / "d", "tables", "crsp", "--json")
    for out in (runner.output, proc.stdout):
        assert {"dsf_v2", "msf_v2", "ccmxpf_lnkhist"} <= set(json.loads(out))
    runner, proc = both(tmp_path / "d", "describe", "crsp.msf_v2", "--json")
    for out in (runner.output, proc.stdout):
        d = json.loads(out)
        assert (d["kind"], d["partition_column"], d["readable"], d["last_updated"]) == ("view", "mthcaldt", True, "2026-02-06")
        assert {"name": "mthcaldt", "nullable": True, "type": "date", "comment": None} in d["columns"]
    r = script(tmp_path / "d", "describe", "crsp.msf_v2")
    assert r.returncode == 0 and "crsp.msf_v2 (view): about" in r.stdout and "mthret" in r.stdout
    assert not (tmp_path / "d").exists()  # looking writes nothing


def test_add_any_table_then_incremental_all_without_datasets_option(env, demo, wrds_db, tmp_path):
    data = tmp_path / "d"
    r = script(data, "add", "comp.secd", "--filter", "exchg=11", "--filter", "exchg=14")
    assert r.returncode == 0, r.stderr
    assert "partitioned by the year of datadate" in r.stdout and "no key given" in r.stdout
    assert 'source = "comp.secd"' in (data / "datasets.toml").read_text()
    r = cli(data, "add", "crsp.ccmxpf_lnkhist", "--name", "links", "--key", "gvkey,liid,linkdt", "--where", "linktype in ('LC', 'LU')")
    assert r.exit_code == 0 and "kept as one file" not in r.output and "runs on WRDS as written" in r.output
    r = script(data, "incremental", "--all")  # never synced: each added dataset gets its first (full) sync
    assert r.returncode == 0, r.stderr
    assert "comp_secd: version 1" in r.stdout and "links: version 1" in r.stdout
    con = connect(data)
    want = demo.execute("select count(*) from comp.secd where exchg in (11, 14)", database=wrds_db)[0][0]
    assert con.sql("select count(*) from comp_secd_secd").fetchone()[0] == want > 0   # a filtered copy: its name
    lc = demo.execute("select count(*) from crsp.ccmxpf_lnkhist where linktype in ('LC', 'LU')", database=wrds_db)[0][0]
    assert con.sql("select count(*) from links_ccmxpf_lnkhist").fetchone()[0] == lc
    demo.append_days("comp.secd", "datadate", 1, database=wrds_db)
    demo.bump_comment("comp.secd", date(2026, 3, 1), database=wrds_db)  # WRDS's marker moves when it loads new data
    r = script(data, "incremental", "--all")
    assert r.returncode == 0 and "comp_secd: version 2" in r.stdout, r.stdout + r.stderr
    assert "links: nothing changed at the source; still version 1" in r.stdout  # no data changed: no version
    assert connect(data).sql("select count(*) from comp_secd_secd").fetchone()[0] > want


def test_full_sync_of_chosen_tables_and_start_years_from_the_data(env, demo, wrds_db, tmp_path):
    data = tmp_path / "d"
    r = script(data, "full-sync", "--dataset", "crsp", "--table", "monthly", "--table", "ccm_link")
    assert r.returncode == 0, r.stderr
    m = ManifestManager(DataLayout(data)).load("crsp")
    assert sorted(m.tables) == ["ccm_link", "monthly"]
    assert sorted(m.tables["monthly"].partitions) == ["2021", "2022", "2023", "2024", "2025"]  # from 1925: only years with data
    r = script(data, "incremental", "--dataset", "crsp")  # covers what was synced, not daily from 1925
    assert r.returncode == 0 and sorted(ManifestManager(DataLayout(data)).load("crsp").tables) == ["ccm_link", "monthly"]
    r = cli(data, "full-sync", "--dataset", "crsp", "--table", "monthy")
    assert r.exit_code == 1 and "has no table 'monthy' (tables: daily, monthly" in r.output


def test_progress_lines_then_the_summary_and_no_control_characters_in_cron(env, tmp_path):
    r = script(tmp_path / "d", "full-sync", "--dataset", "fama_french", "--start-year", "2024")
    assert r.returncode == 0
    assert "fama_french/daily: 2 partition(s) to sync" in r.stderr and "fama_french/daily 2025: " in r.stderr
    assert "\x1b" not in r.stderr and "\r" not in r.stderr
    assert len(r.stdout.splitlines()) == 1 and r.stdout.startswith("fama_french: version 1")


def test_rate_limit_wait_is_shown_and_ctrl_c_stops_within_a_second(env, tmp_path):
    env_extra = {"WRDS_RATE_LIMIT_QUERIES_PER_MINUTE": "4"}
    p = subprocess.Popen([str(BIN), "--data-dir", str(tmp_path / "d"), "full-sync", "--dataset", "crsp"],
                         stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **env_extra})
    lines = []
    for line in p.stderr:  # synchronise on the line that says it waits
        lines.append(line)
        if line.startswith("waiting ") and "query rate limit" in line: break
    assert lines and "WRDS_RATE_LIMIT_QUERIES_PER_MINUTE" in lines[-1], lines
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    p.wait(timeout=30)
    took = time.monotonic() - t0
    print(f"stopped {took:.2f} s after Ctrl-C")
    assert p.returncode != 0 and took < 3, took
    assert AtomicFileLock(DataLayout(tmp_path / "d").locks_dir, "crsp").status().held is False


def test_waiting_for_a_lock_is_said_with_the_holder(env, tmp_path):
    data = tmp_path / "d"
    assert script(data, "full-sync", "--dataset", "fama_french", "--start-year", "2025").returncode == 0
    lock = AtomicFileLock(DataLayout(data).locks_dir, "fama_french", writer_id="another sync")
    token = lock.acquire()
    try:
        r = script(data, "--lock-timeout", "1", "incremental", "--dataset", "fama_french")
    finally: lock.release(token)
    assert r.returncode == 2 and f"waiting up to 1 s for the lock of fama_french held by pid {os.getpid()}" in r.stderr


def test_the_default_rate_limit_never_waits_on_the_demo(env, tmp_path, monkeypatch):
    monkeypatch.delenv("WRDS_RATE_LIMIT_QUERIES_PER_MINUTE")
    t0 = time.monotonic()
    r = script(tmp_path / "d", "full-sync", "--dataset", "crsp")
    assert r.returncode == 0 and "waiting" not in r.stderr, r.stderr
    print(f"crsp full sync with the default limit: {time.monotonic() - t0:.1f} s")


@pytest.mark.parametrize("case", ["source", "column", "duplicates", "toml_field", "add_typo", "table_typo"])
def test_each_error_path_names_the_fix_for_its_cause(env, tmp_path, case):
    toml = tmp_path / "ds.toml"
    body = {"source": 'source = "crsp.msf_v3"\npartition_column = "mthcaldt"\n',
            "column": 'source = "crsp.msf_v2"\npartition_column = "mthcaldt"\ncolumns = ["permno", "mthcaldt", "mthrett"]\n',
            "duplicates": 'source = "crsp.msf_v2"\npartition_column = "mthcaldt"\nkey_columns = ["permno"]\n',
            "toml_field": 'source = "crsp.msf_v2"\npartition_colum = "mthcaldt"\n'}.get(case, 'source = "ff.factors_monthly"\n')
    toml.write_text('[datasets.mine]\n[[datasets.mine.tables]]\nname = "t"\n' + body)
    args = {"add_typo": ["add", "crsp.msf_v3"], "table_typo": ["full-sync", "--dataset", "crsp", "--table", "mothly"]}.get(
        case, ["--datasets", str(toml), "full-sync", "--dataset", "mine", "--start-year", "2024"])
    r = script(tmp_path / "d", *args)
    assert r.returncode == 1 and one_error(r.stderr), r.stderr
    fix = r.stderr.split("Fix: ", 1)[1]
    want = {"source": "`wrds-sync tables crsp`", "column": "`wrds-sync describe crsp.msf_v2`", "duplicates": "set its key_columns",
            "toml_field": "`wrds-sync datasets --fields`", "add_typo": "`wrds-sync tables crsp`", "table_typo": "`wrds-sync datasets`"}[case]
    assert want in fix and "rerun the same command" not in fix, fix


def test_status_readable_at_80_columns_and_exit_1_off_a_data_dir(env, tmp_path):
    data = tmp_path / "d"
    assert script(data, "full-sync", "--dataset", "fama_french", "--start-year", "2024").returncode == 0
    r = script(data, "status", env_extra={"COLUMNS": "80"})
    assert r.returncode == 0
    lines = r.stdout.splitlines()[1:]  # after the title, which names the data dir's path
    assert all(len(x) <= 80 for x in lines) and "…" not in r.stdout, r.stdout
    assert any(x.startswith("fama_french/daily v1: synced ") for x in lines) and "crsp_legacy: never synced" in r.stdout
    assert any("partition(s)" in x and "kB" in x for x in lines), r.stdout
    for folder in (tmp_path / "nope", tmp_path):
        r = script(folder, "status")
        assert r.returncode == 1 and one_error(r.stderr) and "is not a wrds-sync data dir" in r.stderr, r.stderr


def test_lock_status_yes_no_version_and_help_without_bool(env, tmp_path):
    data = tmp_path / "d"
    assert script(data, "full-sync", "--dataset", "fama_french", "--start-year", "2025").returncode == 0
    lock = AtomicFileLock(DataLayout(data).locks_dir, "fama_french", writer_id="test")
    token = lock.acquire()
    try: r = script(data, "lock-status")
    finally: lock.release(token)
    row = next(x.split() for x in r.stdout.splitlines() if x.strip().startswith("fama_french"))
    assert row[1:3] == ["yes", "no"], r.stdout
    runner, proc = both(data, "--version")
    assert runner.output.strip() == proc.stdout.strip() == f"wrds-sync {w.__version__}"
    r = script(data, "datasets", "--fields")
    assert r.returncode == 0 and "partition_column" in r.stdout and "on WRDS as written" in r.stdout
    for cmd in ("incremental", "full-sync", "add", "status", "verify"):
        r = script(data, cmd, "--help")
        assert r.returncode == 0 and "<bool>" not in r.stdout, r.stdout


def test_login_writes_the_pgpass_line_as_the_official_package(env, demo, wrds_db, tmp_path, password_role, monkeypatch):
    pgpass = tmp_path / "pgpass"
    pgpass.write_text("other.example.org:5432:*:bob:keep-me\n")
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    monkeypatch.delenv("WRDS_PASSWORD")
    monkeypatch.delenv("WRDS_USERNAME")
    r = subprocess.run([str(BIN), "login", "--username", "wrds_user"], input="wrong-password\n", capture_output=True, text=True)
    assert r.returncode == 1 and "rejected the credentials" in r.stderr and pgpass.read_text() == "other.example.org:5432:*:bob:keep-me\n"
    r = subprocess.run([str(BIN), "login"], input=f"wrds_user\n{password_role}\n", capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = pgpass.read_text().splitlines()
    escaped = password_role.replace("\\", "\\\\").replace(":", "\\:")
    assert lines == ["other.example.org:5432:*:bob:keep-me", f"{demo.socket_dir}:5432:{wrds_db}:wrds_user:{escaped}"]
    assert stat.S_IMODE(pgpass.stat().st_mode) == 0o600 and password_role not in r.stdout + r.stderr
    r = script(tmp_path / "d", "libraries")  # a connection with the username and password of the line login wrote
    assert r.returncode == 0, r.stderr
    pgpass.write_text("other.example.org:5432:*:bob:keep-me\n")
    r = CliRunner().invoke(app, ["login", "--username", "wrds_user"], input=f"{password_role}\n")  # the same through CliRunner
    assert r.exit_code == 0 and pgpass.read_text().splitlines()[1].endswith(f":wrds_user:{escaped}"), r.output


def test_login_to_the_keyring(env, demo, password_role, monkeypatch):
    class MemoryKeyring(keyring.backend.KeyringBackend):
        priority = 1
        store: dict = {}
        def get_password(self, service, username): return self.store.get((service, username))
        def set_password(self, service, username, password): self.store[(service, username)] = password
        def delete_password(self, service, username): self.store.pop((service, username), None)
    previous = keyring.get_keyring()
    keyring.set_keyring(MemoryKeyring())
    try:
        monkeypatch.setenv("PGPASSFILE", "/nonexistent/pgpass")
        cfg = load_config().model_copy(update={"username": "wrds_user", "password": None})
        assert "OS keyring" in login(cfg, password_role, keyring=True)
        assert keyring.get_password("wrds", "wrds_user") == password_role
        monkeypatch.delenv("WRDS_PASSWORD")
        assert resolve_credentials(cfg).password.get_secret_value() == password_role
    finally: keyring.set_keyring(previous)


def test_the_python_api_in_one_import(env, demo, wrds_db, tmp_path, monkeypatch):
    monkeypatch.setenv("WRDS_SYNC_DATA_DIR", str(tmp_path / "d"))
    try:
        assert "msf_v2" in w.list_tables("crsp")
        r = w.sync("crsp", tables=["monthly", "ccm_link"], progress="none")
        assert sorted(r.manifest.tables) == ["ccm_link", "monthly"]
        r = w.sync("comp.secd", partition_column="datadate", key=["gvkey", "iid", "datadate"], progress="none")
        assert r.manifest.dataset == "comp_secd" and r.manifest.tables["secd"].rows == demo.row_counts(wrds_db, ["comp.secd"])["comp.secd"]
        n = w.connect().sql("select count(*) from crsp.msf_v2").fetchone()[0]
        assert n == demo.row_counts(wrds_db, ["crsp.msf_v2"])["crsp.msf_v2"]
        st = w.status()
        assert isinstance(st, pl.DataFrame) and st.filter(pl.col("dataset") == "comp_secd")["freshness"].to_list() == ["no schedule"]
        assert w.verify() == {"comp_secd": [], "crsp": []}
    finally: w.close()


def test_the_ccm_merge_of_the_demo_is_one_permno_per_firm_year(env, demo, tmp_path, monkeypatch):
    demo.build("ccm", daily_rows=40_000, start_year=2021, end_year=2025)  # 31 firms: every awkward kind of link
    monkeypatch.setenv("WRDS_DATABASE", "ccm")
    data = tmp_path / "d"
    for ds in ("crsp", "compustat"):
        assert script(data, "full-sync", "--dataset", ds, "--start-year", "2021").returncode == 0
    be = ccm_book_equity(data).collect()
    assert be.height == be.select("gvkey", "fyear").n_unique() > 0
    naive = pl.scan_parquet(sorted((data / "wrds/compustat/funda").glob("*.parquet"))).join(
        pl.scan_parquet(data / "wrds/crsp/ccm_link/all.parquet"), on="gvkey").collect()
    links = pl.read_parquet(data / "wrds/crsp/ccm_link/all.parquet")
    assert links.group_by("gvkey").len()["len"].max() > 1 and naive.height > be.height  # the awkward cases are there


def test_every_front_door_name_stays_the_apis_after_all_modules_load():
    import importlib
    import pkgutil

    import wrds_sync_nb as w
    for m in pkgutil.iter_modules(w.__path__):   # sync, status, history... share names with the API's functions
        if m.name != "__main__": importlib.import_module(f"wrds_sync_nb.{m.name}")
    for name in w.__all__:
        assert callable(getattr(w, name)) and getattr(w, name).__module__ != f"wrds_sync_nb.{name}", name

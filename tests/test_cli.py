"""The wrds-sync command: every command through CliRunner and as the installed script, exit codes, bad input,
JSON logs and the ten alert events."""
import json
import os
import pty
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import fill
from test_locking import dead_pid, start_holder
from typer.testing import CliRunner

from wrds_sync_nb import events
from wrds_sync_nb.cli import app
from wrds_sync_nb.layout import DataLayout
from wrds_sync_nb.locking import AtomicFileLock
from wrds_sync_nb.manifest import ManifestManager

BIN = Path(sys.executable).parent / "wrds-sync"
FF = ["--dataset", "fama_french", "--start-year", "2021", "--end-year", "2025"]


def cli(data, *args):
    return CliRunner().invoke(app, ["--data-dir", str(data), *args])


def script(data, *args, env_extra=None, timeout=120):
    e = {**os.environ, **(env_extra or {})}
    return subprocess.run([str(BIN), "--data-dir", str(data), *args], capture_output=True, text=True, env=e, timeout=timeout)


def one_error(stderr: str) -> bool:
    """Exactly one error line, and no traceback (warnings such as retries may precede it)."""
    return len([x for x in stderr.splitlines() if x.startswith("error: ")]) == 1 and "Traceback" not in stderr


def tree(path: Path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.is_dir() else ("file", path.read_bytes())


def test_every_command_through_cli_runner(env, tmp_path):
    data = tmp_path / "data"
    r = cli(data, "full-sync", *FF)
    assert r.exit_code == 0 and "fama_french: version 1, 2 table(s), 10 partition(s)" in r.stdout, r.stderr
    r = cli(data, "incremental", "--dataset", "fama_french")
    assert r.exit_code == 0 and "fama_french: nothing changed at the source; still version 1" in r.stdout
    r = cli(data, "incremental", "--all")
    assert r.exit_code == 0 and r.stdout.count("fama_french:") == 1
    r = cli(data, "status", "--json")
    rows = {(x["dataset"], x["table"]): x for x in json.loads(r.stdout)["tables"]}
    assert r.exit_code == 0 and rows[("fama_french", "daily")]["partitions"] == 5
    assert rows[("fama_french", "daily")]["kind"] == "incremental" and rows[("crsp", None)]["freshness"] == "never synced"
    r = cli(data, "status")
    assert r.exit_code == 0 and "fama_french" in r.stdout and "never synced" in r.stdout
    r = cli(data, "verify", "--dataset", "fama_french")
    assert (r.exit_code, r.stdout.strip()) == (0, "fama_french: ok")
    r = cli(data, "verify", "--all", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == {"ok": True, "problems": {"fama_french": []}}
    r = cli(data, "lock-status", "--json")
    assert r.exit_code == 0 and not any(x["held"] for x in json.loads(r.stdout))
    r = cli(data, "force-unlock", "--dataset", "fama_french", "--yes")
    assert (r.exit_code, r.stdout.strip()) == (0, "fama_french: not locked")
    r = cli(data, "datasets")
    assert r.exit_code == 0 and "crsp.dsf_v2" in r.stdout and "ff.factors_monthly" in r.stdout


def test_demo_command(tmp_path):
    r = cli(tmp_path / "d", "demo", "--rows", "3000")
    assert r.exit_code == 0, r.stderr
    assert "verified 3 datasets" in r.stdout and "1. DuckDB" in r.stdout and "2. polars" in r.stdout
    assert sorted(p.name for p in (tmp_path / "d/manifests").glob("*.json")) == ["compustat.json", "crsp.json",
                                                                                 "fama_french.json"]


def test_every_command_as_the_installed_script(env, tmp_path):
    data = tmp_path / "data"
    ok = [("full-sync", *FF), ("incremental", "--dataset", "fama_french"), ("incremental", "--all"),
          ("status",), ("status", "--json"), ("verify", "--dataset", "fama_french"), ("verify", "--all", "--json"),
          ("lock-status",), ("lock-status", "--json"), ("force-unlock", "--dataset", "fama_french", "--yes"),
          ("datasets",)]
    for args in ok:
        r = script(data, *args)
        assert r.returncode == 0, (args, r.stderr)
    assert json.loads(script(data, "status", "--json").stdout)["data_dir"] == str(data)
    r = subprocess.run([sys.executable, "-m", "wrds_sync_nb", "--data-dir", str(data), "verify", "--all"],
                       capture_output=True, text=True)
    assert (r.returncode, r.stdout.strip()) == (0, "fama_french: ok")
    r = script(tmp_path / "demo", "demo", "--rows", "2000", timeout=300)
    assert r.returncode == 0 and "verified 3 datasets" in r.stdout, r.stderr
    r = script(data, "no-such-command")
    assert r.returncode == 1 and "No such command" in r.stderr


def test_held_lock_exits_2(env, tmp_path):
    data = tmp_path / "data"
    holder = start_holder(DataLayout(data).locks_dir)  # a live process holds crsp's lock
    try:
        r = cli(data, "--lock-timeout", "0.2", "full-sync", "--dataset", "crsp")
        assert r.exit_code == 2 and f"is locked by pid {holder.pid}" in r.stderr
        r = script(data, "--lock-timeout", "0.2", "full-sync", "--dataset", "crsp")
        assert r.returncode == 2 and one_error(r.stderr)
        r = script(data, "--lock-timeout", "0", "incremental", "--all")
        assert r.returncode == 1  # nothing synced yet: an error, not a lock
        r = script(data, "lock-status", "--json")
        held = {x["dataset"]: x for x in json.loads(r.stdout)}["crsp"]
        assert held["held"] and held["pid"] == holder.pid and held["writer"] == "holder" and not held["stale"]
    finally:
        holder.kill()
        holder.wait()


def test_force_unlock_confirmation(env, tmp_path):
    data = tmp_path / "data"
    holder = start_holder(DataLayout(data).locks_dir)
    try:
        r = script(data, "force-unlock", "--dataset", "crsp")  # no terminal, no --yes
        assert r.returncode == 1 and "pass --yes" in r.stderr and (DataLayout(data).lock_path("crsp")).exists()
        master, slave = pty.openpty()  # a terminal: typing the wrong name keeps the lock, the right one removes it
        for typed, code in ((b"crs\n", 1), (b"crsp\n", 0)):
            p = subprocess.Popen([str(BIN), "--data-dir", str(data), "--log-format", "json", "force-unlock", "--dataset", "crsp"],
                                 stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            os.write(master, typed)
            out, err = p.communicate(timeout=60)
            assert p.returncode == code, err
        assert not DataLayout(data).lock_path("crsp").exists()
        forced = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
        ev = next(x for x in forced if x["event"] == events.LOCK_FORCED)
        assert ev["holder_pid"] == holder.pid and "@" in ev["by"]
        os.close(master)
        os.close(slave)
    finally:
        holder.kill()
        holder.wait()


BAD = {
    "unknown dataset": (["full-sync", "--dataset", "ibes"], "unknown dataset 'ibes'; known datasets: compustat, crsp"),
    "path in name": (["full-sync", "--dataset", "../etc"], "invalid dataset name '../etc'"),
    "year 1700": (["full-sync", "--dataset", "crsp", "--start-year", "1700"], "start year 1700 is outside"),
    "end before start": (["full-sync", "--dataset", "crsp", "--start-year", "2022", "--end-year", "2021"],
                         "end year 2021 is before start year 2022"),
    "legacy after 2024": (["full-sync", "--dataset", "crsp_legacy", "--start-year", "2023", "--end-year", "2025"],
                          "use dataset 'crsp' for later years"),
    "verify unknown": (["verify", "--dataset", "nope"], "unknown dataset 'nope'"),
    "both flags": (["incremental", "--dataset", "crsp", "--all"], "Fix: pass exactly one of --dataset NAME or --all"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_exit_1_data_dir_unchanged(env, tmp_path, case):
    args, needle = BAD[case]
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep.txt").write_text("x")
    before = tree(data)
    for r in (cli(data, *args), script(data, *args)):
        stderr = r.stderr
        code = r.exit_code if hasattr(r, "exit_code") else r.returncode
        assert code == 1 and needle in stderr and one_error(stderr), stderr
        assert stderr.startswith("error: ") and "Fix:" in stderr
    assert tree(data) == before


def test_unreadable_datasets_file(env, tmp_path):
    data = tmp_path / "data"
    bad = tmp_path / "datasets.toml"
    bad.mkdir()  # a folder where a file is expected (root reads any file, whatever its mode)
    r = script(data, "--datasets", str(bad), "datasets")
    assert r.returncode == 1 and f"datasets file {bad} cannot be read" in r.stderr
    (tmp_path / "broken.toml").write_text("[datasets.x\n")
    r = script(data, "--datasets", str(tmp_path / "broken.toml"), "full-sync", "--dataset", "crsp")
    assert r.returncode == 1 and "is not valid TOML" in r.stderr and one_error(r.stderr)
    assert not data.exists()


def test_data_dir_that_is_a_file(env, tmp_path):
    f = tmp_path / "data"
    f.write_text("not a folder")
    for args in (["full-sync", *FF], ["verify", "--all"], ["status"]):
        r = script(f, *args)
        assert r.returncode == 1 and "is a file, not a folder" in r.stderr and one_error(r.stderr)
    assert f.read_text() == "not a folder"


def test_wrong_password(env, demo, tmp_path, password_role, monkeypatch):
    monkeypatch.setenv("WRDS_USERNAME", "wrds_user")
    monkeypatch.setenv("WRDS_PASSWORD", "wrong-password")
    data = tmp_path / "data"
    r = script(data, "full-sync", *FF)
    assert r.returncode == 1 and "rejected the credentials of user 'wrds_user'" in r.stderr
    assert one_error(r.stderr) and "wrong-password" not in r.stderr + r.stdout
    assert not data.exists()


def test_unreachable_host_bounded_time(env, tmp_path, monkeypatch):
    import socket
    import time
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4)  # accepts TCP, never answers
    monkeypatch.setenv("WRDS_HOST", "127.0.0.1")
    monkeypatch.setenv("WRDS_PORT", str(s.getsockname()[1]))
    monkeypatch.setenv("WRDS_CONNECT_TIMEOUT_SECONDS", "1")
    t0 = time.monotonic()
    r = script(tmp_path / "data", "full-sync", *FF)
    assert r.returncode == 1 and "cannot reach WRDS at 127.0.0.1" in r.stderr and time.monotonic() - t0 < 30
    assert one_error(r.stderr) and not (tmp_path / "data").exists()
    s.close()


def json_events(stderr: str) -> list[dict]:
    lines = [x for x in stderr.splitlines() if x.strip()]
    parsed = [json.loads(x) for x in lines if x.startswith("{")]
    assert len(parsed) == len([x for x in lines if not x.startswith("error: ")]), "every log line is JSON"
    assert all("event" in p and "level" in p and "timestamp" in p for p in parsed)
    return parsed


def test_json_logs_and_the_alert_events(env, demo, wrds_db, tmp_path):
    seen: set[str] = set()
    data = tmp_path / "data"

    def run(*args, extra=None, code=0):
        r = script(data, "--log-format", "json", *args, env_extra=extra)
        assert r.returncode == code, (args, r.stderr)
        evs = json_events(r.stderr)
        seen.update(e["event"] for e in evs)
        return evs

    lock = DataLayout(data).lock_path("fama_french")
    lock.parent.mkdir(parents=True)
    stale = AtomicFileLock(lock.parent, "fama_french").new_token().model_copy(update={"pid": dead_pid()})
    lock.write_bytes(stale.to_json())
    evs = run("full-sync", *FF, extra={"WRDS_SYNC_FULL_SLO_SECONDS": "0"})  # stale lock recovered; SLO of 0 s
    assert {events.LOCK_STALE, events.DURATION_SLO_BREACH, events.PARTITION_COMPLETED} <= {e["event"] for e in evs}
    assert all(e.get("dataset") == "fama_french" for e in evs if e["event"].startswith("sync.partition"))

    soon = (date.today() + timedelta(days=10)).isoformat()
    mm = ManifestManager(DataLayout(data))
    m = mm.load("fama_french")
    mm.save(m.model_copy(update={"last_success_at": datetime.now(timezone.utc) - timedelta(days=3)}))
    evs = run("status", extra={"WRDS_PASSWORD_EXPIRES_ON": soon})
    assert [e["days_left"] for e in evs if e["event"] == events.CREDENTIAL_EXPIRING] == [10]
    assert [e["dataset"] for e in evs if e["event"] == events.DATA_LATE] == ["fama_french"]

    next((data / "versions/fama_french/daily").glob("2022-*.parquet")).unlink()  # the version, not only its view
    p = data / "wrds/fama_french/daily/2023.parquet"
    p.write_bytes(p.read_bytes()[:-20] + b"x" * 20)
    run("verify", "--dataset", "fama_french", code=1)
    assert {events.MANIFEST_MISMATCH, events.CHECKSUM_MISMATCH} <= seen
    assert all(e.startswith(("sync.", "wrds.")) for e in seen)


def test_disk_watermark_events(env, tmpfs):
    data = tmpfs / "data"
    seen = {}
    for level, leave in (("warning", 1_200_000), ("critical", 600_000), ("blocked", 200_000)):
        filler = fill(tmpfs, leave=leave)
        r = script(data, "--log-format", "json", "full-sync", *FF, "--force")  # fetch again: the disk is checked
        seen[level] = ({e["event"] for e in json_events(r.stderr)}, r.returncode)
        filler.unlink()
    assert events.DISK_WARNING in seen["warning"][0] and seen["warning"][1] == 0
    assert events.DISK_CRITICAL in seen["critical"][0] and seen["critical"][1] == 0
    assert events.DISK_BLOCKED in seen["blocked"][0] and seen["blocked"][1] == 1


def test_reader_keeps_its_snapshot_while_a_sync_replaces_a_partition(env, demo, wrds_db, tmp_path):
    from wrds_sync_nb.reader import connect, scan
    data = tmp_path / "data"
    assert script(data, "full-sync", *FF).returncode == 0
    con = connect(data)
    lf = scan("fama_french", "daily", data)
    q = "select sum(mktrf) from fama_french_daily where year(date) = 2023"
    before = con.execute(q).fetchone()[0]
    demo.restate_year("ff.factors_daily", "date", 2023, "mktrf", 2.0, database=wrds_db)
    demo.bump_comment("ff.factors_daily", date(2026, 3, 1), database=wrds_db)
    assert script(data, "incremental", "--dataset", "fama_french").returncode == 0
    assert con.execute(q).fetchone()[0] == pytest.approx(before)  # the snapshot (sums: float order varies)
    import polars as pl
    assert lf.filter(pl.col("date").dt.year() == 2023).select(pl.col("mktrf").sum()).collect().item() == pytest.approx(before)
    assert connect(data).execute(q).fetchone()[0] == pytest.approx(2 * before)  # a new connection sees the sync


def test_malformed_settings_and_manifest(env, tmp_path, monkeypatch):
    data = tmp_path / "data"
    assert script(data, "full-sync", *FF).returncode == 0
    r = script(data, "incremental", "--all", env_extra={"WRDS_PORT": "http"})
    assert r.returncode == 1 and one_error(r.stderr) and "setting WRDS_PORT is invalid" in r.stderr
    manifest = data / "manifests" / "history" / "fama_french" / "1.json"  # the newest version, not only its pointer
    manifest.write_text(manifest.read_text().replace('"rows": ', '"rows": 1', 1))
    for args in (["verify", "--dataset", "fama_french"], ["incremental", "--dataset", "fama_french"]):
        r = script(data, *args)
        assert r.returncode == 1 and one_error(r.stderr) and "fails its checksum" in r.stderr, (args, r.stderr)
        assert "wrds-sync repair --dataset NAME" in r.stderr
    r = script(data, "status", "--json")  # the damaged dataset is shown as such; status goes on
    rows = {x["dataset"]: x for x in json.loads(r.stdout)["tables"]}
    assert r.returncode == 0 and rows["fama_french"]["freshness"] == "damaged: run wrds-sync repair --dataset fama_french"


def test_incremental_dry_run_names_the_restated_year_and_writes_nothing(env, demo, wrds_db, tmp_path):
    data = tmp_path / "data"
    assert cli(data, "full-sync", *FF).exit_code == 0
    demo.bump_comment("ff.factors_daily", date(2026, 5, 1), database=wrds_db)
    demo.restate_year("ff.factors_daily", "date", 2023, "mktrf", 1.5, database=wrds_db)
    before = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
    r = script(data, "incremental", "--dataset", "fama_french", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "  daily: keep 4, fetch 1" in r.stdout and "    fetch 2023: restated: source fingerprint changed" in r.stdout
    assert "  monthly: keep 5 (source marker unchanged" in r.stdout
    r = cli(data, "incremental", "--dataset", "fama_french", "--dry-run", "--json")
    plans = json.loads(r.stdout)["fama_french"]
    assert [p["partition"] for p in plans["daily"] if p["action"] == "fetch"] == ["2023"]
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()} == before
    r = cli(data, "incremental", "--dataset", "fama_french")  # the real run fetches exactly that year
    assert r.exit_code == 0 and json.loads(cli(data, "incremental", "--dataset", "fama_french", "--dry-run", "--json").stdout)[
        "fama_french"]["daily"][0]["action"] == "keep"

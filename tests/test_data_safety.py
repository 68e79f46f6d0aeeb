"""Findings of the adversarial data-safety review, one test each (issue: never delete or overwrite what is not ours)."""
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
from datetime import date
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from conftest import fill
from synchelp import file_digests, manager
from test_cli import BIN, script
from test_locking import start_holder

from wrds_sync_nb import events
from wrds_sync_nb.checkpoint import Checkpoint
from wrds_sync_nb.config import WRDSConfig, resolve_credentials
from wrds_sync_nb.datasets import DatasetRegistry
from wrds_sync_nb.errors import ConfigError, DiskSpaceError, MassRemovalError
from wrds_sync_nb.integrity import check_integrity
from wrds_sync_nb.layout import DataLayout, sha256_file
from wrds_sync_nb.manifest import ManifestManager
from wrds_sync_nb.reader import connect
from wrds_sync_nb.sync import SyncManager, recover_journal


def test_4_an_emptied_source_table_does_not_wipe_the_local_table(demo, wrds_db, tmp_path):
    sm = manager(demo, wrds_db, tmp_path)
    sm.full_sync("crsp", 2021, 2025)
    before, manifest = file_digests(tmp_path), ManifestManager(DataLayout(tmp_path)).load("crsp")
    demo.execute("truncate crsp_a_stock.dsf_v2", database=wrds_db)  # WRDS reloading the table
    demo.bump_comment("crsp.dsf_v2", date(2026, 6, 1), database=wrds_db)
    with events.capture_events() as got, pytest.raises(MassRemovalError) as e:
        manager(demo, wrds_db, tmp_path).incremental_sync("crsp")
    assert "would remove the whole table (5 partitions" in str(e.value) and "--allow-mass-delete" in str(e.value)
    assert [x["table"] for x in got if x["event"] == events.MASS_REMOVAL] == ["daily"]
    assert file_digests(tmp_path) == before
    assert ManifestManager(DataLayout(tmp_path)).load("crsp").tables["daily"] == manifest.tables["daily"]
    sm = manager(demo, wrds_db, tmp_path)
    sm.allow_mass_delete = True  # WRDS really withdrew it: the operator says so
    assert sm.incremental_sync("crsp").tables["daily"].partitions == {}


def test_4_the_guard_through_the_cli_exits_1_and_allow_mass_delete_passes(env, demo, wrds_db, tmp_path):
    data = tmp_path / "d"
    assert script(data, "full-sync", "--dataset", "fama_french", "--start-year", "2023").returncode == 0
    demo.delete_year("ff.factors_monthly", "date", 2023, database=wrds_db)
    demo.delete_year("ff.factors_monthly", "date", 2024, database=wrds_db)
    demo.bump_comment("ff.factors_monthly", date(2026, 6, 1), database=wrds_db)
    r = script(data, "--log-format", "json", "incremental", "--dataset", "fama_french")
    assert r.returncode == 1 and "would remove 2 of" in r.stderr
    assert [json.loads(x)["event"] for x in r.stderr.splitlines() if '"alert": true' in x] == ["sync.mass_removal.blocked"]
    r = script(data, "incremental", "--dataset", "fama_french", "--allow-mass-delete")
    assert r.returncode == 0, r.stderr
    assert sorted(ManifestManager(DataLayout(data)).load("fama_french").tables["monthly"].partitions) == ["2025"]


@pytest.mark.parametrize("command", [["incremental", "--dataset", "fama_french"], ["incremental", "--all"],
                                     ["full-sync", "--dataset", "fama_french", "--start-year", "2025"]])
def test_11_another_holders_lock_exits_2_for_every_syncing_command(env, tmp_path, command):
    data = tmp_path / "d"
    assert script(data, "full-sync", "--dataset", "fama_french", "--start-year", "2025").returncode == 0
    holder = start_holder(data / "locks", dataset="fama_french")
    try:
        r = script(data, "--lock-timeout", "0.2", *command)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 2 and "is locked by pid" in r.stderr, (r.returncode, r.stderr)


def test_1_planted_symlinks_are_refused_and_their_targets_untouched(env, tmp_path):
    data = tmp_path / "d"
    assert script(data, "full-sync", "--dataset", "fama_french", "--start-year", "2025").returncode == 0
    for inside, victim_child in (("tmp/staging", "fama_french"), ("quarantine", "2020-01-01T00-00-00_old"),
                                 ("tmp/snapshots", "999999-abcdef01")):
        victim = tmp_path / f"victim_{inside.replace('/', '_')}"
        (victim / victim_child).mkdir(parents=True)
        (victim / victim_child / "precious").write_text("keep")
        link = data / inside
        if link.exists():
            shutil.rmtree(link)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(victim)
        for args in (["verify", "--dataset", "fama_french"], ["incremental", "--dataset", "fama_french"]):
            r = script(data, *args)
            assert r.returncode == 1 and f"refusing to use {link}: it is a symlink" in r.stdout + r.stderr, (inside, args, r.stderr)
        with pytest.raises(ConfigError, match="it is a symlink"):
            connect(data)
        assert (victim / victim_child / "precious").read_text() == "keep", inside
        link.unlink()


def test_1_a_data_dir_pointing_at_a_folder_of_other_things_gets_nothing(env, tmp_path):
    system = tmp_path / "system"  # stands for `/`: a folder holding other things
    (system / "etc").mkdir(parents=True)
    link = tmp_path / "data"
    link.symlink_to(system)
    r = script(link, "full-sync", "--dataset", "fama_french", "--start-year", "2025")
    assert r.returncode == 1 and "holds other files and is not a wrds-sync data dir" in r.stderr
    assert sorted(p.name for p in system.iterdir()) == ["etc"]


def test_3_demo_refuses_a_data_dir_holding_real_data(env, tmp_path):
    data = tmp_path / "real"
    assert script(data, "full-sync", "--dataset", "fama_french", "--start-year", "2025").returncode == 0
    before = file_digests(data)
    r = script(data, "demo", "--rows", "3000")
    assert r.returncode == 1 and f"{data} holds real data or other files, not a demo" in r.stderr and "--data-dir" in r.stderr
    assert file_digests(data) == before and not (data / "demo_source").exists()


def test_5_a_forged_checkpoint_is_not_adopted(demo, wrds_db, tmp_path):
    manager(demo, wrds_db, tmp_path).full_sync("fama_french", 2023, 2025)
    lay = DataLayout(tmp_path)
    src = tmp_path / "wrds/fama_french/daily/2023.parquet"
    forged = lay.version_path("fama_french", "daily", "2024", sha256_file(src))  # another year's rows under a 2024 name
    shutil.copyfile(src, forged)
    p = tmp_path / "sync_progress/fama_french.json"
    prog = json.loads(p.read_text())
    e = dict(prog["completed"]["daily"]["2024"])
    e.update(path=lay.relative(forged), bytes=forged.stat().st_size, sha256=sha256_file(forged),
             rows=pq.ParquetFile(forged).metadata.num_rows)
    prog["pending"] = {"daily": {"2024": e}}
    p.write_text(json.dumps(prog))
    before = file_digests(tmp_path)
    assert check_integrity(SyncManager(None, tmp_path), "fama_french") == []  # not listed by any version: no damage
    assert file_digests(tmp_path) == before  # and verify writes nothing
    prog["content_sha256"] = Checkpoint.model_validate_json(json.dumps(prog)).content_digest()  # even with a valid checksum...
    p.write_text(json.dumps(prog))
    recover_journal(manager(demo, wrds_db, tmp_path), DatasetRegistry.load().get("fama_french"))
    # ...the file does not hold 2024's dates: never adopted
    adopted = json.loads(p.read_text())["completed"]["daily"]["2024"]
    assert adopted["sha256"] != e["sha256"]
    assert ManifestManager(lay).load("fama_french").tables["daily"].partitions["2024"].sha256 != e["sha256"]


def test_6_a_damaged_manifest_is_repaired_and_shown_as_damaged_meanwhile(env, tmp_path):
    data = tmp_path / "d"
    for ds in ("fama_french", "compustat"):
        assert script(data, "full-sync", "--dataset", ds, "--start-year", "2024").returncode == 0
    newest = max((data / "manifests/history/fama_french").glob("*.json"), key=lambda f: int(f.stem))
    newest.write_text("{")
    r = script(data, "status", "--json")
    rows = {x["dataset"]: x for x in json.loads(r.stdout)["tables"]}
    assert r.returncode == 0 and rows["fama_french"]["freshness"].startswith("damaged") and rows["compustat"]["partitions"] > 0
    r = script(data, "verify", "--all")
    assert r.returncode == 1 and "compustat: ok" in r.stdout and "fama_french: 1 problem(s)" in r.stdout
    r = script(data, "repair", "--dataset", "fama_french")
    assert r.returncode == 0 and "fama_french: restored manifest version" in r.stdout
    assert script(data, "verify", "--all").returncode == 0
    assert sorted(p.name for p in (data / "quarantine").glob("*_fama_french_manifest/*")) == [newest.name, "note.json"]


@pytest.mark.parametrize("case", ["empty", "half restored", "proc"])
def test_7_verify_all_with_nothing_verified_fails(env, tmp_path, case):
    folder = {"empty": tmp_path / "empty", "half restored": tmp_path / "half", "proc": Path("/proc")}[case]
    if case == "empty":
        folder.mkdir()
    if case == "half restored":
        (folder / "wrds/crsp/daily").mkdir(parents=True)
        (folder / "wrds/crsp/daily/2024.parquet").write_bytes(b"PAR1 truncated")
    r = script(folder, "verify", "--all", "--json")
    assert r.returncode == 1 and "ok" not in r.stdout.lower().split(), (case, r.stdout, r.stderr)
    if case == "half restored":
        assert json.loads(r.stdout)["problems"]["crsp"] == [f"dataset 'crsp' has no manifest: it has never been synced into {folder}",
                                                            "unknown file wrds/crsp/daily/2024.parquet: not a version wrds-sync wrote"]


def test_10_verify_during_a_restating_sync_raises_no_false_alarm(demo, wrds_db, tmp_path):
    sm = manager(demo, wrds_db, tmp_path)  # one client throughout: each holds up to 3 of the role's 7 sessions
    sm.full_sync("crsp", 2021, 2025)
    stop, alarms, runs = threading.Event(), [], [0]

    def verify_loop():
        while not stop.is_set():
            alarms.extend(check_integrity(SyncManager(None, tmp_path), "crsp"))
            runs[0] += 1

    t = threading.Thread(target=verify_loop)
    t.start()
    try:
        for i, year in enumerate((2022, 2024, 2021)):
            demo.restate_year("crsp.dsf_v2", "dlycaldt", year, "dlyret", 1.1 + i, database=wrds_db)
            demo.bump_comment("crsp.dsf_v2", date(2026, 7, 1 + i), database=wrds_db)
            sm.incremental_sync("crsp")
    finally:
        stop.set()
        t.join()
        sm.client.close()
    assert runs[0] >= 3 and alarms == []


@pytest.mark.parametrize("damage", ["truncated", "swapped", "symlinked"])
def test_8_incremental_notices_and_repairs_local_damage(demo, wrds_db, tmp_path, damage):
    manager(demo, wrds_db, tmp_path).full_sync("fama_french", 2023, 2025)
    d = tmp_path / "wrds/fama_french/daily"
    good = {p.name: p.read_bytes() for p in d.glob("*.parquet")}
    if damage == "truncated":
        (d / "2024.parquet").write_bytes(good["2024.parquet"][:100])
    elif damage == "swapped":
        (d / "2024.parquet").write_bytes(good["2023.parquet"])
    else:
        elsewhere = tmp_path / "elsewhere.parquet"
        elsewhere.write_bytes(good["2024.parquet"])
        (d / "2024.parquet").unlink()
        (d / "2024.parquet").symlink_to(elsewhere)
    with events.capture_events() as got:
        manager(demo, wrds_db, tmp_path).incremental_sync("fama_french")  # the source did not change at all
    # the view is the version's file: writing into it damages the version, which is fetched again (and says so); a
    # symlink planted at the view's name leaves the version intact: the view is put back, nothing is fetched
    fetched = [] if damage == "symlinked" else [("daily", "2024")]
    assert [(e["table"], e["partition"]) for e in got if e["event"] == events.PARTITION_COMPLETED] == fetched
    assert [e["partition"] for e in got if e["event"] == events.CHECKSUM_MISMATCH] == [k for _, k in fetched]
    if damage == "symlinked":
        assert elsewhere.read_bytes() == good["2024.parquet"]  # the link's target is untouched
    assert not (d / "2024.parquet").is_symlink() and (d / "2024.parquet").read_bytes() == good["2024.parquet"]
    assert check_integrity(SyncManager(None, tmp_path), "fama_french") == []


def test_12_a_full_disk_at_lock_creation_is_said_as_such(demo, wrds_db, tmpfs):
    data = tmpfs / "data"
    DataLayout(data).ensure()
    fill(tmpfs)
    with events.capture_events() as got, pytest.raises(DiskSpaceError, match="no space left on device to create the lock"):
        manager(demo, wrds_db, data).full_sync("fama_french", 2025, 2025)
    assert [e["event"] for e in got if e.get("alert")] == [events.DISK_BLOCKED]


def test_12_sigterm_pauses_the_run_and_releases_the_lock(env, tmp_path):
    data = tmp_path / "d"
    p = subprocess.Popen([str(BIN), "--data-dir", str(data), "--log-format", "json", "full-sync", "--dataset", "crsp",
                          "--start-year", "2021"], stderr=subprocess.PIPE, text=True)
    for line in p.stderr:  # wait for the first published partition: a condition, not a sleep
        if '"sync.partition.completed"' in line:
            break
    p.send_signal(signal.SIGTERM)
    rest = p.stderr.read()
    assert p.wait(timeout=60) != 0
    failed = [json.loads(x) for x in rest.splitlines() if '"sync.failed"' in x]
    assert failed and "signal 15" in failed[0]["error"]
    assert json.loads((data / "sync_progress/crsp.json").read_text())["status"] == "paused"
    assert not (data / "locks/crsp.lock").exists()


def test_12_drills_write_only_into_a_data_dir(env, tmp_path):
    other = tmp_path / "etc"
    other.mkdir()
    r = script(tmp_path / "d", "drill", "verify", "-p", "data_dir", str(other))
    assert r.returncode == 1 and f"{other} is not a wrds-sync data dir" in r.stderr
    assert list(other.iterdir()) == [] and not (tmp_path / "drills").exists()


def test_12_read_only_commands_work_for_another_user_who_can_read_the_data_dir(env, tmp_path):
    shared = Path(tempfile.mkdtemp(prefix="wrds-shared-"))
    os.chmod(shared, 0o755)
    data = shared / "d"
    assert script(data, "full-sync", "--dataset", "fama_french", "--start-year", "2025").returncode == 0
    from typer.testing import CliRunner

    import wrds_sync_nb.cli  # noqa: F401  (everything the child needs is imported before it drops privileges)
    nobody = pwd.getpwnam("nobody")
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: another Unix user, in the same interpreter
        try:
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            res = {a: CliRunner().invoke(wrds_sync_nb.cli.app, ["--data-dir", str(data), a, "--json"]).exit_code
                   for a in ("status", "lock-status")}
            os.write(wr, json.dumps(res).encode())
        finally:
            os._exit(0)
    os.close(wr)
    got = json.loads(os.read(rd, 10000) or b"{}")
    os.waitpid(pid, 0)
    shutil.rmtree(shared)
    assert got == {"status": 0, "lock-status": 0}


def test_12_a_short_password_is_not_masked_in_ordinary_words(monkeypatch):
    monkeypatch.setenv("WRDS_PASSWORD", "daily")
    with events.capture_events() as got:
        cfg = resolve_credentials(WRDSConfig(username="ann"))
        e = events.emit(events.TABLE_STARTED, dataset="crsp", table="daily", partitions=1)
    assert cfg.password.get_secret_value() == "daily" and e["table"] == "daily"
    assert [x["event"] for x in got][:1] == [events.CREDENTIALS_WEAK]


def remote_digests(remote):
    return {p.relative_to(remote).as_posix(): sha256_file(p) for p in sorted(remote.rglob("*")) if p.is_file()}


def test_2_backup_never_sends_a_damaged_local_copy(env, tmp_path):
    data, remote = tmp_path / "d", tmp_path / "remote"
    assert script(data, "full-sync", "--dataset", "fama_french", "--start-year", "2024").returncode == 0
    assert script(data, "backup", "--remote", str(remote)).returncode == 0
    before = remote_digests(remote)
    f = data / "wrds/fama_french/daily/2024.parquet"
    f.write_bytes(f.read_bytes()[:200])
    r = script(data, "--log-format", "json", "backup", "--remote", str(remote))
    assert r.returncode == 1 and "the local copy does not verify" in r.stderr
    assert "sync.backup.failed" in [json.loads(x)["event"] for x in r.stderr.splitlines() if x.startswith("{")]
    assert remote_digests(remote) == before  # the last good backup is untouched


RCLONE_WRAPPER = """#!/bin/sh
# The first `copy` of a backup (the data files) runs; the second (the manifests) stands for a long transfer.
if [ "$1" = copy ] && [ -e "$MARK.first" ]; then echo $$ > "$MARK.started.tmp"; mv "$MARK.started.tmp" "$MARK.started"; exec sleep 600; fi
if [ "$1" = copy ]; then touch "$MARK.first"; fi
exec rclone "$@"
"""


@pytest.mark.parametrize("kill", ["process group, SIGTERM", "python only, SIGKILL"])
def test_2_a_backup_killed_mid_way_leaves_the_last_good_one_restorable(env, demo, wrds_db, tmp_path, kill):
    data, remote = tmp_path / "d", tmp_path / "remote"
    assert script(data, "full-sync", "--dataset", "fama_french", "--start-year", "2024").returncode == 0
    assert script(data, "backup", "--remote", str(remote)).returncode == 0
    good = {p.relative_to(data).as_posix(): sha256_file(p) for p in (data / "wrds").rglob("*.parquet")}
    demo.restate_year("ff.factors_daily", "date", 2024, "mktrf", 3.0, database=wrds_db)
    demo.bump_comment("ff.factors_daily", date(2026, 8, 1), database=wrds_db)
    assert script(data, "incremental", "--dataset", "fama_french").returncode == 0
    wrapper, mark = tmp_path / "rclone-wrapper", tmp_path / "mark"
    wrapper.write_text(RCLONE_WRAPPER)
    wrapper.chmod(0o755)
    e = {**os.environ, "WRDS_SYNC_RCLONE": str(wrapper), "MARK": str(mark)}
    p = subprocess.Popen([str(BIN), "--data-dir", str(data), "backup", "--remote", str(remote)], env=e,
                         start_new_session=True, stderr=subprocess.PIPE)
    started = Path(f"{mark}.started")
    while not started.exists():  # the data files are sent; the manifests are on their way
        assert p.poll() is None, p.stderr.read()
    rclone_pid = int(started.read_text())
    if kill.startswith("process group"):
        os.killpg(p.pid, signal.SIGTERM)
    else:
        p.kill()
    p.wait(timeout=60)
    gone = psutil.wait_procs([psutil.Process(rclone_pid)], timeout=30)[0] if psutil.pid_exists(rclone_pid) else [1]
    assert gone, "rclone outlived the backup that started it"
    r = script(tmp_path / "restored", "restore", "--remote", str(remote), "--to", str(tmp_path / "restored"))
    assert r.returncode == 0, r.stdout + r.stderr
    restored = tmp_path / "restored"
    assert {p.relative_to(restored).as_posix(): sha256_file(p) for p in (restored / "wrds").rglob("*.parquet")} == good


def test_12_a_one_year_sync_checks_the_disk_for_a_year_not_the_table(demo, wrds_db, tmp_path):
    with events.capture_events() as got:
        manager(demo, wrds_db, tmp_path).full_sync("compustat", 2025, 2025)
    total = demo.execute("select reltuples::bigint from pg_class where oid = 'comp.funda'::regclass", database=wrds_db)[0][0]
    hints = [e["rows"] for e in got if e["event"] == events.PARTITION_STARTED and e["table"] == "funda"]
    assert hints and hints[0] < total / 2, (hints, total)

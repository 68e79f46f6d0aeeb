"""Operations: backups and restores with rclone, the papermill drills, and the runbooks' own correctness."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import papermill as pm
import pytest
from synchelp import manager
from test_locking import start_holder

from wrds_sync_nb import events
from wrds_sync_nb.backup import backup, restore
from wrds_sync_nb.events import ALERTS, alerts_markdown
from wrds_sync_nb.layout import DataLayout

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent / "wrds-sync"
DRILLS = ROOT / "runbooks" / "drills"
PAGES = sorted([*ROOT.glob("runbooks/*.qmd"), *ROOT.glob("docs/*.qmd")])


@pytest.fixture
def synced(demo, wrds_db, tmp_path):
    """A data dir with fama_french and compustat synced from the demo source."""
    data = tmp_path / "data"
    sm = manager(demo, wrds_db, data)
    sm.full_sync("fama_french", 2021, 2025)
    sm.full_sync("compustat", 2021, 2025)
    return data


def published(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for d in ("versions", "wrds", "manifests", "schemas")
            for p in (root / d).rglob("*") if p.is_file() and not p.name.startswith(".")}


def test_backup_restore_round_trip_is_byte_identical(synced, tmp_path):
    (synced / "quarantine" / "junk").mkdir(parents=True)
    (synced / "quarantine" / "junk" / "x.parquet").write_bytes(b"x")
    b = backup(synced, str(tmp_path / "remote"))
    assert b.datasets == ["compustat", "fama_french"]
    gen = (tmp_path / "remote/CURRENT").read_text().strip()
    top = tmp_path / "remote/generations" / gen
    remote_files = {p.relative_to(top).parts[0] for p in top.rglob("*") if p.is_file()}
    assert remote_files == {"versions", "manifests", "schemas", ".wrds-sync"}  # no views, locks, staging, quarantine or progress
    r = restore(str(tmp_path / "remote"), tmp_path / "restored")
    assert r.ok and r.problems == {"compustat": [], "fama_french": []}
    assert published(tmp_path / "restored") == published(synced)


def test_backup_refuses_while_a_sync_holds_the_lock(synced, tmp_path):
    holder = start_holder(DataLayout(synced).locks_dir, dataset="fama_french")
    try:
        r = subprocess.run([str(BIN), "--data-dir", str(synced), "--lock-timeout", "0.2", "backup", "--remote",
                            str(tmp_path / "remote")], capture_output=True, text=True)
        assert r.returncode == 2 and f"is locked by pid {holder.pid}" in r.stderr
        assert not (tmp_path / "remote").exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("case", ["missing binary", "unknown remote"])
def test_failing_rclone_emits_backup_failed_and_exits_1(synced, tmp_path, case):
    env = {**os.environ}
    remote = str(tmp_path / "remote")
    if case == "missing binary":
        env["WRDS_SYNC_RCLONE"] = str(tmp_path / "no-rclone-here")
    else:
        remote = "nosuchremote:bucket/wrds"
    r = subprocess.run([str(BIN), "--data-dir", str(synced), "--log-format", "json", "backup", "--remote", remote],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 1
    evs = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
    failed = [e for e in evs if e["event"] == events.BACKUP_FAILED]
    assert len(failed) == 1 and failed[0]["alert"] is True
    assert not [x for x in r.stderr.splitlines() if not x.startswith("{")], r.stderr  # JSON lines only
    error = [e["error"] for e in evs if e["event"] == events.COMMAND_FAILED]
    assert len(error) == 1, r.stderr
    if case == "missing binary":
        assert "rclone is not installed" in error[0]
    else:
        assert "didn't find section in config file" in error[0] and "nosuchremote" in error[0]


def test_restore_refuses_a_non_empty_target(synced, tmp_path):
    backup(synced, str(tmp_path / "remote"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(Exception, match="is not an empty folder"):
        restore(str(tmp_path / "remote"), tmp_path / "busy")


def run_drill(name, out, **params):
    return pm.execute_notebook(str(DRILLS / f"{name}.ipynb"), str(out), parameters=params, kernel_name="python3",
                               progress_bar=False, cwd=str(DRILLS))


def test_verify_drill(synced, tmp_path):
    run_drill("verify_drill", tmp_path / "out.ipynb", data_dir=str(synced), report=str(tmp_path / "r.json"))
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["ok"] and rep["problems"] == {"compustat": [], "fama_french": []}
    next((synced / "versions/compustat/funda").glob("2022-*.parquet")).unlink()
    with pytest.raises(pm.PapermillExecutionError):
        run_drill("verify_drill", tmp_path / "out2.ipynb", data_dir=str(synced), report=str(tmp_path / "r2.json"))
    rep = json.loads((tmp_path / "r2.json").read_text())
    assert not rep["ok"] and rep["problems"]["compustat"][0].startswith("missing file versions/compustat/funda/2022-")


def test_restore_drill_ok_then_fails_on_a_corrupted_backup(synced, tmp_path):
    remote = tmp_path / "remote"
    run_drill("restore_drill", tmp_path / "out.ipynb", data_dir=str(synced), remote=str(remote),
              scratch=str(tmp_path / "s1"), report=str(tmp_path / "r.json"))
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["ok"] and rep["files"] > 0 and rep["restore_seconds"] >= 0 and rep["row_count_mismatches"] == []
    victim = next((remote / "generations" / (remote / "CURRENT").read_text().strip() / "versions/fama_french/monthly").glob("2023-*.parquet"))
    victim.write_bytes(victim.read_bytes()[:-8] + b"garbage!")
    with pytest.raises(pm.PapermillExecutionError):
        run_drill("restore_drill", tmp_path / "out2.ipynb", data_dir=str(synced), remote=str(remote),
                  scratch=str(tmp_path / "s2"), backup_first=False, report=str(tmp_path / "r2.json"))
    rep = json.loads((tmp_path / "r2.json").read_text())
    assert not rep["ok"]
    assert rep["problems"]["fama_french"][0].startswith("checksum mismatch versions/fama_french/monthly/2023-")


def test_lock_recovery_drill(tmp_path):
    run_drill("lock_recovery_drill", tmp_path / "out.ipynb", data_dir=str(tmp_path / "d"), report=str(tmp_path / "r.json"))
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["ok"] and rep["sync_rows"] > 0 and re.fullmatch(r"pid \d+ is dead", rep["stale_reason"])


def test_drill_command(synced, tmp_path):
    r = subprocess.run([str(BIN), "--data-dir", str(synced), "drill", "verify_drill", "-p", "report", str(tmp_path / "r.json"),
                        "--output", str(tmp_path / "out.ipynb")], capture_output=True, text=True)
    assert r.returncode == 0 and "drill verify_drill passed" in r.stdout and (tmp_path / "out.ipynb").exists()
    r = subprocess.run([str(BIN), "--data-dir", str(synced), "drill", "nope"], capture_output=True, text=True)
    assert r.returncode == 1 and "unknown drill 'nope'" in r.stderr


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_page_renders_with_pandoc(page):
    if shutil.which("pandoc") is None:
        pytest.skip("pandoc is not installed (.ci/run installs it)")
    r = subprocess.run(["pandoc", "-f", "markdown", "--fail-if-warnings", "-t", "html5", str(page), "-o", os.devnull],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


GLOBAL_WITH_VALUE = {"--data-dir", "--datasets", "--log-format", "--lock-timeout"}


def quoted_commands():
    for page in PAGES:
        text = page.read_text()
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
            for line in block.splitlines():
                m = re.search(r"(?:^|\s)(?:\S*/)?wrds-sync(\s.*)$", line)
                if m and not line.lstrip().startswith("#"):
                    yield page.name, shlex.split(m[1].split(">>")[0])


def test_every_quoted_command_exists():
    seen = 0
    for page, argv in quoted_commands():
        i = 0
        while i < len(argv) and argv[i].startswith("-"):
            i += 2 if argv[i] in GLOBAL_WITH_VALUE else 1
        assert i < len(argv), (page, argv)
        cmd, opts = argv[i], [a for a in argv[i + 1:] if a.startswith("--")]
        r = subprocess.run([str(BIN), cmd, "--help"], capture_output=True, text=True)
        assert r.returncode == 0, f"{page}: wrds-sync {cmd} does not exist"
        for opt in opts:
            assert opt in r.stdout, f"{page}: wrds-sync {cmd} has no option {opt}"
        seen += 1
    assert seen >= 15  # the runbooks quote many commands: a parse that finds few is itself broken


def test_alert_reference_is_generated_from_the_code():
    assert (ROOT / "runbooks" / "alerts.qmd").read_text() == alerts_markdown()
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_docs.py"), "--check"], capture_output=True, text=True)
    assert (r.returncode, r.stdout) == (0, ""), r.stdout  # README and concept page dataset tables are current
    for a in ALERTS.values():
        page, anchor = a.runbook.split("#")
        assert "{#" + anchor + "}" in (ROOT / "runbooks" / page).read_text(), a.runbook


def test_quarto_site_lists_the_pages():
    site = (ROOT / "_quarto.yml").read_text()
    assert '"runbooks/*.qmd"' in site and '"docs/*.qmd"' in site
    names = {p.name for p in PAGES}
    assert {"wrds-lock-recovery.qmd", "data-backup-restore.qmd", "duckdb-operations.qmd", "wrds-credentials.qmd",
            "data-storage.qmd", "wrds-data.qmd", "ADR-012-local-data-warehouse.qmd", "alerts.qmd"} <= names




def test_backup_restore_drill_through_cli_runner(synced, tmp_path):
    from typer.testing import CliRunner

    from wrds_sync_nb.cli import app
    run = CliRunner().invoke
    r = run(app, ["--data-dir", str(synced), "backup", "--remote", str(tmp_path / "remote")])
    assert r.exit_code == 0 and "rclone check passed" in r.stdout, r.stderr
    r = run(app, ["restore", "--remote", str(tmp_path / "remote"), "--to", str(tmp_path / "restored")])
    assert r.exit_code == 0 and "compustat: ok" in r.stdout and "fama_french: ok" in r.stdout
    assert published(tmp_path / "restored") == published(synced)
    victim = next((tmp_path / "remote/generations" / (tmp_path / "remote/CURRENT").read_text().strip() / "versions/compustat/fundq").glob("2024-*.parquet"))
    victim.write_bytes(b"not parquet")
    r = run(app, ["restore", "--remote", str(tmp_path / "remote"), "--to", str(tmp_path / "again")])
    assert r.exit_code == 1 and "checksum mismatch versions/compustat/fundq/2024-" in r.stdout
    assert "the backup at" in r.stderr and "is damaged" in r.stderr
    r = run(app, ["--data-dir", str(synced), "drill", "verify_drill", "-p", "report", str(tmp_path / "v.json"),
                  "--output", str(tmp_path / "v.ipynb")])
    assert r.exit_code == 0 and json.loads((tmp_path / "v.json").read_text())["ok"] is True

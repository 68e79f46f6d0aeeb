"""Findings of the adversarial data-safety review, one test each (issue: never delete or overwrite what is not ours)."""
import json
from datetime import date

import pytest
from synchelp import file_digests, manager
from test_cli import script
from test_locking import start_holder
from test_wrds_fidelity import env  # noqa: F401  (the fixture: WRDS_* for the demo account)

from wrds_sync_nb import events
from wrds_sync_nb.errors import MassRemovalError
from wrds_sync_nb.layout import DataLayout
from wrds_sync_nb.manifest import ManifestManager


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

"""Parallel streams: partitions (and ranges of a partition) fetched at once within the session budget, the
files byte for byte what one stream writes."""
import importlib
import threading
from functools import partial

from synchelp import local_frame, manager

from wrds_sync_nb import events
from wrds_sync_nb.demo import DEMO_ROLE
from wrds_sync_nb.layout import DataLayout
from wrds_sync_nb.manifest import ManifestManager


def most_sessions(demo, run):
    """Run `run()` while polling the server; the most sessions of the demo account seen."""
    seen, stop = [0], threading.Event()

    def poll():
        while not stop.is_set():
            n = demo.execute("select count(*) from pg_stat_activity where usename = %s", (DEMO_ROLE,), database="postgres")[0][0]
            seen[0] = max(seen[0], n)
            stop.wait(0.02)

    t = threading.Thread(target=poll)
    t.start()
    try:
        run()
    finally:
        stop.set()
        t.join()
    return seen[0]


def test_split_and_parallel_partitions_write_the_same_bytes_as_one_stream(demo, tmp_path, monkeypatch):
    demo.build("streams", daily_rows=60_000, start_year=2024, end_year=2025)  # 2 years of about 115 PERMNOs
    sync_module = importlib.import_module("wrds_sync_nb.partition")  # where a partition is staged
    monkeypatch.setattr(sync_module, "SPLIT_MIN_ROWS", 1_000)  # a demo year is small: split it anyway
    digests, sessions = {}, {}
    for n in (1, 7):
        sm = manager(demo, "streams", tmp_path / f"c{n}", max_connections=n)
        sm.batch_rows = 5_000  # several row groups per file, so their boundaries matter
        sessions[n] = most_sessions(demo, partial(sm.full_sync, "crsp", 2024, 2025, tables=["daily", "monthly"]))
        sm.client.close()
        m = ManifestManager(DataLayout(tmp_path / f"c{n}")).load("crsp")
        digests[n] = {(t, k): e.sha256 for t, te in m.tables.items() for k, e in te.partitions.items()}
    assert digests[1] == digests[7] and len(digests[1]) == 4
    # one stream (a closing backend can linger a moment beside the next), against ranges of PERMNOs of both years at once
    assert sessions[1] <= 2 and sessions[7] >= 5, sessions
    for table, source in (("daily", "crsp.dsf_v2"), ("monthly", "crsp.msf_v2")):
        assert local_frame(tmp_path / "c7", "crsp", table).height == demo.row_counts("streams", [source])[source]


def test_a_datasets_tables_run_at_once(demo, wrds_db, tmp_path):
    """daily's first partition is held until monthly has started: in turn, monthly could never start, and it would time out."""
    monthly_started, held = threading.Event(), []

    def on_event(e):
        if e["event"] == events.TABLE_STARTED and e["table"] == "monthly":
            monthly_started.set()
        if e["event"] == events.PARTITION_STARTED and e["table"] == "daily" and not held:
            held.append(monthly_started.wait(timeout=30))

    sm = manager(demo, wrds_db, tmp_path)  # default budget: two partition streams, so two tables at once
    with events.listening(on_event):
        m = sm.full_sync("crsp", 2024, 2025, tables=["daily", "monthly"])
    sm.client.close()
    assert held and all(held) and sorted(m.tables) == ["daily", "monthly"]  # every held partition saw monthly start


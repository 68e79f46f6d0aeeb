"""Memory on one big TAQ day: a day table of 30,000,000 trades synced through the installed `wrds-sync`.

A full TAQ day is tens of millions of rows (WRDS.md). The demo's TAQ days are small, so this builds one big day
table, `taqm_2024.ctm_20240612` (TAQ's trade columns; rows stored by symbol and time, as on WRDS), in an embedded
PostgreSQL, adds it with `wrds-sync add 'taqm_{year}.ctm_{date:%Y%m%d}'`, then runs `wrds-sync full-sync` and
polls the command's resident memory every 50 ms. Prints the rows, seconds, rows/s, file size and peak RSS, for
the default batch (250,000 rows) and the default connections. Never asserted: these machines are noisy.

Usage: .venv/bin/python benchmarks/taq_day.py [--rows 30000000] [--keep]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from wrds_sync_nb.demo import DEMO_ROLE, DemoSource

BIN = Path(sys.executable).parent / "wrds-sync"
DAY = "2024-06-12"


def day_sql(rows: int) -> str:
    per = max(1, rows // 4000)  # 4,000 symbols, `per` trades each
    return f"""
        select date '{DAY}' as date, (time '09:30' + (e.j * 23400000000 / {per})::bigint * interval '1 microsecond')::time as time_m,
               0::smallint as time_m_nano, (array['N','P','Q','T','Z'])[1 + e.j % 5]::char(1) as ex,
               ('S' || lpad(s.i::text, 4, '0'))::varchar(6) as sym_root, null::varchar(6) as sym_suffix,
               '@'::varchar(4) as tr_scond, (100 * (1 + (s.i * e.j) % 10))::integer as size,
               (10 + (s.i % 400) + (e.j % 100) / 100.0)::float8 as price, 'N'::char(1) as tr_stopind, '00'::char(2) as tr_corr,
               (s.i::bigint * 1000000 + e.j)::bigint as tr_seqnum, e.j::varchar(10) as tr_id, 'C'::char(1) as tr_source
        from generate_series(1, 4000) s(i) cross join generate_series(1, {per}) e(j) order by 5, 2"""


def build(src: DemoSource, rows: int) -> int:
    src.build("wrds", daily_rows=2_000, start_year=2024, end_year=2024, tables=["ff.factors_daily"])
    for sql in ("create schema taqm_2024", f"create table taqm_2024.ctm_20240612 as {day_sql(rows)}",
                "comment on table taqm_2024.ctm_20240612 is 'Consolidated Trades 2024-06-12 created by WRDS (Updated 2024-06-13)'",
                "analyze taqm_2024.ctm_20240612", f"grant usage on schema taqm_2024 to {DEMO_ROLE}",
                f"grant select on taqm_2024.ctm_20240612 to {DEMO_ROLE}"):
        src.execute(sql)
    return int(src.execute("select count(*) from taqm_2024.ctm_20240612")[0][0])


def peak_rss_of(cmd: list[str], env: dict) -> tuple[int, float, subprocess.CompletedProcess]:
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, stop = [0], threading.Event()

    def poll():
        proc = psutil.Process(p.pid)
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], sum(x.memory_info().rss for x in [proc, *proc.children(recursive=True)]))
            except psutil.Error:
                pass
            stop.wait(0.05)

    t = threading.Thread(target=poll)
    t.start()
    t0 = time.perf_counter()
    out, err = p.communicate()
    secs = time.perf_counter() - t0
    stop.set()
    t.join()
    return peak[0], secs, subprocess.CompletedProcess(cmd, p.returncode, out, err)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=30_000_000)
    ap.add_argument("--keep", action="store_true", help="keep the server and data folders")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="taq-day-"))
    src = DemoSource(root / "pg").start()
    try:
        t0 = time.perf_counter()
        n = build(src, a.rows)
        print(f"built {n:,} trades of {DAY} in {time.perf_counter() - t0:.0f} s")
        env = {**os.environ, **src.environment("wrds")}
        data = root / "data"
        add = subprocess.run([str(BIN), "--data-dir", str(data), "add", "taqm_{year}.ctm_{date:%Y%m%d}", "--name", "taq_day"],
                             env=env, capture_output=True, text=True)
        assert add.returncode == 0, add.stderr
        peak, secs, r = peak_rss_of([str(BIN), "--data-dir", str(data), "full-sync", "--dataset", "taq_day",
                                     "--start-year", "2024", "--end-year", "2024"], env)
        assert r.returncode == 0, r.stderr
        size = sum(f.stat().st_size for f in (data / "versions").rglob("*.parquet"))
        print(f"| rows | seconds | rows/s | file | peak RSS |\n|---|---|---|---|---|\n"
              f"| {n:,} | {secs:.1f} | {n / secs:,.0f} | {size / 1e6:,.0f} MB | {peak / 1e6:,.0f} MB |")
    finally:
        if not a.keep:
            src.stop()
            subprocess.run(["rm", "-rf", str(root)], check=False)


if __name__ == "__main__":
    main()

"""Throughput and peak memory of full_sync against the official `wrds` package's path and the raw COPY ceiling.

Builds a CRSP-daily-shaped table (19 columns, 5M rows by default over two years, about 2.5M a year as in real
CRSP daily, indexed on (permno, dlycaldt) as on WRDS) in the embedded PostgreSQL, then runs, each in its own process so peak RSS is its own:

- `full_sync`: wrds_sync_nb's path (ADBC Arrow stream -> zstd Parquet, validation, checksums, fsyncs, manifest);
- `pandas`: `pandas.read_sql` per year then `DataFrame.to_parquet(zstd)`, what the `wrds` package users do;
- `copy`: `COPY (SELECT ...) TO STDOUT (FORMAT binary)` read and discarded, the ceiling of any client.

Prints rows/s and peak RSS of each, and the ratios the SyncManager issue sets targets for
(full_sync >= 5x pandas, >= 60% of COPY, peak RSS < 400 MB). Usage: python benchmarks/sync_throughput.py [ROWS]
[--profile=FILE] (FILE: py-spy's raw stacks of full_sync; the top functions are printed).
"""
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 5_000_000
PROFILE = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--profile=")), None)
YEARS = (2024, 2025)

CHILD = r'''
import json, resource, sys, time
from pathlib import Path
mode, root, db, out = sys.argv[1:5]
years = (2024, 2025)
from wrds_sync_nb.demo import DemoSource
src = DemoSource(root)
cfg = src.config(db)
t0 = time.perf_counter()
rows = 0
if mode == "full_sync":
    from wrds_sync_nb.client import WRDSClient
    from wrds_sync_nb.datasets import DatasetRegistry, DatasetSpec, TableSpec
    from wrds_sync_nb.sync import SyncManager
    spec = DatasetSpec(name="bench", tables=[TableSpec(name="daily", source="crsp.dsf_v2", partition_column="dlycaldt",
                                                       key_columns=["permno", "dlycaldt"])])
    t0 = time.perf_counter()
    m = SyncManager(WRDSClient(cfg), out, registry=DatasetRegistry([spec])).full_sync("bench", *years)
    rows = m.tables["daily"].rows
elif mode == "pandas":
    import pandas as pd, sqlalchemy as sa
    eng = sa.create_engine("postgresql+psycopg2://", connect_args={"host": cfg.host, "port": cfg.port, "user": cfg.username,
                                                                   "password": cfg.password.get_secret_value(), "dbname": cfg.database})
    t0 = time.perf_counter()
    for y in range(years[0], years[1] + 1):
        df = pd.read_sql(sa.text(f"select * from crsp.dsf_v2 where dlycaldt >= '{y}-01-01' and dlycaldt < '{y + 1}-01-01'"), eng)
        df.to_parquet(Path(out) / f"{y}.parquet", compression="zstd")
        rows += len(df)
        del df
elif mode == "copy":
    import psycopg2
    class Sink:
        n = 0
        def write(self, b): self.n += len(b)
    conn = psycopg2.connect(host=cfg.host, port=cfg.port, user=cfg.username, password=cfg.password.get_secret_value(), dbname=cfg.database)
    t0 = time.perf_counter()
    for y in range(years[0], years[1] + 1):
        with conn.cursor() as cur:
            cur.copy_expert(f"copy (select * from crsp.dsf_v2 where dlycaldt >= '{y}-01-01' and dlycaldt < '{y + 1}-01-01') "
                            "to stdout (format binary)", Sink())
            cur.execute(f"select count(*) from crsp.dsf_v2 where dlycaldt >= '{y}-01-01' and dlycaldt < '{y + 1}-01-01'")
            rows += cur.fetchone()[0]
secs = time.perf_counter() - t0
print(json.dumps({"mode": mode, "rows": rows, "seconds": secs, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def main():
    from wrds_sync_nb.demo import DemoSource
    root = Path(tempfile.mkdtemp(prefix="wrds-bench-"))
    src = DemoSource(root / "pg").start()
    t = time.perf_counter()
    counts = src.build("bench", daily_rows=ROWS, start_year=YEARS[0], end_year=YEARS[1], tables=["crsp.dsf_v2"])
    src.execute("create index on crsp_a_stock.dsf_v2 (permno, dlycaldt)", database="bench")  # crsp.dsf_v2 is a view over it
    src.execute("analyze crsp_a_stock.dsf_v2", database="bench")
    print(f"source: {counts['crsp.dsf_v2']:,} rows x 19 columns in crsp.dsf_v2 ({YEARS[0]}-{YEARS[1]}), "
          f"built in {time.perf_counter() - t:.1f}s")
    res = {}
    for mode in ("copy", "full_sync", "pandas", "copy"):
        out = Path(tempfile.mkdtemp(dir=root, prefix=mode))
        cmd = [sys.executable, "-c", CHILD, mode, str(src.root), "bench", str(out)]
        if PROFILE and mode == "full_sync":  # sampled by py-spy (pip install py-spy): where the client's time goes
            cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw", "--rate", "250", "--output", PROFILE, "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        got = json.loads(next(ln for ln in reversed(r.stdout.splitlines()) if ln.startswith("{")))
        if mode in res:  # COPY runs first and last: keep its best (warm cache both times)
            if got["seconds"] < res[mode]["seconds"]:
                res[mode] = got
        else:
            res[mode] = got
    print(f"{'path':<10} {'rows':>10} {'seconds':>8} {'rows/s':>12} {'peak RSS MB':>12}")
    for mode in ("full_sync", "pandas", "copy"):
        g = res[mode]
        print(f"{mode:<10} {g['rows']:>10,} {g['seconds']:>8.2f} {g['rows'] / g['seconds']:>12,.0f} {g['peak_rss_mb']:>12.0f}")
    rate = {m: res[m]["rows"] / res[m]["seconds"] for m in res}
    print(f"full_sync / pandas rows/s: {rate['full_sync'] / rate['pandas']:.1f}x (target >= 5x)")
    print(f"full_sync / COPY ceiling rows/s: {100 * rate['full_sync'] / rate['copy']:.0f}% (target >= 60%)")
    print(f"full_sync peak RSS: {res['full_sync']['peak_rss_mb']:.0f} MB (target < 400 MB)")
    src.stop()
    shutil.rmtree(root, ignore_errors=True)
    if PROFILE: print_profile(PROFILE)


def print_profile(path: str, top: int = 15) -> None:
    """The functions where full_sync's sampled stacks spend their time, own time and with what they call."""
    own, total, n = {}, {}, 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f.split(" (")[0] + " " + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] for f in stack.split(";")[1:]]
        c = int(count)
        n += c
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + c
        for f in set(frames):
            total[f] = total.get(f, 0) + c
    print(f"\npy-spy: {n} samples of full_sync's threads (idle waits excluded)")
    print(f"{'own %':>6} {'with callees %':>14}  function")
    for f, c in sorted(own.items(), key=lambda x: -x[1])[:top]:
        print(f"{100 * c / n:>6.1f} {100 * total[f] / n:>14.1f}  {f}")


if __name__ == "__main__":
    main()

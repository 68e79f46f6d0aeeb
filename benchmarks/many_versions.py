"""What `status`, `connect` and a commit cost as versions pile up: one table of P partitions, V versions.

    python benchmarks/many_versions.py [--partitions 10000] [--versions 1000]

Builds the table's files (tiny Parquet files, one per partition) and commits its manifest V times (each version
replaces one partition's file, as a nightly restatement would), then times, against the same measures after the
first version: a commit (`ManifestManager.save`), `status` (the status rows), `connect` (the DuckDB views) and
`history`. A ratio near 1 means the cost does not grow with the number of versions.
"""
import argparse
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from wrds_sync_nb.datasets import DatasetRegistry
from wrds_sync_nb.history import history_rows
from wrds_sync_nb.layout import DataLayout, sha256_file
from wrds_sync_nb.manifest import ManifestManager, PartitionEntry, SourceFingerprint, SyncManifest, TableEntry
from wrds_sync_nb.reader import connect
from wrds_sync_nb.status import status_rows


def partition(lay: DataLayout, key: str, value: int) -> PartitionEntry:
    "One day's file under its version name, and its entry"
    tmp = lay.staging_dir / "p.parquet"
    pq.write_table(pa.table({"date": [datetime.strptime(key, "%Y-%m-%d").date()], "v": [value]}), tmp)
    final = lay.version_path("bench", "daily", key, sha256_file(tmp))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(final)
    fp = SourceFingerprint(rows=1, min_date=key, max_date=key, digest=str(value))
    return PartitionEntry(path=lay.relative(final), rows=1, bytes=final.stat().st_size, sha256=sha256_file(final),
                          schema_fingerprint="f", synced_at=datetime.now(timezone.utc), source=fp)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measures(lay: DataLayout, mm: ManifestManager, m: SyncManifest) -> dict[str, float]:
    reg = DatasetRegistry.load()
    return {"commit": timed(lambda: mm.save(m.model_copy())), "status": timed(lambda: status_rows(lay, reg)),
            "connect": timed(lambda: connect(lay.root, ["bench"]).close()),
            "history": timed(lambda: history_rows(mm, "bench", None, True))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--partitions", type=int, default=10_000)
    ap.add_argument("--versions", type=int, default=1_000)
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp())
    try:
        lay = DataLayout(root / "data").ensure()
        mm = ManifestManager(lay)
        days = [d.isoformat() for d in (datetime(1990, 1, 1).date().fromordinal(730120 + i)
                                        for i in range(a.partitions))]
        parts = {k: partition(lay, k, 0) for k in days}
        m = mm.save(SyncManifest(dataset="bench", tables={"daily": TableEntry(source_table="x.daily",
                                                                              partitions=parts)}))
        first = measures(lay, mm, mm.load("bench"))
        t0 = time.perf_counter()
        for v in range(1, a.versions):
            m = mm.load("bench")
            key = days[v % len(days)]
            m.tables["daily"].partitions[key] = partition(lay, key, v)
            mm.save(m)
        built = time.perf_counter() - t0
        last = measures(lay, mm, mm.load("bench"))
        size = sum(p.stat().st_size for p in (lay.manifests_dir / "history" / "bench").iterdir())
        print(f"{a.partitions:,} partitions, {a.versions:,} versions ({built:.0f} s to build; manifests "
              f"{size / 1e9:.2f} GB, {size / a.versions / 1e6:.1f} MB a version)")
        for k in first:
            print(f"{k:8} after 1 version {first[k]:.3f} s, after {a.versions:,}: {last[k]:.3f} s "
                  f"(x{last[k] / first[k]:.2f})")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

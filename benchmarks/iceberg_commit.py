"""What the Iceberg commit adds to a sync: time and bytes per version, for a table of P partitions.

    python benchmarks/iceberg_commit.py [--partitions 1000] [--versions 10] [--rows 200]

Builds one table of P day partitions (small Parquet files with field IDs, as the sync writes them) and commits
it as version 1, then V-1 versions that each replace one day and add one (a nightly restatement and a new
trading day). For each version it times our own commit (the manifest version and the `wrds/` views, the
reference) and the Iceberg publication (`iceberg.publish`: manifests, manifest list, metadata file, catalog),
and the bytes the publication adds under `iceberg/`. Printed: the first version (every file registered) and
the median of the later ones, as seconds, ratio to our commit, and bytes; then the same per 1,000 partitions.
"""
import argparse
import statistics
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from wrds_sync_nb.iceberg import field_ids, publish, with_field_ids
from wrds_sync_nb.layout import DataLayout, sha256_file
from wrds_sync_nb.manifest import ManifestManager, PartitionEntry, SourceFingerprint, SyncManifest, TableEntry
from wrds_sync_nb.schema import DatasetSchema, SchemaRegistry
from wrds_sync_nb.versions import refresh_views

SCHEMA = pa.schema([("permno", pa.int32()), ("date", pa.date32()), ("prc", pa.float64()),
                    ("ret", pa.float64()), ("vol", pa.float64()), ("cap", pa.decimal128(20, 4))])


def day_file(lay: DataLayout, schema: pa.Schema, day: date, rows: int, salt: float) -> PartitionEntry:
    "One day's file under its version name, and its entry"
    t = pa.table({"permno": pa.array(range(10000, 10000 + rows), pa.int32()), "date": [day] * rows,
                  "prc": [float(i) * salt for i in range(rows)], "ret": [0.001 * i for i in range(rows)],
                  "vol": [1e5] * rows, "cap": pa.array([None] * rows, pa.decimal128(20, 4))}, schema=schema)
    tmp = lay.staging_dir / "p.parquet"
    pq.write_table(t, tmp, compression="zstd")
    final = lay.version_path("bench", "daily", day.isoformat(), sha256_file(tmp))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(final)
    fp = SourceFingerprint(rows=rows, min_date=day.isoformat(), max_date=day.isoformat(), digest=str(salt))
    return PartitionEntry(path=lay.relative(final), rows=rows, bytes=final.stat().st_size,
                          sha256=sha256_file(final), schema_fingerprint="f", synced_at=datetime.now(timezone.utc),
                          source=fp)


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--partitions", type=int, default=1000)
    ap.add_argument("--versions", type=int, default=10)
    ap.add_argument("--rows", type=int, default=200)
    a = ap.parse_args()
    lay = DataLayout(Path(tempfile.mkdtemp(prefix="iceberg-bench-"))).ensure()
    SchemaRegistry(lay).register_schema("bench", "daily", DatasetSchema.from_arrow(SCHEMA))
    schema = with_field_ids(SCHEMA, field_ids(SchemaRegistry(lay).history("bench", "daily")))
    days = [date(2020, 1, 1) + timedelta(days=i) for i in range(a.partitions + a.versions)]
    parts = {d.isoformat(): day_file(lay, schema, d, a.rows, 1.0) for d in days[:a.partitions]}
    mm, rows = ManifestManager(lay), []
    m = SyncManifest(dataset="bench")
    for v in range(1, a.versions + 1):
        if v > 1:  # a restated day, and a new one
            old = days[(v * 37) % a.partitions]
            parts[old.isoformat()] = day_file(lay, schema, old, a.rows, 1.0 + v)
            new = days[a.partitions + v - 1]
            parts[new.isoformat()] = day_file(lay, schema, new, a.rows, 1.0)
        m.tables["daily"] = TableEntry(source_table="bench.daily", partition_column="date", partitions=dict(parts))
        t0 = time.perf_counter()
        m = mm.save(m)
        refresh_views(lay, m)
        ours = time.perf_counter() - t0
        size = tree_bytes(lay.iceberg_dir)
        t0 = time.perf_counter()
        publish(lay, "bench")
        ice = time.perf_counter() - t0
        rows.append((v, ours, ice, tree_bytes(lay.iceberg_dir) - size))
    per = 1000 / a.partitions
    first, later = rows[0], rows[1:]
    print(f"table of {a.partitions} day partitions ({a.rows} rows each), {a.versions} versions")
    print(f"{'version':>8} {'our commit s':>13} {'iceberg s':>10} {'ratio':>6} {'iceberg bytes':>14}")
    for v, ours, ice, b in rows:
        print(f"{v:>8} {ours:>13.3f} {ice:>10.3f} {ice / ours:>6.1f} {b:>14,}")
    med = lambda i: statistics.median(r[i] for r in later) if later else float("nan")
    print(f"first version (all {a.partitions} files registered): {first[2]:.3f} s, {first[3]:,} bytes; "
          f"per 1,000 partitions {first[2] * per:.3f} s, {first[3] * per:,.0f} bytes")
    print(f"later versions (1 replaced, 1 added), median: {med(2):.3f} s ({med(2) / med(1):.1f}x our commit), "
          f"{med(3):,.0f} bytes; per 1,000 partitions {med(2) * per:.3f} s, {med(3) * per:,.0f} bytes")


if __name__ == "__main__":
    main()

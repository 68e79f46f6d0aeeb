"""Helpers for sync tests: compare a synced table with its source, list published files."""
import hashlib
import re
from pathlib import Path

import polars as pl

from wrds_sync_nb.client import WRDSClient
from wrds_sync_nb.datasets import DatasetRegistry
from wrds_sync_nb.periods import source_patterns
from wrds_sync_nb.pgtypes import qualified
from wrds_sync_nb.queries import select_list, where_sql
from wrds_sync_nb.sync import SyncManager

NUMERIC = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt32, pl.UInt64, pl.Float32, pl.Float64)


def normalise(df: pl.DataFrame) -> pl.DataFrame:
    """Same logical values, same dtypes, whatever the driver: ints -> Int64, floats -> Float64, text -> String."""
    out = []
    for name, dt in df.schema.items():
        c = pl.col(name)
        if dt.is_integer():
            out.append(c.cast(pl.Int64))
        elif dt.is_float() or isinstance(dt, pl.Decimal):
            out.append(c.cast(pl.Float64))
        elif dt == pl.Null:
            out.append(c.cast(pl.String))
        else:
            out.append(c)
    return df.select(out)


def aggregates(df: pl.DataFrame) -> dict:
    """Per column: count of NULLs, min, max, and for numbers the sum (to 12 digits: float summation order varies)."""
    res = {}
    for name, dt in df.schema.items():
        s = df[name]
        res[name] = {"nulls": s.null_count(), "min": s.min(), "max": s.max()}
        if dt in NUMERIC:
            res[name]["sum"] = float(f"{float(s.sum()):.12g}")  # 12 significant digits: summation order varies
    return res


def row_hash(df: pl.DataFrame) -> int:
    """An order-independent hash of all rows (values compared as text, so driver dtypes do not matter)."""
    if not df.height:
        return 0
    text = df.select(pl.all().cast(pl.String))
    return int(text.hash_rows(seed=1).cast(pl.UInt64).sum())


def source_frame(demo, database: str, dataset: str, table: str, years: range | None) -> pl.DataFrame:
    """The source rows a sync of `table` should produce, read with psycopg2 (an independent path)."""
    t = DatasetRegistry.load().get(dataset).table(table)
    cols = [r[0] for r in demo.execute("select attname from pg_attribute where attrelid = %s::regclass and attnum > 0 "
                                       "and not attisdropped order by attnum", (t.source,), database)]
    w, p = where_sql(t, years if t.partitioned else None)
    conn = demo.connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute(f'select {select_list(t, cols)} from {qualified(*t.source.split("."))}{w}', p)
            rows = cur.fetchall()
            names = [d[0] for d in cur.description]
    finally:
        conn.close()
    return pl.DataFrame(rows, schema=names, orient="row", infer_schema_length=None)


def templated_source_frame(demo, database: str, dataset: str, table: str, years: range) -> pl.DataFrame:
    """The rows of every WRDS table of a templated source in `years`, listed from pg_class and read with psycopg2
    (older tables' missing columns as nulls, as the sync writes them)."""
    t = DatasetRegistry.load().get(dataset).table(table)
    schema_re, table_re = source_patterns(t.template)
    names = [f"{s}.{n}" for s, n in demo.execute("select n.nspname, c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace "
                                                 "where n.nspname ~ %s and c.relname ~ %s and c.relkind in ('r', 'v')", (schema_re, table_re), database)]
    names = [n for n in names if int(re.search(r"\d{4}", n).group()) in years]  # the first year a name writes
    frames = []
    for name in sorted(names):
        cols = [r[0] for r in demo.execute("select attname from pg_attribute where attrelid = %s::regclass and attnum > 0 "
                                           "and not attisdropped order by attnum", (name,), database)]
        w, p = where_sql(t, None)
        rows = demo.execute(f'select {select_list(t, cols)} from {name}{w}', p, database)
        frames.append(pl.DataFrame(rows, schema=cols, orient="row", infer_schema_length=None))
    return pl.concat(frames, how="diagonal_relaxed")


def local_frame(data_dir: Path, dataset: str, table: str) -> pl.DataFrame:
    files = sorted((Path(data_dir) / "wrds" / dataset / table).rglob("*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed") if files else pl.DataFrame()


def assert_equal_to_source(demo, database, data_dir, dataset, years):
    for t in DatasetRegistry.load().get(dataset).tables:
        src = templated_source_frame(demo, database, dataset, t.name, years) if t.templated \
            else source_frame(demo, database, dataset, t.name, years)
        src, loc = normalise(src), normalise(local_frame(data_dir, dataset, t.name))
        assert loc.height == src.height, (t.name, loc.height, src.height)
        if t.templated:  # an older table's missing column comes last in the union of the sources
            assert sorted(loc.columns) == sorted(src.columns), (t.name, loc.columns, src.columns)
            loc = loc.select(src.columns)
        assert loc.columns == src.columns, (t.name, loc.columns, src.columns)
        assert aggregates(loc) == aggregates(src), t.name
        assert row_hash(loc) == row_hash(src), t.name


def file_digests(data_dir: Path) -> dict[str, tuple[str, int]]:
    """Every published file (the versions and their views): sha256 and mtime_ns."""
    out = {}
    for f in sorted([*(Path(data_dir) / "wrds").rglob("*"), *(Path(data_dir) / "versions").rglob("*")]):
        if f.is_file():
            out[f.relative_to(data_dir).as_posix()] = (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
    return out


def manager(demo, database, data_dir, **cfg) -> SyncManager:
    return SyncManager(WRDSClient(demo.config(database, **cfg)), data_dir)

"""How to lay out one file per trading day: flat, year folders, or Hive-style `year=YYYY/` folders.

Writes the same TAQ-shaped trades (a file per trading day, sorted by symbol and time, zstd, row groups of
250,000 as the sync writes them) in each layout, plus the same rows as one file per year for reference, then
times the queries researchers run over a year of day files with DuckDB and polars, each the median of
--repeat runs in this process:

  year      every row of the year: trades and volume per symbol
  month     one month, filtered on the date column
  day       one day, filtered on the date column
  symbol    one symbol over the year
  list      the `day` query over a view of the explicit file list (what `wrds_sync_nb.connect` builds)

Run: .venv/bin/python benchmarks/day_layout.py [--years 2] [--rows-per-day 40000] [--repeat 5]
"""
import argparse
import statistics
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

SYMBOLS = [f"S{i:04d}" for i in range(2000)]


def trading_days(years):
    d, out = date(years[0], 1, 1), []
    while d.year <= years[-1]:
        if d.weekday() < 5 and not (d.month == 7 and d.day == 4) and not (d.month == 12 and d.day == 25):
            out.append(d)
        d += timedelta(days=1)
    return out


def day_table(day, rows, rng):
    sym = np.sort(rng.choice(len(SYMBOLS), rows, p=_weights()))
    t = pa.table({
        "date": pa.array([day] * rows, pa.date32()),
        "time_m": pa.array(np.sort(rng.integers(34_200_000_000, 57_600_000_000, rows)), pa.time64("us")),
        "ex": pa.array(rng.choice(list("NPQTZKD"), rows)),
        "sym_root": pa.array([SYMBOLS[i] for i in sym]),
        "size": pa.array(rng.integers(1, 1000, rows), pa.int32()),
        "price": pa.array(np.round(rng.uniform(5, 500, rows), 4)),
        "tr_corr": pa.array(["00"] * rows),
        "tr_seqnum": pa.array(np.arange(rows, dtype=np.int64)),
    })
    return t.sort_by([("sym_root", "ascending"), ("time_m", "ascending")])


_W = None


def _weights():
    global _W
    if _W is None:
        w = 1.0 / np.arange(1, len(SYMBOLS) + 1)  # a few symbols trade most, as on TAQ
        _W = w / w.sum()
    return _W


def write(table, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", row_group_size=250_000,
                   use_dictionary=["ex", "sym_root", "tr_corr"], write_statistics=True)


def build(root, years, rows):
    rng = np.random.default_rng(7)
    layouts = {"flat": root / "flat", "year folders": root / "nested", "hive year=": root / "hive", "one file a year": root / "year"}
    by_year = {}
    for d in trading_days(years):
        t = day_table(d, rows, rng)
        key = d.isoformat()
        write(t, layouts["flat"] / f"{key}.parquet")
        write(t, layouts["year folders"] / str(d.year) / f"{key}.parquet")
        write(t, layouts["hive year="] / f"year={d.year}" / f"{key}.parquet")
        by_year.setdefault(d.year, []).append(t)
    for y, ts in by_year.items():
        write(pa.concat_tables(ts), layouts["one file a year"] / f"{y}.parquet")
    return layouts


def globs(layouts):
    return {"flat": str(layouts["flat"] / "*.parquet"), "year folders": str(layouts["year folders"] / "*" / "*.parquet"),
            "hive year=": str(layouts["hive year="] / "*" / "*.parquet"), "one file a year": str(layouts["one file a year"] / "*.parquet")}


def queries(year):
    mid = date(year, 6, 12)
    while mid.weekday() >= 5:
        mid += timedelta(days=1)
    return {"year": f"select sym_root, count(*), sum(size) from T where date >= '{year}-01-01' and date < '{year + 1}-01-01' group by 1",
            "month": f"select count(*), avg(price) from T where date >= '{year}-06-01' and date < '{year}-07-01'",
            "day": f"select count(*), avg(price) from T where date = '{mid}'",
            "symbol": f"select count(*), avg(price) from T where sym_root = 'S0003' and date >= '{year}-01-01' and date < '{year + 1}-01-01'"}


def median_seconds(fn, repeat):
    fn()  # warm the page cache and DuckDB's metadata cache alike for every layout
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def duckdb_times(layouts, year, repeat):
    con, paths = duckdb.connect(), globs(layouts)
    out = {}
    for name, pattern in paths.items():
        row = {}
        for q, sql in queries(year).items():
            text = sql.replace("T", f"read_parquet('{pattern}')", 1)
            row[q] = median_seconds(lambda text=text: con.execute(text).fetchall(), repeat)
        files = sorted(layouts[name].rglob("*.parquet"))
        listing = ", ".join(f"'{f}'" for f in files)
        con.execute(f"create or replace view v as select * from read_parquet([{listing}], union_by_name = true)")
        row["list"] = median_seconds(lambda: con.execute(queries(year)["day"].replace("T", "v", 1)).fetchall(), repeat)
        out[name] = row
    return out


def polars_times(paths, year, repeat):
    out = {}
    for name, pattern in paths.items():
        row = {}
        for q in ("year", "month", "day", "symbol"):
            lo, hi = date(year, 1, 1), date(year + 1, 1, 1)
            if q == "month":
                lo, hi = date(year, 6, 1), date(year, 7, 1)
            if q == "day":
                lo = date(year, 6, 12)
                while lo.weekday() >= 5:
                    lo += timedelta(days=1)
                hi = lo + timedelta(days=1)
            def run(lo=lo, hi=hi, q=q, pattern=pattern):
                lf = pl.scan_parquet(pattern, hive_partitioning=False).filter(pl.col("date") >= lo, pl.col("date") < hi)
                if q == "symbol":
                    lf = lf.filter(pl.col("sym_root") == "S0003")
                return lf.select(pl.len(), pl.col("price").mean()).collect()
            row[q] = median_seconds(run, repeat)
        out[name] = row
    return out


def table(title, times):
    cols = list(next(iter(times.values())))
    print(f"\n{title} (median seconds)")
    print("| layout | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, row in times.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--years", type=int, default=2)
    ap.add_argument("--rows-per-day", type=int, default=40_000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    years = list(range(2024 - a.years + 1, 2025))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        layouts = build(Path(tmp), years, a.rows_per_day)
        n = len(trading_days(years))
        print(f"{n} day files ({a.rows_per_day:,} rows each, {n * a.rows_per_day:,} rows) over {years[0]}-{years[-1]}, "
              f"written in {time.perf_counter() - t0:.1f} s; queries over {years[-1]}")
        paths = globs(layouts)
        table("DuckDB, a glob of the layout", duckdb_times(layouts, years[-1], a.repeat))
        con, day = duckdb.connect(), queries(years[-1])["day"].split("where ")[1]
        glob = globs(layouts)["hive year="]
        pruned = median_seconds(lambda: con.execute(f"select count(*) from read_parquet('{glob}') where year = {years[-1]} and {day}").fetchall(), a.repeat)
        print(f"\nDuckDB, hive year= layout, the day query also filtered on year (other years' folders skipped): {pruned:.3f}")
        table("polars scan_parquet, a glob of the layout", polars_times(paths, years[-1], a.repeat))


if __name__ == "__main__":
    main()

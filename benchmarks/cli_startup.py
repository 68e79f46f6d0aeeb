"""How fast the `wrds-sync` command starts for commands that read no data, against importing the whole library.

    python benchmarks/cli_startup.py [--runs 5]

Prints, for `--help`, `status` and `lock-status` on a small synced data dir: the median wall time and peak
memory of the command, and the same for `python -c "import wrds_sync_nb.api, wrds_sync_nb.sync"` (everything a
sync loads: polars, pyarrow, DuckDB, pandas) measured in the same run, and their ratio.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent / "wrds-sync"


def measure(cmd: list[str], env: dict[str, str], runs: int) -> tuple[float, int]:
    "Median seconds and peak KB of `cmd` (GNU time)"
    out = []
    for _ in range(runs):
        r = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], env=env, capture_output=True, text=True)
        secs, kb = r.stderr.strip().splitlines()[-1].split()
        out.append((float(secs), int(kb)))
    return statistics.median(s for s, _ in out), int(statistics.median(k for _, k in out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    runs = ap.parse_args().runs
    from wrds_sync_nb.demo import DemoSource
    src = DemoSource(tempfile.mkdtemp()).start()
    try:
        src.build("wrds", daily_rows=1_000, start_year=2025, end_year=2025)
        env = {**os.environ, **src.environment(), "WRDS_SYNC_DATA_DIR": str(Path(tempfile.mkdtemp()) / "d")}
        subprocess.run([str(BIN), "full-sync", "--dataset", "fama_french"], env=env, check=True, capture_output=True)
        ref_s, ref_kb = measure([sys.executable, "-c", "import wrds_sync_nb.api, wrds_sync_nb.sync"], env, runs)
        print(f"reference (import the whole library): {ref_s:.2f} s, {ref_kb / 1024:.0f} MB")
        for args in (["--help"], ["status"], ["lock-status"]):
            s, kb = measure([str(BIN), *args], env, runs)
            print(f"wrds-sync {' '.join(args):12} {s:.2f} s ({s / ref_s:.0%} of the reference), "
                  f"{kb / 1024:.0f} MB ({kb / ref_kb:.0%})")
    finally:
        src.stop()


if __name__ == "__main__":
    main()

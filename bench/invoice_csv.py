"""Benchmark the invoice CSV summariser: speed against a bare csv.reader, and peak memory."""

# Run from the repository root: .venv/bin/python bench/invoice_csv.py [--rows N]
#
# It writes the sandbox's huge invoice (the latest closed invoice of the huge org, 200,000
# line items, or the first N) to a temporary file, and a ten-times file (the data rows
# repeated under one header), then measures in the same run:
#
# - time: ``for row in csv.reader(f): pass`` over the file (the floor any CSV pass pays) and
#   ``summarise_invoice_csv_file``; best of 5 each, alternating, so a busy moment of a shared
#   machine hits both alike. Target: the summariser within 2.0x of the bare reader.
# - memory: each run in a fresh interpreter, its peak RSS (``ru_maxrss``) after the run: the
#   bare reader, the summariser's imports alone, the summariser on the file and on the
#   ten-times file. Targets: peak < 150 MB, growth 1x → 10x < 20 MB (rows are never kept).
#
# It prints PASS/FAIL per target and exits 0 either way: CI does not run it, people do.

from __future__ import annotations

import argparse
import csv
import gc
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.atlas.invoice_csv import summarise_invoice_csv_file  # noqa: E402
from bot.sandbox.data import HUGE_LINE_ITEMS, SandboxData  # noqa: E402

REPEATS = 5
GROWTH_FACTOR = 10
TARGET_RATIO = 2.0
TARGET_PEAK_MB = 150.0
TARGET_GROWTH_MB = 20.0
# The sandbox's data depends on "today"; a fixed day makes every run bench the same bytes.
TODAY = date(2026, 11, 23)

# Each memory probe runs one of these in a fresh interpreter and prints its peak RSS.
_PEAK = (
    "import resource, sys\n"
    "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    # Linux reports KiB, macOS bytes.
    "print(peak / 1024 if sys.platform != 'darwin' else peak / 1024 / 1024)\n"
)
PROBES = {
    "csv.reader only": (
        "import csv, sys\n"
        "with open(sys.argv[1], encoding='utf-8-sig', newline='') as f:\n"
        "    for row in csv.reader(f):\n"
        "        pass\n"
    ),
    "summariser imports only": "import bot.atlas.invoice_csv\n",
    "summariser": (
        "import sys\n"
        "from bot.atlas.invoice_csv import summarise_invoice_csv_file\n"
        "summary = summarise_invoice_csv_file(sys.argv[1])\n"
        "print(summary.row_count)\n"
    ),
}


def write_invoice_csv(path: Path, rows: int) -> int:
    """The huge org's latest invoice CSV, cut to ``rows`` line items; returns its total cents."""
    data = SandboxData(seed=1, today=TODAY)
    org = data.org(data.huge_org_id)
    assert org is not None
    invoice = org.latest_closed
    header_lines = None
    written = 0
    with path.open("w", encoding="utf-8", newline="") as out:
        for chunk in invoice.csv_chunks():
            lines = chunk.splitlines(keepends=True)
            if header_lines is None:
                # The key/value block, a blank line and the column names come first.
                header_lines = next(i for i, line in enumerate(lines) if line.startswith("Date,"))
                out.writelines(lines[: header_lines + 1])
                lines = lines[header_lines + 1 :]
            take = lines[: rows - written]
            out.writelines(take)
            written += len(take)
            if written == rows:
                break
    return sum(item.total_cents for item in islice(invoice.line_items(), rows))


def write_repeated(source: Path, target: Path, times: int) -> None:
    """``source``'s header once, then its data rows ``times`` over, streamed file to file."""
    with source.open("rb") as f, target.open("wb") as out:
        while True:
            line = f.readline()
            out.write(line)
            if line.startswith(b"Date,") or not line:
                break
        data_start = f.tell()
        for _ in range(times):
            f.seek(data_start)
            shutil.copyfileobj(f, out, 1 << 20)


def bare_reader(path: Path) -> None:
    with path.open(encoding="utf-8-sig", newline="") as f:
        for _row in csv.reader(f):
            pass


def best_times(path: Path) -> tuple[float, float]:
    """Best of ``REPEATS`` for the bare reader and the summariser, runs alternating."""
    reader_best = summary_best = float("inf")
    for _ in range(REPEATS):
        gc.collect()
        started = time.perf_counter()
        bare_reader(path)
        reader_best = min(reader_best, time.perf_counter() - started)
        gc.collect()
        started = time.perf_counter()
        summarise_invoice_csv_file(path)
        summary_best = min(summary_best, time.perf_counter() - started)
    return reader_best, summary_best


def peak_mb(probe: str, path: Path) -> tuple[float, list[str]]:
    """The probe's peak RSS in MB, and whatever else it printed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # Through sh, which forks: Linux carries a process's peak RSS across exec, and Python
    # starts children with vfork, so a child exec'd straight from this process would report
    # at least this process's own peak (tens of MB of sandbox data) instead of its own.
    python = [sys.executable, "-c", PROBES[probe] + _PEAK, str(path)]
    done = subprocess.run(
        ["/bin/sh", "-c", '"$@"; exit "$?"', "sh", *python],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    *printed, peak = done.stdout.split()
    return float(peak), printed


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--rows",
        type=int,
        default=HUGE_LINE_ITEMS,
        help=f"line items in the file (1..{HUGE_LINE_ITEMS:,}; default all)",
    )
    args = parser.parse_args()
    if not 1 <= args.rows <= HUGE_LINE_ITEMS:
        parser.error(f"--rows must be between 1 and {HUGE_LINE_ITEMS:,}")
    rows, big_rows = args.rows, args.rows * GROWTH_FACTOR

    print(
        f"Python {platform.python_version()} on {platform.system()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start"
    )
    with tempfile.TemporaryDirectory(prefix="bench-invoice-csv-") as tmp:
        small, big = Path(tmp) / "invoice.csv", Path(tmp) / f"invoice-x{GROWTH_FACTOR}.csv"
        started = time.perf_counter()
        expected_cents = write_invoice_csv(small, rows)
        write_repeated(small, big, GROWTH_FACTOR)
        print(
            f"files: {rows:,} rows ({small.stat().st_size / 1e6:.1f} MB) and "
            f"{big_rows:,} rows ({big.stat().st_size / 1e6:.1f} MB), "
            f"written in {time.perf_counter() - started:.1f} s"
        )

        summary = summarise_invoice_csv_file(small)
        correct = summary.row_count == rows and summary.total_cents == expected_cents
        print(
            f"check: {summary.row_count:,} rows, total {summary.total_cents:,} cents "
            f"(expected {rows:,} rows, {expected_cents:,} cents)"
        )

        reader_s, summary_s = best_times(small)
        ratio = summary_s / reader_s
        print(f"\nspeed, best of {REPEATS} (alternating), {rows:,} rows:")
        print(f"  csv.reader only      {reader_s * 1000:8.0f} ms  {rows / reader_s:>12,.0f} rows/s")
        print(
            f"  summariser           {summary_s * 1000:8.0f} ms  {rows / summary_s:>12,.0f} rows/s"
        )
        print(f"  ratio                {ratio:8.2f}x")

        print("\npeak RSS, each in a fresh interpreter:")
        peaks = {
            f"csv.reader only, {rows:,} rows": peak_mb("csv.reader only", small)[0],
            "summariser imports only": peak_mb("summariser imports only", small)[0],
        }
        small_peak, small_printed = peak_mb("summariser", small)
        big_peak, big_printed = peak_mb("summariser", big)
        peaks[f"summariser, {rows:,} rows"] = small_peak
        peaks[f"summariser, {big_rows:,} rows"] = big_peak
        correct = correct and small_printed == [str(rows)] and big_printed == [str(big_rows)]
        for label, mb in peaks.items():
            print(f"  {label:<32} {mb:7.1f} MB")
        growth = big_peak - small_peak
        label = f"growth {rows:,} → {big_rows:,} rows"
        print(f"  {label:<32} {growth:+7.1f} MB")
    print(f"load average {os.getloadavg()[0]:.2f} at end")

    peak = max(small_peak, big_peak)
    print()
    print(f"{verdict(correct)}  summaries match the files (rows, total)")
    print(
        f"{verdict(ratio <= TARGET_RATIO)}  speed: {ratio:.2f}x csv.reader (target ≤ {TARGET_RATIO}x)"
    )
    print(
        f"{verdict(peak < TARGET_PEAK_MB)}  peak memory: {peak:.1f} MB (target < {TARGET_PEAK_MB:.0f} MB)"
    )
    print(
        f"{verdict(growth < TARGET_GROWTH_MB)}  memory growth x{GROWTH_FACTOR}: {growth:+.1f} MB "
        f"(target < {TARGET_GROWTH_MB:.0f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the bench parts beside bench.py share: running a command, logging, and their command line
(``run --size full|smoke --out DIR`` and ``check DIR``)."""

import argparse
import os
import re
import subprocess
import time


def run(argv, check=True, timeout=3600):
    """Run ``argv``; a non-zero exit raises with the ends of its output when ``check``."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result


def pgbench_summary(stdout):
    """A pgbench report's tps without the initial connection time and its failed transactions (None when absent)."""
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", stdout)
    failed = re.search(r"number of failed transactions: (\d+)", stdout)
    return (float(tps.group(1)) if tps else None), (int(failed.group(1)) if failed else None)


def logger(name):
    """A log function whose lines start with the part's name and the time."""
    def log(message):
        print(f"[{name} {time.strftime('%H:%M:%S')}] {message}", flush=True)
    return log


def main(doc, sizes, measure, check):
    """The part's command line: ``measure(size, out)`` for run, ``check(out)`` (an exit code) for check."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run")
    run_parser.add_argument("--size", choices=sorted(sizes), default="full")
    run_parser.add_argument("--out", required=True)
    sub.add_parser("check").add_argument("out")
    args = parser.parse_args()
    if args.command == "check":
        return check(args.out)
    os.makedirs(args.out, exist_ok=True)
    measure(sizes[args.size], args.out)
    return 0

"""Run the benchmark suite: ``python -m benchmarks [--quick] [--only NAME ...]``.

Prints one table per workload and writes ``<out>/<workload>.json`` plus ``<out>/suite.json``
(figures, goals, parameters, versions). ``--plots DIR`` also draws PNG plots (matplotlib).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from ._common import WorkloadResult, format_result, to_json, versions

WORKLOADS = (
    "request_path",
    "write_amplification",
    "flush_latency",
    "recovery_memory",
    "scale",
    "durable_creates",
    "owner_check",
    "server_load",
    "redis_store",
)


def _runner(name: str) -> Callable[[bool], WorkloadResult]:
    import importlib

    module = importlib.import_module(f"benchmarks.{name}")
    run: Callable[[bool], WorkloadResult] = module.run
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes and short rounds (CI: checks they run)"
    )
    parser.add_argument("--only", nargs="+", choices=WORKLOADS, help="run only these workloads")
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results"), help="folder for the JSON files"
    )
    parser.add_argument("--plots", type=Path, help="draw PNG plots into this folder")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    info = versions()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    suite: dict[str, object] = {"versions": info, "quick": args.quick, "workloads": {}}
    for name in args.only or WORKLOADS:
        t0 = time.perf_counter()
        result = _runner(name)(args.quick)
        took = time.perf_counter() - t0
        print()
        print(format_result(result))
        print(f"   ({name} took {took:.1f} s)", flush=True)
        encoded = to_json(result)
        (args.out / f"{name}.json").write_bytes(encoded)
        suite["workloads"][name] = msgspec.json.decode(encoded)  # type: ignore[index]
    (args.out / "suite.json").write_bytes(msgspec.json.format(msgspec.json.encode(suite)))
    print(f"\nJSON written to {args.out}/", flush=True)
    if args.plots:
        from .plots import draw

        for path in draw(args.out, args.plots):
            print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

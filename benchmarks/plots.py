"""PNG plots from the suite's JSON files (matplotlib, from the ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from ._common import optional_module


def _load(folder: Path, name: str) -> Any:
    path = folder / f"{name}.json"
    return msgspec.json.decode(path.read_bytes()) if path.exists() else None


def draw(results: Path, out: Path) -> list[Path]:
    """Draw what the JSON files in *results* allow; return the PNG paths written."""
    matplotlib = optional_module("matplotlib")
    if matplotlib is None:
        print("plots skipped: matplotlib is not installed (pip install -e '.[bench]')")
        return []
    matplotlib.use("Agg")
    plt = optional_module("matplotlib.pyplot")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    request = _load(results, "request_path")
    if request is not None:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, by_tasks in request["data"]["results"].items():
            tasks = sorted(by_tasks, key=int)
            ax.plot(
                [int(t) for t in tasks],
                [by_tasks[t]["ops_per_s"] for t in tasks],
                marker="o",
                label=name,
                linewidth=2.5 if name == "engine" else 1.2,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("concurrent client tasks")
        ax.set_ylabel("get-and-touch per second (median round)")
        ax.set_title("Workload 1: per-request path")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / "bench_request_path.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    scale = _load(results, "scale")
    if scale is not None:
        sizes = sorted(scale["data"], key=int)
        fig, ax1 = plt.subplots(figsize=(7, 4))
        ax1.plot(
            [int(n) for n in sizes],
            [scale["data"][n]["ops_per_s"] for n in sizes],
            marker="o",
            color="tab:blue",
            label="get-and-touch/s (100 tasks)",
        )
        ax1.set_xscale("log")
        ax1.set_xlabel("live sessions")
        ax1.set_ylabel("get-and-touch per second", color="tab:blue")
        ax1.set_ylim(bottom=0)
        ax2 = ax1.twinx()
        ax2.plot(
            [int(n) for n in sizes],
            [scale["data"][n]["sweep_us_per_session"] for n in sizes],
            marker="s",
            color="tab:red",
            label="sweep us per expired session",
        )
        ax2.set_ylabel("expiry sweep, us per expired session", color="tab:red")
        ax2.set_ylim(bottom=0)
        ax1.set_title("Workload 5: scale")
        ax1.grid(True, alpha=0.3)
        fig.tight_layout()
        path = out / "bench_scale.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written

"""Plots for the benchmark reports (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_crypto(report: dict, out: Path) -> None:
    """Left: ABE time vs attributes with bounds (dashed). Right: KAC ops vs their bounds."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for op in ("keygen", "encrypt", "decrypt"):
        rows = [r for r in report["abe"] if r["op"] == op]
        xs = [r["attrs"] for r in rows]
        line = left.plot(xs, [r["ms"] for r in rows], marker="o", label=op)[0]
        left.plot(
            xs,
            [r["bound_ms"] for r in rows],
            linestyle="--",
            color=line.get_color(),
            label=f"{op} bound",
        )
    left.set_xlabel("attributes in key / policy")
    left.set_ylabel("ms")
    left.set_title(f"CP-ABE on {report['backend']}")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    labels = [f"{r['op']} {r.get('set_size', r.get('classes'))}" for r in report["kac"]]
    xs = range(len(labels))
    right.bar([x - 0.2 for x in xs], [r["ms"] for r in report["kac"]], 0.4, label="KAC")
    right.bar([x + 0.2 for x in xs], [r["bound_ms"] for r in report["kac"]], 0.4, label="bound")
    right.set_xticks(list(xs), labels, rotation=30, fontsize=8)
    right.set_yscale("log")
    right.set_ylabel("ms (log)")
    right.set_title("KAC (setup: n classes; others: |S|)")
    right.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)

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


def plot_ledger(report: dict, out: Path) -> None:
    """Left: committed tx/s vs N, one line per (mode, committee, block size), log-log.
    Right: messages per block vs N (log), same lines. Colour = block size; solid =
    all-node BFT (m = N), dashed = committee of 7, dotted = committee of 4. Runs with f
    silent voters are single crosses beside their fault-free point; runs with overlapping
    heights (pipelined) are stars at their steady rate."""
    sequential = [r for r in report["sim"] if r.get("consensus", "sequential") == "sequential"]
    pipelined = [r for r in report["sim"] if r.get("consensus") == "pipelined"]
    faulty = [r for r in sequential if r.get("faults", "none") != "none"]
    rows = [r for r in sequential if r.get("faults", "none") == "none"]
    sizes = sorted({r["block_txs"] for r in rows})
    colours = {size: f"C{i}" for i, size in enumerate(sizes)}
    styles = {"all-node": "-", 7: "--", 4: ":"}
    series: dict[tuple[str, int, int], list[dict]] = {}
    for row in rows:
        committee = 0 if row["mode"] == "all-node" else row["committee"]
        series.setdefault((row["mode"], committee, row["block_txs"]), []).append(row)
    ns = sorted({r["nodes"] for r in rows})
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for (mode, committee, block_txs), points in sorted(series.items()):
        points.sort(key=lambda r: r["nodes"])
        xs = [r["nodes"] for r in points]
        label = f"{'all-node (m = N)' if mode == 'all-node' else f'committee m = {committee}'}"
        label += f", {block_txs} tx/block"
        style = dict(
            color=colours[block_txs],
            linestyle=styles["all-node" if mode == "all-node" else committee],
            marker="o" if mode == "all-node" else "s",
            markersize=4,
            label=label,
        )
        left.plot(xs, [r["tps"] for r in points], **style)
        right.plot(xs, [r["messages_per_block"] for r in points], **style)
    for row in faulty:
        who = "all-node" if row["mode"] == "all-node" else f"committee m = {row['committee']}"
        style = dict(
            color="black",
            marker="x" if row["mode"] == "all-node" else "+",
            markersize=8,
            linestyle="none",
            label=f"{who}, {row['block_txs']} tx/block, {row['byzantine']} silent",
        )
        left.plot([row["nodes"]], [row["tps"]], **style)
        right.plot([row["nodes"]], [row["messages_per_block"]], **style)
    for row in pipelined:
        who = "all-node" if row["mode"] == "all-node" else f"committee m = {row['committee']}"
        style = dict(
            color="black" if row["mode"] == "all-node" else "C3",
            marker="*",
            markersize=11,
            linestyle="none",
            label=f"{who}, {row['block_txs']} tx/block, "
            f"{row['certificate_lag']} heights in flight (steady)",
        )
        left.plot([row["nodes"]], [row["steady_tps"]], **style)
        right.plot([row["nodes"]], [row["messages_per_block"]], **style)
    costs = report["costs"]
    links = report["links"]
    bandwidth_max = links["bandwidth_mbps_max"] or links["bandwidth_mbps"]
    note = (
        f"verify {costs['verify_us']:.0f} µs, sign {costs['sign_us']:.0f} µs, "
        f"SHA-256 {costs['hash_us_per_kb']:.2f} µs/KiB; links "
        f"{links['latency_ms_min']:.0f}–{links['latency_ms_max']:.0f} ms, "
        f"{links['bandwidth_mbps']:.0f}–{bandwidth_max:.0f} Mbit/s"
    )
    for axis, ylabel, title in (
        (left, "committed tx/s (simulated, log)", "Throughput vs N"),
        (right, "messages per block (log)", "Messages per block vs N"),
    ):
        axis.set_xscale("log", base=2)
        axis.set_xticks(ns, [str(n) for n in ns])
        axis.set_yscale("log")
        axis.set_xlabel("nodes N (log scale)")
        axis.set_ylabel(ylabel)
        axis.set_title(title)
        axis.grid(alpha=0.3, which="both")
    left.legend(fontsize=7)
    fig.suptitle(f"Elected committee vs all-node BFT — {note}", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_service(report: dict, out: Path) -> None:
    """Left: the read breakdown per area (component medians, stacked) next to the bare crypto
    bound, with the end-to-end median and the target. Right: H-KAC share key bytes against
    one key per record covered (32 B AES, 96 B KAC) by the patient's record count, log-log."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6))
    rows = report["read"]
    xs = range(len(rows))
    bottom = [0.0] * len(rows)
    for part, colour in (("gate", "C0"), ("fetch", "C1"), ("log", "C2"), ("other", "C7")):
        heights = [r[f"{part}_ms"] for r in rows]
        label = {"log": "ledger log", "fetch": "fetch + verify"}.get(part, part)
        left.bar([x - 0.18 for x in xs], heights, 0.34, bottom=bottom, color=colour, label=label)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    left.bar(
        [x + 0.2 for x in xs],
        [r["bound_ms"] for r in rows],
        0.2,
        color="C0",
        hatch="//",
        alpha=0.5,
        label="bare bound of the gate's crypto",
    )
    left.scatter(
        [x - 0.18 for x in xs],
        [r["median_ms"] for r in rows],
        color="black",
        marker="_",
        s=600,
        zorder=3,
        label="end-to-end median",
    )
    target = rows[0]["target_ms"] if rows else 50
    left.axhline(target, color="red", linestyle="--", linewidth=1, label=f"target {target:g} ms")
    for x, r in zip(xs, rows, strict=True):
        left.annotate(
            f"gate {r['gate_ratio']:.1f}× bound",
            (x + 0.2, r["bound_ms"]),
            textcoords="offset points",
            xytext=(0, 4),
            ha="center",
            fontsize=7,
        )
    left.set_xticks(list(xs), [f"{r['area']}\n({r['bound_op']})" for r in rows], fontsize=8)
    left.set_ylabel("ms (medians)")
    kb = rows[0]["record_kb"] if rows else 0
    left.set_title(f"Read of a {kb:g} kB record, end to end")
    top = max([target, *(r["median_ms"] for r in rows), *bottom])
    left.set_ylim(0, top * 1.35)
    left.legend(fontsize=7, loc="upper right", ncol=2)
    left.grid(alpha=0.3, axis="y")
    measured = report["key_overhead"]["measured"]
    ns = [m["n_records"] for m in measured]
    labels = list(measured[0]["shares"]) if measured else []
    for i, label in enumerate(labels):
        colour = f"C{i}"
        shares = [m["shares"][label] for m in measured]
        right.plot(
            ns, [s["size_bytes"] for s in shares], color=colour, marker="o", label=f"{label}: H-KAC"
        )
        right.plot(
            ns,
            [s["per_record_96B_bytes"] for s in shares],
            color=colour,
            linestyle="--",
            marker=".",
            label=f"{label}: 96 B / record",
        )
        right.plot(
            ns,
            [s["per_record_32B_bytes"] for s in shares],
            color=colour,
            linestyle=":",
            marker=".",
            label=f"{label}: 32 B / record",
        )
    right.plot(
        ns, [m["patient_seed_bytes"] for m in measured], color="black", marker="s",
        label="patient secret (seed)",
    )  # fmt: skip
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xticks(ns, [str(n) for n in ns])
    right.set_xlabel("patient's records N (log)")
    right.set_ylabel("key bytes sent (log)")
    right.set_title("Share key bytes vs one key per record covered (real service)")
    right.legend(fontsize=6, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    right.grid(alpha=0.3, which="both")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)

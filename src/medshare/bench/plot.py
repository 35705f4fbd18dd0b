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
    """Top: the calibration, real CometBFT runs on this machine next to the model's
    prediction of each (tx/s left, median latency right). Bottom: the calibrated model
    over N, tx/s (left) and p2p messages per block (right), log-log; colour = block size,
    solid = every node a validator, dashed = an elected committee of 7 (right: thin
    dotted lines are the vote messages alone)."""
    fig, ((cal_tps, cal_p50), (left, right)) = plt.subplots(2, 2, figsize=(13, 9))
    rows = report["calibration"]["rows"]
    labels = [f"N={r['nodes']}\nm={r['validators']}" for r in rows]
    xs = range(len(rows))
    for axis, key, unit in ((cal_tps, "tx_per_s", "tx/s"), (cal_p50, "p50_ms", "p50 ms")):
        measured = [r[f"measured_{key}"] or 0 for r in rows]
        predicted = [r[f"predicted_{key}"] or 0 for r in rows]
        axis.bar([x - 0.2 for x in xs], measured, 0.4, label="measured (real CometBFT)")
        axis.bar([x + 0.2 for x in xs], predicted, 0.4, label="model")
        for x, r in zip(xs, rows, strict=True):
            ratio = r["p50_ratio" if key == "p50_ms" else "tx_per_s_ratio"]
            if ratio is not None:
                axis.annotate(
                    f"{ratio:.2f}×",
                    (x + 0.2, predicted[x]),
                    textcoords="offset points",
                    xytext=(0, 3),
                    ha="center",
                    fontsize=7,
                )
        axis.set_xticks(list(xs), labels, fontsize=8)
        axis.set_ylabel(unit)
        axis.set_title(f"Calibration on this machine: {unit}, measured vs model")
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3, axis="y")
    curve = report["curve"]
    sizes = sorted({r["block_txs"] for r in curve})
    colours = {size: f"C{i}" for i, size in enumerate(sizes)}
    ns = sorted({r["nodes"] for r in curve})
    for size in sizes:
        for mode, style in (("all-validator", "-"), ("committee", "--")):
            points = sorted(
                (r for r in curve if r["block_txs"] == size and r["mode"] == mode),
                key=lambda r: r["nodes"],
            )
            if not points:
                continue
            label = f"{size} tx/block, " + ("all N validate" if mode != "committee" else "7 of N")
            nodes = [r["nodes"] for r in points]
            kwargs = dict(color=colours[size], linestyle=style, marker="o", markersize=4)
            left.plot(nodes, [r["tx_per_s"] for r in points], label=label, **kwargs)
            right.plot(nodes, [r["messages_per_block"] for r in points], label=label, **kwargs)
            right.plot(
                nodes,
                [r["vote_messages_per_block"] for r in points],
                color=colours[size],
                linestyle=":",
                linewidth=0.8,
            )
    links = report["model"]["links"]
    note = (
        f"{report['model']['node_cores']:g} cores per node, links "
        f"{links['latency_ms_min']:g}–{links['latency_ms_max']:g} ms, "
        f"{links['bandwidth_mbps_min']:g}–{links['bandwidth_mbps_max']:g} Mbit/s, full mesh"
    )
    for axis, ylabel, title in (
        (left, "committed tx/s (model, log)", "Throughput vs N"),
        (right, "p2p messages per block, all nodes (log)", "Messages per block vs N"),
    ):
        axis.set_xscale("log", base=2)
        axis.set_xticks(ns, [str(n) for n in ns])
        axis.set_yscale("log")
        axis.set_xlabel("nodes N (log)")
        axis.set_ylabel(ylabel)
        axis.set_title(f"{title} ({note})", fontsize=9)
        axis.grid(alpha=0.3, which="both")
    left.legend(fontsize=7)
    fig.suptitle("CometBFT: model calibrated on real runs, then over N", fontsize=11)
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
    for part, colour in (("decrypt", "C0"), ("fetch", "C1"), ("log", "C2"), ("other", "C7")):
        heights = [r[f"{part}_ms"] for r in rows]
        label = {
            "log": "ledger log",
            "fetch": "fetch (anchor, blob)",
            "decrypt": "device: decrypt + verify",
        }.get(part, part)
        left.bar([x - 0.18 for x in xs], heights, 0.34, bottom=bottom, color=colour, label=label)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    left.bar(
        [x + 0.2 for x in xs],
        [r["bound_ms"] for r in rows],
        0.2,
        color="C0",
        hatch="//",
        alpha=0.5,
        label="bare bound of the device's crypto",
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
            f"decrypt {r['decrypt_ratio']:.1f}× bound",
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


def plot_http(report: dict, out: Path) -> None:
    """Left: read latency percentiles vs concurrent wallets (targets dashed). Right:
    throughput and reads per block."""
    rows = [r for r in report["levels"] if r["p50_ms"] is not None]
    xs = [r["wallets"] for r in rows]
    setup = report["setup"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for key, label in (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99")):
        left.plot(xs, [r[key] for r in rows], marker="o", label=label)
    left.axhline(setup["target_p50_ms"], linestyle="--", color="grey", label="p50 target")
    left.axhline(setup["target_p99_ms"], linestyle=":", color="grey", label="p99 target")
    left.set_xlabel("concurrent wallets")
    left.set_ylabel("ms per read, end to end")
    left.set_title(f"{setup['record_bytes'] // 1000} kB read over HTTP, {setup['nodes']} nodes")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.plot(xs, [r["reads_per_s"] for r in rows], marker="o", label="reads/s")
    right.plot(xs, [r["reads_per_block"] for r in rows], marker="s", label="reads per block")
    right.set_xlabel("concurrent wallets")
    right.set_title("throughput")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)

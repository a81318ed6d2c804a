#!/usr/bin/env python3
"""Plots for the attnkit command-line program, drawn with matplotlib from the JSON it wrote.

    plot.py bench   bench.json   out/bench     -> out/bench.png, out/bench.svg
    plot.py profile profile.json out/profile   -> out/profile{,_crossover}.{png,svg}
    plot.py cost    cost.json    out/cost      -> out/cost{,_memory}.{png,svg}
    plot.py serve   serve.json   out/serve     -> out/serve{,_memory}.{png,svg}

Each figure's axis names are written as SVG text and as PNG metadata (Description), so tests
can check that a plot names its axes.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text in the SVG
import matplotlib.pyplot as plt  # noqa: E402


def save(fig, ax, prefix):
    xl, yl = ax.get_xlabel(), ax.get_ylabel()
    fig.tight_layout()
    fig.savefig(prefix + ".png", dpi=110, metadata={"Description": f"x: {xl}; y: {yl}"})
    fig.savefig(prefix + ".svg", metadata={"Description": f"x: {xl}; y: {yl}"})
    plt.close(fig)


def bench(data, prefix):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series = {}
    for p in data["points"]:
        series.setdefault((p["variant"], p["pass"]), []).append((p["n"], p["median_ms"]))
    for (variant, pss), pts in sorted(series.items()):
        pts.sort()
        ax.plot([n for n, _ in pts], [t for _, t in pts], "o-", label=f"{variant} {pss}")
    all_pts = sorted(pt for pts in series.values() for pt in pts)
    if all_pts:
        ns = sorted({n for n, _ in all_pts})
        n0 = ns[len(ns) // 2]
        t0 = sorted(t for n, t in all_pts if n == n0)[0]
        lo, hi = ns[0], ns[-1]
        for power, style, name in ((2, "k--", "O(N²) guide"), (1, "k:", "O(N) guide")):
            ax.plot([lo, hi], [t0 * (lo / n0) ** power, t0 * (hi / n0) ** power], style, lw=1, label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("median time (ms)")
    ax.set_title(f"attention, H={data.get('heads')}, D={data.get('d')}, "
                 f"{'causal' if data.get('causal') else 'non-causal'}, {data.get('threads')} threads")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, ax, prefix)


def profile(data, prefix):
    pts = data["points"]
    names = [op["name"] for op in pts[0]["ops"]]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(pts) + 2))
    left = [0.0] * len(pts)
    labels = [str(p["n"]) for p in pts]
    cmap = plt.get_cmap("tab10")
    for i, name in enumerate(names):
        share = [100 * p["ops"][i]["time_share"] for p in pts]
        ax.barh(labels, share, left=left, color=cmap(i % 10), label=name)
        left = [a + b for a, b in zip(left, share)]
    ax.set_xlabel("share of layer time (%)")
    ax.set_ylabel("sequence length N")
    ax.set_xlim(0, 100)
    ax.set_title(f"{data['model']['name']}: time per op ({data['variant']} attention)")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    save(fig, ax, prefix)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ns = [p["n"] for p in pts]
    ax.plot(ns, [p["attention_ms"] for p in pts], "o-", label="attention (measured)")
    ax.plot(ns, [p["mlp_ms"] for p in pts], "s-", label="MLP (measured)")
    if data.get("crossover_measured_n"):
        ax.axvline(data["crossover_measured_n"], color="C0", ls="--", lw=1,
                   label=f"measured crossover N≈{data['crossover_measured_n']:.0f}")
    if data.get("crossover_predicted_n"):
        ax.axvline(data["crossover_predicted_n"], color="k", ls=":", lw=1,
                   label=f"cost model N≈{data['crossover_predicted_n']:.0f}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("time per stack (ms)")
    ax.set_title(f"{data['model']['name']}: attention against the MLP")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, ax, prefix + "_crossover")


def cost(data, prefix):
    rows = data["rows"]
    series = {}
    for r in rows:
        series.setdefault(r["variant"], []).append(r)
    for key, ylabel, suffix, fname in (("mixer_flops", "token-mixer FLOPs per layer", "", "FLOPs"),
                                       ("mixer_peak_bytes", "token-mixer peak memory per layer (bytes)", "_memory",
                                        "memory")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for variant, rs in series.items():
            if variant == "decode":
                continue
            ax.plot([r["n"] for r in rs], [max(r[key], 1) for r in rs], "o-", label=variant)
        if key == "mixer_flops":
            first = next(iter(series.values()))
            ax.plot([r["n"] for r in first], [r["mlp_flops"] for r in first], "k--", label="MLP")
        else:
            ax.axhline(data["memory_bytes"], color="k", ls="--", lw=1, label="memory")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{data['model']['name']} ({data['mode']}, {data['dtype']}): {fname} by the cost model")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, ax, prefix + suffix)


def serve(data, prefix):
    series = {}
    for p in data["points"]:
        series.setdefault(p["variant"], []).append(p)
    for key, ylabel, suffix in (("token_p50_ms", "per-token latency, median (ms)", ""),
                                ("kv_bytes", "KV-cache bytes in use", "_memory")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for variant, pts in sorted(series.items()):
            pts.sort(key=lambda r: r["ctx"])
            ax.plot([r["ctx"] for r in pts], [r[key] for r in pts], "o-", label=variant)
            if key == "token_p50_ms":
                ax.plot([r["ctx"] for r in pts], [r["predicted_ms"] for r in pts], ":", color="gray", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(ylabel)
        what = "latency (dotted: cost model)" if key == "token_p50_ms" else "KV memory"
        ax.set_title(f"decoder {what} against context, per attention variant")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, ax, prefix + suffix)


KINDS = {"bench": bench, "profile": profile, "cost": cost, "serve": serve}


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in KINDS:
        sys.exit("usage: plot.py " + "|".join(KINDS) + " DATA.json OUT_PREFIX")
    with open(sys.argv[2]) as f:
        data = json.load(f)
    KINDS[sys.argv[1]](data, sys.argv[3])


if __name__ == "__main__":
    main()

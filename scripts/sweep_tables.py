#!/usr/bin/env python3
"""Markdown tables of a `kvcodec sweep --json` file, as docs/results/streaming.md shows them.

usage: scripts/sweep_tables.py SWEEP.json
Per RTT: TTFT (ms) of every strategy on the constant links, with adaptive-ttft / oracle-ttft;
then, on the traces, TTFT / SLO met / rel. error / prefill tokens of the SLO strategies, with
totals.
"""
import json
import sys

CONSTANT = ["text-only", "fp16", "int8", "cachegen-L2", "kvcodec-L0", "kvcodec-L4", "kvcodec-L8", "equal-budget",
            "adaptive-ttft", "oracle-ttft", "adaptive-quality", "oracle-quality", "adaptive-min-prefill",
            "adaptive-min-prefill-unhedged", "oracle-min-prefill"]
TRACED = ["equal-budget", "adaptive-quality", "oracle-quality", "adaptive-min-prefill", "adaptive-min-prefill-unhedged",
          "oracle-min-prefill"]


def main(path):
    j = json.load(open(path))
    rows = j["rows"]
    rtts = sorted({r["rtt_ms"] for r in rows})
    bws = sorted({r["bandwidth_gbps"] for r in rows if r["trace"] is None})
    const = {(r["rtt_ms"], r["bandwidth_gbps"], r["strategy"]): r for r in rows if r["trace"] is None}
    fmt = lambda x: f"{x:g}"
    for rtt in rtts:
        print(f"TTFT in ms on constant links, RTT {fmt(rtt)} ms:\n")
        print("| strategy | " + " | ".join(f"{fmt(b)} Gb/s" for b in bws) + " |")
        print("|---|" + "---:|" * len(bws))
        for s in CONSTANT:
            if (rtt, bws[0], s) in const:
                print(f"| {s} | " + " | ".join(f"{const[(rtt, b, s)]['ttft_ms']:.1f}" for b in bws) + " |")
        ratio = [const[(rtt, b, "adaptive-ttft")]["ttft_ms"] / const[(rtt, b, "oracle-ttft")]["ttft_ms"] for b in bws]
        print("| adaptive-ttft / oracle-ttft | " + " | ".join(f"**{x:.2f}**" for x in ratio) + " |\n")
    traced = [r for r in rows if r["trace"] is not None]
    slo = j["slo_ms"]
    print(f"Traces with sudden 10x drops (SLO {fmt(slo)} ms): TTFT ms / SLO met / rel. error / prefill tokens\n")
    print("| RTT ms | trace | " + " | ".join(TRACED) + " |")
    print("|---|---|" + "---|" * len(TRACED))
    by = {(r["rtt_ms"], r["trace"], r["strategy"]): r for r in traced}
    keys = sorted({(r["rtt_ms"], r["trace"]) for r in traced})
    for rtt, trace in keys:
        cells = []
        for s in TRACED:
            if (rtt, trace, s) not in by:
                cells.append("-")
                continue
            r = by[(rtt, trace, s)]
            cells.append(f"{r['ttft_ms']:.1f} / {'yes' if r['slo_met'] else 'no'} / {r['rel_error']:.4f} / {r['prefill_tokens']}")
        print(f"| {fmt(rtt)} | {trace.split('/')[-1]} | " + " | ".join(cells) + " |")
    totals = []
    for s in TRACED:
        rs = [by[(rtt, trace, s)] for rtt, trace in keys if (rtt, trace, s) in by]
        if not rs:
            totals.append("-")
            continue
        met = sum(r["slo_met"] for r in rs)
        err = sum(r["rel_error"] for r in rs) / len(rs)
        worst = max(r["ttft_ms"] for r in rs)
        prefill = sum(r["prefill_tokens"] for r in rs) / len(rs)
        totals.append(f"**{met}/{len(rs)} met, mean err {err:.4f}, mean prefill {prefill:.0f} tokens, worst {worst:.1f} ms**")
    print("| | **total** | " + " | ".join(totals) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: scripts/sweep_tables.py SWEEP.json")
    main(sys.argv[1])

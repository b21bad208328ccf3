#!/usr/bin/env python3
"""Threshold table of `kvcodec eval --json` files, as docs/results/quality.md shows them.

usage: scripts/quality_tables.py RUN.json [RUN.json ...]
One row per (model / text / contexts, scheme), files of the same set merged: bits per element at which the mean next-token KL reaches 0.01 and
0.001 nats and perplexity rises 1%, with the ratio of kvcodec's schemes to CacheGen as shipped.
"> x": the target is exceeded at every setting (x: the most bits measured); "< x": never reached
(x: the fewest bits measured, e.g. int8's only setting).
"""
import json
import os
import sys

ORDER = ["kvpca:format=v4:models=on:rd=on", "kvpca:format=v4:models=on:rd=on:rdq=on", "kvpca:format=v4",
         "kvpca:format=v4:rdq=on", "kvcodec", "cachegen", "cachegen:bins", "kvtc", "kivi", "zfp", "int8", "zstd", "fp16"]
NAMES = {"kvpca:format=v4:models=on:rd=on": "**kvcodec + v2 profile (`calibrate`'s default)**",
         "kvpca:format=v4": "kvcodec + v1 profile (transform only)", "kvcodec": "kvcodec default (no profile)",
         "kvpca:format=v4:models=on:rd=on:rdq=on": "v2 profile + rate-distortion quantization (`rdq=on`, not adopted)",
         "kvpca:format=v4:rdq=on": "v1 profile + rate-distortion quantization (`rdq=on`)",
         "cachegen": "CacheGen as shipped", "cachegen:bins": "CacheGen, continuous bins", "kvtc": "KVTC-style"}


def cell(t, key, note, bits):
    """(value or bound, text, '=' | '>' | '<')"""
    v = t[key]
    if v is not None:
        return v, f"{v:.2f}", "="
    if t[note] == "above target at every setting":
        return max(bits), f"> {max(bits):.2f}", ">"
    return min(bits), f"< {min(bits):.2f}", "<"


def main(paths):
    print("| model / text (contexts) | scheme | bits at KL 0.01 | bits at KL 0.001 | bits at ppl +1 % | KL 0.01: x CacheGen shipped |")
    print("|---|---|---:|---:|---:|---:|")
    # Files of the same model, text and contexts are one table block (later files add schemes).
    groups = {}
    for path in paths:
        j = json.load(open(path))
        label = f"{os.path.basename(j['model']).removesuffix('.bin')} / {os.path.basename(j['text']).split('_')[0].split('.')[0]} ({j['contexts']})"
        g = groups.setdefault(label, ({}, {}))
        g[0].update({t["scheme"]: t for t in j["thresholds"]})
        bits = {}
        for r in j["rows"]:
            bits.setdefault(r["scheme"], []).append(r["bits_per_element"])
        g[1].update(bits)
    for label, (th, bits) in groups.items():
        shipped, _, shipped_kind = cell(th["cachegen"], "bits_at_kl", "kl_note", bits["cachegen"])
        first = True
        for s in ORDER:
            if s not in th:
                continue
            t = th[s]
            kl, kl_s, kl_kind = cell(t, "bits_at_kl", "kl_note", bits[s])
            _, kl3_s, _ = cell(t, "bits_at_kl_0.001", "kl_0.001_note", bits[s])
            _, ppl_s, _ = cell(t, "bits_at_ppl", "ppl_note", bits[s])
            if t["ppl_note"] == "not reached" and t["kl_note"] == "above target at every setting":
                ppl_s = "n/a (ppl falls)"  # one-sided target: a damaged cache can lower perplexity
            ratio = ""
            if s in ORDER[:5] and kl_kind == "=":
                # CacheGen above target everywhere: its threshold is beyond its most bits, so the
                # ratio is below kl / that; never reached: beyond its fewest bits, ratio above.
                ratio = {"=": "", ">": "< ", "<": "> "}[shipped_kind] + f"{kl / shipped:.2f}"
            print(f"| {label if first else ''} | {NAMES.get(s, s)} | {kl_s} | {kl3_s} | {ppl_s} | {ratio} |")
            first = False


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: scripts/quality_tables.py RUN.json [RUN.json ...]")
    main(sys.argv[1:])

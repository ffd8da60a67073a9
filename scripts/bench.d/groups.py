#!/usr/bin/env python3
"""groups.py --tessera BIN --work DIR --json OUT.json [--groups 1,2,4] [--ranks 4] [--size small]
[--model-from bench-results/T.json] [--seed N] [--timeout S] [--keep-outputs]: a survey campaign's wall
time with 1, 2 and 4 communicator groups on 4 ranks, and a model of what groups gain at 1000 ranks for
a PHANGS-size campaign (issue 17; scripts/bench --groups runs it and puts the section in BENCHMARKS.md).

Run it with the bench venv's python (numpy, astropy). Untimed, cached under --work/inputs: a campaign
of 2 targets x 4 bands (NIRCam LW F300M and F335M, MIRI F770W and F1000W), each band `tessera simulate
--set simulate.instrument=... --set simulate.filter=... --tiles 1x1 --dithers 4 --size S` with the
target's seed and name (the same visits in every band of a target, as tests/integration/campaign.rs
builds them), the F300M reference catalogue as the target's catalogue. Timed, with /usr/bin/time -v
(every rank under GNU time, scripts/bench.d/rank-time): `mpirun -n 4 --oversubscribe tessera --set
run.threads=T run c.toml` with run.groups = 1, 2, 4 (T = max(1, nproc / ranks)); release off, no
anchoring references, no PSF targets (those stages skip), everything else at its defaults. Each run's
`campaign/summary.json` gives every task's wall time, group and ranks; the tasks' SCI images are
compared across the runs (bit for bit).

The model (evaluated here, not measured): a band on p ranks takes T(p) = a + b / p, `a` the work that
does not shrink with ranks (rank 0 streams the mosaic out of the band store, solves, detects for
astrometry; collectives' latency), `b` the rank-seconds of the distributed work. From --model-from
(an earlier scripts/bench JSON with the large NIRCam SW scene, 128 cal files of 2048^2): b = ranks x
(drizzle stage + outlier stage) of its 2-rank rows, a = its assemble stage + A_OTHER_S (assumed: the
other rank-0 work of a whole chain, which those drizzle-only rows do not run); every NIRCam band taken
as large as that SW scene (an upper bound: an LW band has a quarter of its pixels); a MIRI band
MIRI_FRACTION of a NIRCam band's a and b (1032 x 1024 detectors, fewer exposures). Groups are dealt as
`tessera run` deals them (src/stages/campaign.rs `assign`: chains of a target's bands of one instrument,
largest input first to the least loaded group), `auto` as `auto_groups` sizes them (a NIRCam band's
input bytes over half of the per-rank budget).
"""
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.dont_write_bytecode = True
from bench import log, run_quiet, run_timed, section_args, section_parser, toml_str  # noqa: E402
from tables import write_json  # noqa: E402

BANDS = [("nircam_lw", "F300M"), ("nircam_lw", "F335M"), ("miri", "F770W"), ("miri", "F1000W")]
TARGETS = 2

# model assumptions (stated in the section)
A_OTHER_S = 50.0          # rank-0 work of a whole chain beyond assemble (headers, solves, astrometry detection)
MIRI_FRACTION = 0.1       # a MIRI band's a and b against a NIRCam band's
FALLBACK = {"drizzle_s": 735.4, "outlier_s": 409.5, "assemble_s": 103.7, "ranks": 2,
            "source": "SCALING.md's figures (no --model-from)"}
PHANGS = {"targets": 74, "nircam_bands": 4, "miri_bands": 4, "ranks": 1000, "budget_mb": 4096,
          # a NIRCam band's inputs: 128 x 2048^2 px x ~24 B (SCI, ERR, DQ, 3 VAR)
          "nircam_band_bytes": 128 * 2048 ** 2 * 24}


def simulate_inputs(args):
    root = Path(args.work) / "inputs"
    for k in range(1, TARGETS + 1):
        for inst, band in BANDS:
            d = root / f"t{k}" / band
            if (d / "truth" / "truth.json").exists():
                continue
            shutil.rmtree(d, ignore_errors=True)
            run_quiet([args.tessera, "simulate", "--set", f'simulate.instrument="{inst}"', "--set",
                       f'simulate.filter="{band}"', "--tiles", "1x1", "--dithers", "4", "--size", args.size,
                       "--seed", str(k), "--set", f'simulate.target="ngc{k}"', "--out", d],
                      f"simulate t{k} {band}")
    return root


def campaign_toml(root, out, groups):
    t = (f"[run]\noutput_dir = {toml_str(out)}\ngroups = {groups}\nprogress_interval_s = 5.0\n"
         "[release]\nenabled = false\n")
    for k in range(1, TARGETS + 1):
        ins = ", ".join(toml_str(root / f"t{k}" / b) for _, b in BANDS)
        t += (f"[[target]]\nname = \"ngc{k}\"\ninputs = [{ins}]\n"
              f"catalog = {toml_str(root / f't{k}' / 'F300M' / 'aux' / 'refcat.csv')}\n")
    return t


def sci_hash(path):
    with fits.open(path) as f:
        return hashlib.sha256(np.ascontiguousarray(f["SCI"].data).tobytes()).hexdigest()


def run_groups(args, root, g):
    rd = Path(args.work) / "runs" / f"groups-{g}"
    shutil.rmtree(rd, ignore_errors=True)
    rd.mkdir(parents=True)
    out = rd / "out"
    (rd / "c.toml").write_text(campaign_toml(root, out, g))
    threads = max(1, (os.cpu_count() or 1) // args.ranks)
    cmd = ["mpirun", "-n", str(args.ranks), "--oversubscribe", "--bind-to", "none", HERE / "rank-time", rd / "rss",
           args.tessera, "--set", f"run.threads={threads}", "run", rd / "c.toml"]
    log(f"[groups] {g} group(s) on {args.ranks} ranks ...")
    load0 = os.getloadavg()
    row = {"groups": g, "ranks": args.ranks, "threads": threads}
    row.update(run_timed(cmd, rd, args.timeout, rank_prefix=rd / "rss"))
    row["load_avg_start"] = " ".join(f"{x:.2f}" for x in load0)
    row["load_avg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    sp = out / "campaign" / "summary.json"
    hashes = {}
    if sp.exists():
        s = json.loads(sp.read_text())
        row["summary_wall_s"] = s["wall_s"]
        row["summary_groups"] = s["groups"]
        row["tasks"] = [{k: t.get(k) for k in ("task", "band", "status", "wall_s", "group", "ranks")}
                        for t in s["tasks"]]
        for t in s["tasks"]:
            m = next((out / p for p in t.get("products", []) if p.endswith(".fits")), None)
            if m and m.exists():
                hashes[t["task"]] = sci_hash(m)
        if any(t["status"] not in ("done", "partial") for t in row["tasks"]):
            row["status"] = "failed: " + ", ".join(f"{t['task']} {t['status']}" for t in row["tasks"]
                                                   if t["status"] not in ("done", "partial"))
    elif row["status"].startswith("ok"):
        row["status"] = "failed: no campaign/summary.json"
    row["sci_sha256"] = hashes
    log(f"[groups] {g} group(s): {row['status']} {row.get('wall_s', 0):.1f} s")
    if not args.keep_outputs:
        shutil.rmtree(out, ignore_errors=True)
    return row


def model_params(path):
    """a and b of a NIRCam band from an earlier bench JSON's large scene (else FALLBACK)."""
    p = dict(FALLBACK)
    if path:
        d = json.loads(Path(path).read_text())
        large = next((s for s in d.get("scenes", []) if s.get("scene") == "large"), None)
        rows = {(r.get("chain"), r.get("ranks")): r for r in (large or {}).get("rows", [])
                if r.get("tool") == "tessera" and r.get("stages")}
        dz = next((r for (c, _), r in sorted(rows.items()) if c == "drizzle"), None)
        ol = next((r for (c, _), r in sorted(rows.items()) if c == "outlier+drizzle"), None)
        if dz and ol and dz["ranks"] == ol["ranks"]:
            p = {"drizzle_s": dz["stages"]["drizzle"], "outlier_s": ol["stages"]["outlier"],
                 "assemble_s": dz["stages"]["assemble"], "ranks": dz["ranks"],
                 "source": f"the large scene of `{path}` ({dz['ranks']} ranks)"}
    b_n = p["ranks"] * (p["drizzle_s"] + p["outlier_s"])
    a_n = p["assemble_s"] + A_OTHER_S
    p.update({"a_nircam": a_n, "b_nircam": b_n, "a_miri": MIRI_FRACTION * a_n, "b_miri": MIRI_FRACTION * b_n,
              "a_other_s": A_OTHER_S, "miri_fraction": MIRI_FRACTION})
    return p


def model(p):
    """Wall time of the PHANGS-size campaign for 1 group, `auto` and a few group counts."""
    R, T = PHANGS["ranks"], PHANGS["targets"]
    half = PHANGS["budget_mb"] * 2 ** 20 / 2
    need = min(R, max(1, math.ceil(PHANGS["nircam_band_bytes"] / half)))
    chains = 2 * T
    auto = max(1, min(R // need, chains))
    nb = {"nircam": PHANGS["nircam_bands"], "miri": PHANGS["miri_bands"]}
    # chain sizes by bytes: NIRCam chains first (larger), then MIRI, queue order within each
    kinds = ["nircam"] * T + ["miri"] * T
    cbytes = [nb[k] * PHANGS["nircam_band_bytes"] * (1 if k == "nircam" else MIRI_FRACTION) for k in kinds]

    def band_t(kind, pr):
        return p[f"a_{kind}"] + p[f"b_{kind}"] / pr

    def wall(groups):
        pr = R // groups           # ranks per group (the remainder idle; tessera gives them to the last groups)
        load_b, load_t = [0.0] * groups, [0.0] * groups
        order = sorted(range(chains), key=lambda c: (-cbytes[c], c))
        for c in order:
            g = min(range(groups), key=lambda g: (load_b[g], g))
            load_b[g] += cbytes[c]
            load_t[g] += nb[kinds[c]] * band_t(kinds[c], pr)
        total = sum(load_t)
        return {"groups": groups, "ranks_per_group": pr, "wall_s": max(load_t),
                "busy": total / (groups * max(load_t)), "group_s": total}

    one = wall(1)
    rows = [one] + [wall(g) for g in sorted({2, 10, 50, auto, chains} - {1})]
    for r in rows:
        r["gain"] = one["wall_s"] / r["wall_s"]
    return {"ranks_per_band_auto": need, "auto_groups": auto, "chains": chains, "rows": rows,
            "band_s": {k: {"1000": band_t(k, R), "auto": band_t(k, R // auto)} for k in nb},
            "serial_share_one_group": (T * nb["nircam"] * p["a_nircam"] + T * nb["miri"] * p["a_miri"]) / one["wall_s"]}


def table(runs):
    L = ["| groups | ranks per group | campaign wall s | NIRCam band wall s (4 tasks) | MIRI band wall s (4 tasks) | "
         "peak RSS MiB (max rank) | load avg (start; end) | status |", "|--:|--:|--:|---|---|--:|---|---|"]
    for r in runs:
        ts = r.get("tasks") or []
        def span(kind):
            w = [t["wall_s"] for t in ts if (t["band"] in ("F300M", "F335M")) == (kind == "n")]
            return f"{min(w):.1f} - {max(w):.1f}" if w else ""
        rss = (r.get("max_rank_rss_kib") or 0) / 1024
        L.append(f"| {r['groups']} | {r['ranks'] // r['groups']} | {r.get('wall_s', 0):.1f} | {span('n')} | {span('m')} | "
                 f"{rss:.0f} | {r.get('load_avg_start')}; {r.get('load_avg_end')} | {r['status']} |")
    return "\n".join(L)


def main():
    ap = section_parser(__doc__)
    ap.add_argument("--seed", type=int, default=1, help="unused (the targets' seeds are 1 and 2)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--groups", default="1,2,4")
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--size", default="small")
    ap.add_argument("--model-from", default="")
    ap.add_argument("--keep-outputs", action="store_true")
    args = section_args(ap)
    t0 = time.perf_counter()
    root = simulate_inputs(args)
    runs = [run_groups(args, root, int(g)) for g in args.groups.split(",") if g]
    ref = next((r["sci_sha256"] for r in runs if r["sci_sha256"]), {})
    for r in runs:
        r["same_sci_as_first"] = bool(r["sci_sha256"]) and r["sci_sha256"] == ref
    p = model_params(args.model_from)
    res = {"campaign": {"targets": TARGETS, "bands": [b for _, b in BANDS], "size": args.size, "tiles": "1x1",
                        "dithers": 4, "ranks": args.ranks, "nproc": os.cpu_count()},
           "runs": runs, "model_params": p, "phangs": PHANGS, "model": model(p),
           "total_s": time.perf_counter() - t0, "table_md": table(runs)}
    write_json(args.json, res)
    print(res["table_md"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

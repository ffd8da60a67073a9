#!/usr/bin/env python3
"""chain.py --tessera BIN --work DIR --json OUT.json [--sizes small,large] [--tools tessera,jwst]
[--seed N] [--timeout S] [--keep-outputs]: the whole chain against the JWST pipeline's stage 3, issue
20's first target (scripts/bench --chain runs it and puts the table in BENCHMARKS.md).

Run it with the bench venv's python (numpy, astropy, jwst). Scene (simulated by tessera, cached under
--work/chain-<size>): NIRCam LW F300M, 2 x 1 tiles x 4 dithers x 2 detectors = 16 cal files (of 2048^2
at size large: 67 Mpix in, the issue's scene), with everything the simulator does by default (1/f
stripes, per-exposure background offsets, pointing errors, cosmic rays), so the chain has its work to do.

Tools (each timed with GNU time, tessera's ranks each under GNU time; the same 2 cores):
  tessera   mpirun -n 2 tessera mosaic CAL -o mosaic.fits --catalog CAL/aux/refcat.csv: every stage
            (plan, prep, destripe, align, level, destripe_multi, outlier, drizzle, assemble,
            astrometry; anchor and psfmatch skip without references and PSF targets), run.threads = 1;
            per-stage wall seconds from its manifest
  jwst      the JWST pipeline's stage 3 as the issue states it: SkyMatchStep (skymethod "match"),
            OutlierDetectionStep and ResampleStep in one process (run_jwst.py, default parameters, in
            memory), onto tessera's grid; its inner step times

Reported: wall seconds, peak RSS (the largest rank's for tessera), the ratio JWST / tessera (issue 20's
target: at least 10), tessera's per-stage times and JWST's per-step times, and the load average at
the start of each run (the ratio means little on a loaded machine).
"""
import argparse
import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.dont_write_bytecode = True
import quality  # noqa: E402
from bench import choices, log, section_args, section_parser, toml_str  # noqa: E402
from tables import run_sections  # noqa: E402

TOOLS = ["tessera", "jwst"]
LABELS = {"tessera": "tessera whole chain, 2 ranks x 1 thread",
          "jwst": "JWST stage 3: SkyMatch + OutlierDetection + Resample, 1 process"}
SIZES = ["small", "medium", "large"]
STAGES = ["plan", "prep", "destripe", "align", "level", "destripe_multi", "outlier", "drizzle", "assemble",
          "astrometry", "anchor", "psfmatch"]


def scene_def(size):
    return {"title": f"NIRCam LW F300M, 2x1 tiles x 4 dithers x 2 detectors, {size}",
            "simulate": ["--instrument", "nircam_lw", "--filter", "F300M", "--tiles", "2x1", "--dithers", "4",
                         "--size", size],
            "sets": [], "mask": "faint", "why": ""}


def load():
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_tool(args, scene, tool):
    rd = scene["runs"] / tool
    if rd.exists():
        shutil.rmtree(rd)
    rd.mkdir(parents=True)
    out = rd / "mosaic.fits"
    env = dict(os.environ)
    env["STPIPE_DISABLE_CRDS_STEPPARS"] = "True"
    prefix = None
    if tool == "tessera":
        cmd = ["mpirun", "-n", "2", "--bind-to", "none", HERE / "rank-time", rd / "rss", args.tessera,
               "--set", f"run.output_dir={toml_str(rd / 'out')}", "--set", "run.threads=1",
               "mosaic", scene["sim"], "-o", out, "--catalog", scene["sim"] / "aux" / "refcat.csv"]
        prefix = rd / "rss"
    else:
        cmd = [sys.executable, HERE / "run_jwst.py", scene["jwst"], out, "--skymatch", "match"]
    start = load()
    row = quality.run_peer(f"chain {scene['name']}", tool, LABELS[tool], cmd, out, rd, args, env, prefix)
    row["load_avg_at_start"] = start
    if tool == "tessera":
        man = rd / "out" / "manifest.json"
        if man.exists():
            m = json.loads(man.read_text())
            row["stages_s"] = {e["stage"]: e.get("wall_s") for e in m["stages"] if e.get("status") == "done"}
    if not args.keep_outputs:
        shutil.rmtree(rd, ignore_errors=True)
    return row


def run_size(args, size):
    name = f"chain-{size}"
    quality.SCENES[name] = scene_def(size)
    scene = quality.prepare(argparse.Namespace(work=args.work, tessera=args.tessera, seed=args.seed,
                                               tools=["jwst"] if "jwst" in args.tools else []), name)
    files = sorted(scene["sim"].glob("*_cal.fits"))
    info = {"name": name, "size": size, "title": quality.SCENES[name]["title"],
            "simulate": [*quality.SCENES[name]["simulate"], "--seed", str(args.seed)],
            "files": len(files), "input_mpix": None}
    try:
        from astropy.io import fits
        info["input_mpix"] = sum(fits.getheader(f, "SCI")["NAXIS1"] * fits.getheader(f, "SCI")["NAXIS2"]
                                 for f in files) / 1e6
    except (OSError, KeyError):
        pass
    rows = [run_tool(args, scene, t) for t in args.tools]
    by = {r["tool"]: r for r in rows}
    t, j = by.get("tessera"), by.get("jwst")
    if t and j and t["status"].startswith("ok") and j["status"].startswith("ok"):
        info["ratio"] = j["wall_s"] / t["wall_s"]
    return {"scene": info, "rows": rows}


def fmt(x, nd=1):
    return "" if x is None else f"{x:.{nd}f}"


def table(scenes):
    L = ["| scene | files | Mpix in | tool | wall s | peak RSS MiB | JWST / tessera (target >= 10) | load at start | "
         "status |", "|---|--:|--:|---|--:|--:|--:|---|---|"]
    for s in scenes:
        sc = s["scene"]
        for r in s["rows"]:
            rss = r.get("max_rank_rss_kib") or r.get("max_rss_kib")
            ratio = fmt(sc.get("ratio"), 2) if r["tool"] == "tessera" else ""
            L.append(f"| {sc['size']} | {sc['files']} | {fmt(sc.get('input_mpix'))} | {r['label']} | "
                     f"{fmt(r.get('wall_s'))} | {fmt(rss / 1024 if rss else None, 0)} | {ratio} | "
                     f"{r.get('load_avg_at_start', '')} | {r['status']} |")
    L += ["", "Per stage (wall s; tessera: the manifest's, rank 0; JWST: run_jwst.py's step times):", "",
          "| scene | tool | " + " | ".join(STAGES) + " |", "|---|---|" + "--:|" * len(STAGES)]
    for s in scenes:
        for r in s["rows"]:
            if r["tool"] == "tessera" and r.get("stages_s"):
                cells = [fmt(r["stages_s"].get(st)) for st in STAGES]
                L.append(f"| {s['scene']['size']} | tessera | " + " | ".join(cells) + " |")
            elif r["tool"] == "jwst" and r.get("inner"):
                i = r["inner"]
                L.append(f"| {s['scene']['size']} | JWST | import {fmt(i.get('import_s'))}; skymatch "
                         f"{fmt(i.get('skymatch_s'))}; outlier {fmt(i.get('outlier_s'))}; resample "
                         f"{fmt(i.get('resample_s'))} |" + " |" * (len(STAGES) - 1))
    return "\n".join(L)


def main():
    ap = section_parser(__doc__)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=3 * 3600)
    ap.add_argument("--sizes", default="large")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--keep-outputs", action="store_true")
    args = section_args(ap)
    args.tools = choices(ap, args.tools, TOOLS, "tool")
    sizes = choices(ap, args.sizes, SIZES, "size")
    return run_sections(args.json, sizes, lambda s: run_size(args, s), table)


if __name__ == "__main__":
    sys.exit(main())

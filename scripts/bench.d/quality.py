#!/usr/bin/env python3
"""quality.py --tessera BIN --work DIR --json OUT.json [--md OUT.md] [--seed N] [--timeout S]
[--tools tessera,jwst-match,jwst-global+match,reproject,oracle] [--keep-outputs]: the level matching
quality table of scripts/bench (scripts/bench --quality runs it and puts the table in BENCHMARKS.md).

Run it with the bench venv's python (numpy, scipy, astropy, reproject, jwst). On one simulated scene
with per-exposure background offsets and nothing else to correct (`tessera simulate --instrument
nircam_lw --filter F300M --tiles 2x2 --dithers 4 --size small --seed N` with
background_offset_mjysr = 0.1, stripe_rms_mjysr = 0, pointing_error_arcsec = 0), it runs, on the same
inputs and onto the same output grid (`tessera plan --json`), with no outlier rejection anywhere:
  tessera            mpirun -n 2 tessera mosaic (level matching on, its default; outlier.enabled=false)
  jwst-match         JWST SkyMatchStep(skymethod="match") + ResampleStep (run_jwst.py --skymatch)
  jwst-global+match  the same with skymethod="global+match"
  reproject          reproject_and_coadd(reproject_interp, match_background=True) (run_reproject.py)
  oracle             the floor of the metric: the cal files minus each exposure's true background,
                     mosaicked by tessera --no-level
each timed with GNU time (bench.py's run_timed; the inputs are prepared untimed with prep_peers.py and
prep_jwst.py and cached under --work), scores every mosaic with one function (`score`), and writes
OUT.json plus a markdown table (stdout, and --md).

Metrics (MJy/sr), all relative, since every tool sets its own absolute level:
  seam spread      for every tile, the median of (mosaic - truth sky bilinearly resampled onto the grid)
                   over the grid pixels covered by that tile only; max - min over the tiles. Tile
                   coverage is computed once from the inputs (each input's usable pixels reprojected onto
                   the grid, OR-ed per tile, dilated by DILATE_PX so pixels next to another tile's edge
                   count as shared), the same pixel set for every tool. Pixels near sources are left out
                   (`faint_mask`): the simulated absolute pointing offset, which no tool here corrects,
                   puts the mosaics ~0.35" off the truth, and the misaligned sources alone give a spread
                   of ~1e-3 MJy/sr; the unmasked spread is reported too (`seam_spread_all_mjysr`).
  per-tile rms     rms of the per-tile medians about their mean.
  exposure rms     where the tool reports per-exposure levels (tessera: level.json exposure + tile
                   offsets + band sky; SkyMatch: meta.background.level), the rms of (level - truth
                   background_mjysr) about its mean over the exposures.
"""
import argparse
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.dont_write_bytecode = True   # no __pycache__ in the repo from importing bench.py
from bench import run_quiet, run_timed, toml_str, sh, log  # noqa: E402

SIM_ARGS = ["--instrument", "nircam_lw", "--filter", "F300M", "--tiles", "2x2", "--dithers", "4",
            "--size", "small"]
SIM_SETS = ["simulate.background_offset_mjysr=0.1", "simulate.stripe_rms_mjysr=0.0",
            "simulate.pointing_error_arcsec=0.0"]
TOOLS = ["tessera", "jwst-match", "jwst-global+match", "reproject", "oracle"]
PEERS = ["jwst-match", "jwst-global+match", "reproject"]
LABELS = {
    "oracle": "floor: true levels subtracted, tessera --no-level",
    "tessera": "tessera (level matching), 2 ranks",
    "jwst-match": "JWST SkyMatchStep match + ResampleStep",
    "jwst-global+match": "JWST SkyMatchStep global+match + ResampleStep",
    "reproject": "reproject_and_coadd(match_background=True)",
}
DILATE_PX = 2
# Source mask: grid pixels within this many px (plus the simulated absolute pointing offset) of a
# truth-sky pixel brighter than FAINT_MJYSR are left out of the seam medians.
FAINT_MJYSR = 0.003
SOURCE_PAD_PX = 1


# ---------------------------------------------------------------------------------------------
# scene and inputs (untimed, cached)

def prepare(args):
    """Simulate, plan, prepare the peers' inputs; return the scene folder's paths."""
    d = Path(args.work) / "scene"
    sim = d / "cal"
    stamp = d / "simulated.json"
    sets = [x for kv in SIM_SETS for x in ("--set", kv)]
    cmd = [args.tessera, *sets, "simulate", *SIM_ARGS, "--seed", str(args.seed), "--out", str(sim)]
    key = {"args": [str(c) for c in cmd[1:]], "tessera": sh([args.tessera, "--version"])}
    if not (stamp.exists() and json.loads(stamp.read_text()) == key and any(sim.glob("*_cal.fits"))):
        if sim.exists():
            shutil.rmtree(sim)
        d.mkdir(parents=True, exist_ok=True)
        run_quiet(["mpirun", "-n", str(min(2, os.cpu_count() or 1)), "--bind-to", "none"] + cmd,
                  "simulate the quality scene")
        stamp.write_text(json.dumps(key))
        for p in (d / "plan.json", d / "coverage.npz"):
            p.unlink(missing_ok=True)
    pj = d / "plan.json"
    if not pj.exists():
        run_quiet([args.tessera, "--set", f"run.output_dir={toml_str(d / 'plan-out')}", "plan", sim,
                   "--json", pj, "--ranks", "2"], "plan the quality scene")
    run_quiet([sys.executable, HERE / "prep_peers.py", sim, pj, d / "peer"], "prepare peer inputs (quality)")
    if any(t.startswith("jwst") for t in args.tools):
        run_quiet([sys.executable, HERE / "prep_jwst.py", d / "peer", d / "jwst"], "prepare JWST models (quality)")
    return {"dir": d, "sim": sim, "plan": pj, "peer": d / "peer", "jwst": d / "jwst"}


def grid_wcs(peer):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # grid.hdr is a text header without FITS block padding
        gh = fits.Header.fromfile(str(peer / "grid.hdr"), sep="\n", endcard=True, padding=False)
    return WCS(gh), (gh["NAXIS2"], gh["NAXIS1"])


def tile_coverage(scene, truth):
    """Boolean (ntiles, ny, nx): grid pixels any usable input pixel of the tile falls on (dilated)."""
    from reproject import reproject_interp
    from scipy.ndimage import binary_dilation
    cache = scene["dir"] / "coverage.npz"
    if cache.exists() and cache.stat().st_mtime > (scene["peer"] / "inputs.json").stat().st_mtime:
        return np.load(cache)["cov"]
    wcs, shape = grid_wcs(scene["peer"])
    tile_of = {e["file"]: e["tile"] for e in truth["exposures"]}
    ntiles = max(tile_of.values()) + 1
    cov = np.zeros((ntiles,) + shape, bool)
    inputs = json.loads((scene["peer"] / "inputs.json").read_text())["inputs"]
    for it in inputs:
        with fits.open(scene["peer"] / it["wht"]) as f:
            good = (f[0].data > 0).astype(np.float32)
            hdr = f[0].header
        # the input pixel area, not only pixel centres: a grid pixel touched by any good pixel counts
        arr, foot = reproject_interp((good, WCS(hdr)), wcs, shape_out=shape, order="bilinear")
        cov[tile_of[Path(it["cal"]).name]] |= (foot > 0) & (np.nan_to_num(arr) > 0)
    for t in range(ntiles):
        cov[t] = binary_dilation(cov[t], iterations=DILATE_PX)
    np.savez_compressed(cache, cov=cov)
    return cov


def faint_mask(truth_grid, truth, pixscale_arcsec):
    """Grid pixels far from every source of the truth sky: the mosaics sit `absolute_offset_arcsec`
    off the truth (the simulated absolute astrometry error, which no tool here corrects), so without
    a mask the sources' misaligned residuals set a floor of ~1e-3 MJy/sr under the seam spread."""
    from scipy.ndimage import maximum_filter
    off = float(np.hypot.reduce([float(x) for x in truth.get("absolute_offset_arcsec") or [0.0]]))
    r = int(np.ceil(off / pixscale_arcsec)) + SOURCE_PAD_PX
    return maximum_filter(np.nan_to_num(truth_grid, nan=np.inf), size=2 * r + 1) < FAINT_MJYSR


def oracle_inputs(scene, truth):
    """The scene's cal files with each exposure's true background (sky + offset) subtracted."""
    od = scene["dir"] / "oracle-cal"
    stamp = od / "done"
    if stamp.exists() and stamp.stat().st_mtime > (scene["dir"] / "simulated.json").stat().st_mtime:
        return od
    od.mkdir(parents=True, exist_ok=True)
    for e in truth["exposures"]:
        with fits.open(scene["sim"] / e["file"]) as f:
            f["SCI"].data = (f["SCI"].data - np.float32(e["background_mjysr"])).astype(np.float32)
            f.writeto(od / e["file"], overwrite=True)
    stamp.write_text("")
    return od


def truth_on_grid(scene):
    from reproject import reproject_interp
    wcs, shape = grid_wcs(scene["peer"])
    with fits.open(scene["sim"] / "truth" / "truth_sky.fits") as f:
        arr, _ = reproject_interp((f[0].data.astype(np.float64), WCS(f[0].header)), wcs, shape_out=shape,
                                  order="bilinear")
    return arr


# ---------------------------------------------------------------------------------------------
# the one scoring function

def score(mosaic, truth_grid, cov, faint, levels=None, truth=None):
    """Seam spread, per-tile rms (and per-exposure level rms when levels {file: level} are given) of
    the mosaic image (a 2-D array on the grid) against the truth sky on the grid: on the faint
    single-tile pixels (the headline numbers) and on all single-tile pixels (`*_all_*`)."""
    if mosaic.shape != truth_grid.shape:
        return {"error": f"mosaic shape {mosaic.shape} is not the grid's {truth_grid.shape}"}
    single = cov.sum(axis=0) == 1
    ok = single & np.isfinite(mosaic) & np.isfinite(truth_grid) & (mosaic != 0)
    resid = mosaic.astype(np.float64) - truth_grid
    out = {}
    for suffix, use in (("", ok & faint), ("_all", ok)):
        med, npx = [], []
        for t in range(cov.shape[0]):
            sel = use & cov[t]
            npx.append(int(sel.sum()))
            med.append(float(np.median(resid[sel])) if sel.sum() > 100 else float("nan"))
        m = np.array(med)
        out[f"tile_medians{suffix}_mjysr"] = med
        out[f"tile_pixels{suffix}"] = npx
        if np.all(np.isfinite(m)):
            out[f"seam_spread{suffix}_mjysr"] = float(m.max() - m.min())
            out[f"tile_rms{suffix}_mjysr"] = float(np.sqrt(np.mean((m - m.mean()) ** 2)))
        else:
            out["error"] = f"a tile has too few single-tile pixels: {npx}"
    if levels and truth:
        est = [(levels.get(e["file"]), e["background_mjysr"]) for e in truth["exposures"]]
        est = [(a, b) for a, b in est if a is not None]
        if est:
            r = np.array([a - b for a, b in est])
            out["exposure_rms_mjysr"] = float(np.sqrt(np.mean((r - r.mean()) ** 2)))
            out["exposures_with_levels"] = len(est)
    return out


def tessera_levels(level_json):
    """Per exposure file: step-1 offset + its tile's step-2 offset + the band sky constant (the level
    tessera subtracts), as tests/integration/level.rs reads it."""
    r = json.loads(Path(level_json).read_text())
    band = r.get("band_sky_mjysr") or 0.0
    out = {}
    for f, v in r["exposure_offsets_mjysr"].items():
        p = f.split("_")
        out[f] = v + r["tile_offsets_mjysr"].get(f"{p[0]}_{p[1]}_{p[3]}", 0.0) + band
    return out


# ---------------------------------------------------------------------------------------------
# runs

def run_tools(args, scene, truth):
    rows = []
    runs = Path(args.work) / "runs"
    env = dict(os.environ)
    env["STPIPE_DISABLE_CRDS_STEPPARS"] = "True"
    for tool in args.tools:
        rd = runs / tool.replace("+", "-")
        if rd.exists():
            shutil.rmtree(rd)
        rd.mkdir(parents=True)
        out = rd / "mosaic.fits"
        if tool in ("tessera", "oracle"):
            threads = max(1, (os.cpu_count() or 1) // 2)
            cal = scene["sim"] if tool == "tessera" else oracle_inputs(scene, truth)
            cmd = ["mpirun", "-n", "2", "--bind-to", "none", HERE / "rank-time", rd / "rss", args.tessera,
                   "--set", f"run.output_dir={toml_str(rd / 'out')}", "--set", f"run.threads={threads}",
                   "--set", "outlier.enabled=false", "--set", "destripe.enabled=false",
                   "--set", "destripe_multi.enabled=false", "--set", "align.enabled=false", "mosaic", cal, "-o", out]
            if tool == "oracle":
                cmd.append("--no-level")
            prefix = rd / "rss"
            ext = "SCI"
        elif tool.startswith("jwst-"):
            cmd = [sys.executable, HERE / "run_jwst.py", scene["jwst"], out, "--no-outlier",
                   "--skymatch", tool[len("jwst-"):]]
            prefix, ext = None, "SCI"
        else:
            cmd = [sys.executable, HERE / "run_reproject.py", scene["peer"], out, "--match-background"]
            prefix, ext = None, 0
        log(f"[quality] {LABELS[tool]} ...")
        row = {"tool": tool, "label": LABELS[tool]}
        row.update(run_timed(cmd, rd, args.timeout, env=env, rank_prefix=prefix))
        if row["status"].startswith("ok") and not out.exists():
            row["status"] = "failed: exited 0 but wrote no mosaic.fits"
        log(f"[quality] {LABELS[tool]}: {row['status']} {row.get('wall_s', 0):.1f} s")
        row["_out"], row["_ext"], row["_dir"] = out, ext, rd
        rows.append(row)
    return rows


def table(rows):
    ok = [r for r in rows if r.get("seam_spread_mjysr") is not None]
    tess = next((r for r in ok if r["tool"] == "tessera"), None)
    peers = [r for r in ok if r["tool"] in PEERS]
    best = min(peers, key=lambda r: r["seam_spread_mjysr"]) if peers else None
    L = ["| tool | seam spread MJy/sr | per-tile rms MJy/sr | per-exposure level rms MJy/sr | "
         "best peer's seam spread / this | seam spread, sources kept, MJy/sr | wall s | status |",
         "|---|--:|--:|--:|--:|--:|--:|---|"]
    for r in rows:
        good = r.get("seam_spread_mjysr") is not None
        ratio = ""
        if good and best is not None and r["seam_spread_mjysr"] > 0:
            ratio = f"{best['seam_spread_mjysr'] / r['seam_spread_mjysr']:.1f}"
        exp = r.get("exposure_rms_mjysr")
        if r["tool"] == "oracle":
            exp_s = "0 (by construction)"
        elif r["tool"] == "reproject":
            exp_s = "not exposed"
        else:
            exp_s = "" if exp is None else f"{exp:.5f}"
        L.append(f"| {r['label']} | " + (f"{r['seam_spread_mjysr']:.5f} | {r['tile_rms_mjysr']:.5f}" if good else " | ")
                 + f" | {exp_s} | {ratio} | " + (f"{r['seam_spread_all_mjysr']:.5f}" if good else "") + " | "
                 + (f"{r['wall_s']:.1f}" if r.get("wall_s") and r["status"].startswith("ok") else "")
                 + f" | {r['status'].replace('|', '/')} |")
    summary = None
    if tess is not None and best is not None:
        x = best["seam_spread_mjysr"] / max(tess["seam_spread_mjysr"], 1e-12)
        summary = {"best_peer": best["tool"], "ratio": x, "met": x >= 5.0}
        floor = next((r for r in ok if r["tool"] == "oracle"), None)
        if floor is not None:
            summary["floor_ratio"] = best["seam_spread_mjysr"] / max(floor["seam_spread_mjysr"], 1e-12)
    return "\n".join(L), summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tessera", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--md", default="")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--keep-outputs", action="store_true")
    args = ap.parse_args()
    args.tools = [t for t in args.tools.split(",") if t]
    # the runs start in their own folders: every path absolute
    args.work = str(Path(args.work).resolve())
    args.tessera = str(Path(args.tessera).resolve())
    for t in args.tools:
        if t not in TOOLS:
            ap.error(f"unknown tool '{t}' ({', '.join(TOOLS)})")
    t0 = time.perf_counter()
    scene = prepare(args)
    truth = json.loads((scene["sim"] / "truth" / "truth.json").read_text())
    tg = truth_on_grid(scene)
    cov = tile_coverage(scene, truth)
    pixscale = json.loads((scene["peer"] / "grid.json").read_text())["pixscale_arcsec"]
    faint = faint_mask(tg, truth, pixscale)
    rows = run_tools(args, scene, truth)
    for r in rows:
        if not r["status"].startswith("ok"):
            continue
        levels = None
        if r["tool"] == "tessera":
            lj = r["_dir"] / "out" / "level" / "level.json"
            levels = tessera_levels(lj) if lj.exists() else None
        elif r["tool"].startswith("jwst-"):
            levels = (r.get("inner") or {}).get("sky_levels")
        with fits.open(r["_out"]) as f:
            img = f[r["_ext"]].data
        r.update(score(img, tg, cov, faint, levels, truth))
        if r.get("error"):
            r["status"] = f"failed: {r['error']}"
        if levels is not None:
            r["exposure_levels_mjysr"] = levels
    for r in rows:
        d = r.pop("_dir")
        r.pop("_out"), r.pop("_ext")
        r.pop("inner", None) if r["tool"] == "tessera" else None
        if not args.keep_outputs:
            for f in list(d.glob("*.fits")) + [d / "out"]:
                shutil.rmtree(f, ignore_errors=True) if f.is_dir() else f.unlink(missing_ok=True)
    md, summary = table(rows)
    offs = [e["offset_mjysr"] for e in truth["exposures"]]
    res = {"scene": {"simulate": [*SIM_ARGS, "--seed", args.seed, *[f"--set {kv}" for kv in SIM_SETS]],
                     "n_exposures": len(truth["exposures"]),
                     "injected_offset_rms_mjysr": float(np.std(offs)),
                     "injected_offset_spread_mjysr": float(max(offs) - min(offs)),
                     "single_tile_pixels": [int(((cov.sum(0) == 1) & cov[t]).sum()) for t in range(cov.shape[0])],
                     "faint_single_tile_pixels": [int(((cov.sum(0) == 1) & cov[t] & faint).sum())
                                                  for t in range(cov.shape[0])],
                     "coverage_dilation_px": DILATE_PX, "faint_mjysr": FAINT_MJYSR,
                     "absolute_offset_arcsec": truth.get("absolute_offset_arcsec")},
           "rows": rows, "summary": summary, "table_md": md, "total_s": time.perf_counter() - t0}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    if args.md:
        Path(args.md).write_text(md + "\n")
    print(md)
    if summary:
        print(f"\nbest peer ({summary['best_peer']}) seam spread / tessera's: {summary['ratio']:.1f}x "
              f"({'met' if summary['met'] else 'NOT met'}, target >= 5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

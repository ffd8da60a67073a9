#!/usr/bin/env python3
"""quality.py --tessera BIN --work DIR --json OUT.json [--md OUT.md] [--seed N] [--timeout S]
[--scenes nircam,miri,miri-const] [--tools tessera,tessera-plane,jwst-match,jwst-global+match,reproject,oracle]
[--keep-outputs]: the level matching quality tables of scripts/bench (scripts/bench --quality runs it
and puts the tables in BENCHMARKS.md).

Run it with the bench venv's python (numpy, scipy, astropy, reproject, jwst). Two simulated scenes
(SCENES below), each with nothing to correct but background levels (no stripes, no pointing errors):
  nircam  `tessera simulate --instrument nircam_lw --filter F300M --tiles 2x2 --dithers 4 --size small`
          with per-exposure offsets of 0.1 MJy/sr rms: the easy scene (constant offsets only).
  miri    `tessera simulate --instrument miri --filter F770W --tiles 2x2 --dithers 4 --size small`
          with the MIRI defaults (per-exposure offsets of 0.4 MJy/sr rms, the Lyot box 1 MJy/sr
          above the imager field, a thermal background drifting 2 % a day, two off-source exposures
          per tile) and a background plane per tile rising 0.05 MJy/sr across the tile: the scene
          issue 4 describes ("injected offsets 0.1 to 1 MJy/sr"); no absolute astrometric offset.
  miri-const  the same without the tile planes.
On each, on the same inputs and onto the same output grid (`tessera plan --json`), with no outlier
rejection anywhere, it runs:
  tessera            mpirun -n 2 tessera mosaic (prep and level matching on, their defaults, tile
                     constants; outlier.enabled=false)
  tessera-plane      the same with level.tile_fit="plane" (scenes with tile planes only)
  jwst-match         JWST SkyMatchStep(skymethod="match") + ResampleStep (run_jwst.py --skymatch)
  jwst-global+match  the same with skymethod="global+match"
  reproject          reproject_and_coadd(reproject_interp, match_background=True) (run_reproject.py)
  oracle             the floor of the metrics: the cal files minus each exposure's true background
                     (offset, sky, tile plane, Lyot level), mosaicked by tessera --no-prep --no-level
each timed with GNU time (bench.py's run_timed; the inputs are prepared untimed with prep_peers.py and
prep_jwst.py and cached under --work/<scene>), scores every mosaic with one function (`score`), and
writes OUT.json plus one markdown table per scene (stdout, and --md).

Metrics (MJy/sr), all on the residual r = mosaic - truth sky (bilinearly resampled onto the grid), on
one pixel set for every tool: grid pixels covered by the inputs, away from sources (`faint_mask`:
the simulated absolute pointing offset, which no tool here corrects, puts the mosaics ~0.35" off the
truth, and the misaligned sources alone give a spread of ~1e-3 MJy/sr). Tile coverage is computed once
from the inputs (each input's usable pixels reprojected onto the grid, OR-ed per tile, dilated by
DILATE_PX so pixels next to another tile's edge count as shared).
  seam spread      for every tile, the median of r over the grid pixels covered by that tile only;
                   max - min over the tiles (the issue's "spread of the median residual across tiles").
                   It only sees a tile's mean level: a plane left across a tile whose median is right
                   is invisible to it. Also reported without the source mask (`seam_spread_all_mjysr`).
  per-tile rms     rms of the same per-tile medians about their mean.
  boundary boxes   the grid is cut into BOX_PX x BOX_PX boxes; a box is on a tile boundary when its
                   faint covered pixels (at least BOX_MIN_FRAC of the box) have two or more tile
                   coverage sets (which tiles cover a pixel), each on at least BOX_MIN_SET_FRAC of them.
                   Box value: the median of r over its faint covered pixels. One band-wide plane
                   (least squares in grid x, y over the boxes) is removed first, for every tool alike:
                   relative level matching cannot know it (with tile planes the reference tile's plane
                   is the gauge). Reported: the rms of what is left over the boxes (`box_rms_mjysr`),
                   and max - min (`box_spread_mjysr`). This sees steps and gradients along the seams.
  level rms        "background error" per exposure: where the tool reports per-exposure levels
                   (tessera: level.json exposure offset + tile offset or plane + band sky; SkyMatch:
                   meta.background.level; reproject: the corrections its solve_corrections_sgd returned,
                   recorded by run_reproject.py), the rms about its mean over the exposures of (level at
                   the exposure's centre - true background there: background_mjysr + tile plane), about
                   a band-wide plane in the exposure centres' positions (as for the boxes; about the
                   mean only: `exposure_rms_about_mean_mjysr`). SkyMatch gives every detector of an
                   exposure one level (one sky group), as the simulator does.
  absolute level   median of r over all faint covered pixels: the background left in the mosaic (the
                   sum of the truth's sky and offsets is ~0.25 NIRCam, ~2 MIRI); tools that subtract no
                   absolute sky leave the mean background in. Emission fills the field, so a sky taken
                   from the data (tessera's band sky, SkyMatch's global) removes some of it too.
"""
import json
import math
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
from bench import choices, log, run_quiet, run_timed, section_args, section_parser, sh, toml_str  # noqa: E402
from tables import write_json  # noqa: E402

SCENES = {
    "nircam": {
        "title": "NIRCam LW, per-exposure offsets only",
        "simulate": ["--instrument", "nircam_lw", "--filter", "F300M", "--tiles", "2x2", "--dithers", "4",
                     "--size", "small"],
        "sets": ["simulate.background_offset_mjysr=0.1", "simulate.stripe_rms_mjysr=0.0",
                 "simulate.pointing_error_arcsec=0.0"],
        "mask": "faint",
        "why": "the easy case, the scene of the first quality table: constant per-exposure offsets of 0.1 MJy/sr "
               "rms (five times the simulator's NIRCam default) under the simulated galaxy, nothing else.",
    },
    "miri": {
        "title": "MIRI F770W, offsets 0.1-1 MJy/sr, Lyot level, drifting background, tile planes",
        "simulate": ["--instrument", "miri", "--filter", "F770W", "--tiles", "2x2", "--dithers", "4",
                     "--size", "small"],
        "sets": ["simulate.tile_plane_mjysr=0.05", "simulate.pointing_error_arcsec=0.0",
                 "simulate.absolute_offset_arcsec=0.0", "simulate.absolute_rotation_deg=0.0"],
        "mask": "compact",
        "why": "what issue 4 describes and PHANGS MIRI fields look like: the simulator's MIRI defaults "
               "(per-exposure offsets of 0.4 MJy/sr rms, so 0.1 to 1 MJy/sr between exposures; the Lyot "
               "box 1 MJy/sr above the imager field, on the real focal-plane layout; the thermal background "
               "drifting 2 % a day, with two off-source exposures per tile) plus a background plane per tile rising 0.05 MJy/sr across "
               "the tile in a random direction (the plane of the issue's plane-fitting target). No stripes, "
               "no pointing errors, and no absolute astrometric offset: no tool here corrects it, and on "
               "MIRI's bright extended emission an offset from the truth leaves residuals that have nothing "
               "to do with level matching.",
    },
    "miri-const": {
        "title": "MIRI F770W, offsets 0.1-1 MJy/sr, Lyot level, drifting background, no planes",
        "simulate": ["--instrument", "miri", "--filter", "F770W", "--tiles", "2x2", "--dithers", "4",
                     "--size", "small"],
        "sets": ["simulate.pointing_error_arcsec=0.0", "simulate.absolute_offset_arcsec=0.0",
                 "simulate.absolute_rotation_deg=0.0"],
        "mask": "compact",
        "why": "the miri scene without its tile planes (the issue's MIRI scene as written: constant offsets "
               "only, with the Lyot level and the drifting background), to tell what the planes do from "
               "what MIRI's large offsets and Lyot box do.",
    },
}
TOOLS = ["tessera", "tessera-plane", "jwst-match", "jwst-global+match", "reproject", "oracle"]
PEERS = ["jwst-match", "jwst-global+match", "reproject"]
LABELS = {
    "oracle": "floor: true levels subtracted, tessera --no-level",
    "tessera": "tessera (level matching, tile constants), 2 ranks",
    "tessera-plane": "tessera (level matching, tile planes), 2 ranks",
    "jwst-match": "JWST SkyMatchStep match + ResampleStep",
    "jwst-global+match": "JWST SkyMatchStep global+match + ResampleStep",
    "reproject": "reproject_and_coadd(match_background=True)",
}
SHORT = {"tessera": "tessera with tile constants", "tessera-plane": "tessera with tile planes"}
DILATE_PX = 2
# Source mask: grid pixels within this many px (plus the simulated absolute pointing offset) of a
# truth-sky pixel brighter than FAINT_MJYSR are left out of the medians.
FAINT_MJYSR = 0.003
SOURCE_PAD_PX = 1
# Compact-source mask (scenes whose emission fills the field, where a brightness cut would leave no
# pixel): grid pixels within COMPACT_PAD_PX (plus the absolute offset) of a pixel where the truth
# minus its median over COMPACT_SMOOTH_PX x COMPACT_SMOOTH_PX exceeds COMPACT_MJYSR are left out, so
# the resampling kernels' different responses to point sources do not enter the medians.
COMPACT_MJYSR = 0.01
COMPACT_SMOOTH_PX = 9
COMPACT_PAD_PX = 3
# Boundary boxes
BOX_PX = 32
BOX_MIN_FRAC = 0.25
BOX_MIN_SET_FRAC = 0.1


def run_peer(tag, tool, label, cmd, out, rd, args, env=None, prefix=None):
    """One timed run of a tool that writes `out` (mosaic.fits): the row of run_timed, with a failure
    when the tool exits 0 without writing it; logged as `[tag] label`."""
    log(f"[{tag}] {label} ...")
    row = {"tool": tool, "label": label}
    row.update(run_timed(cmd, rd, args.timeout, env=env, rank_prefix=prefix))
    if row["status"].startswith("ok") and not out.exists():
        row["status"] = "failed: exited 0 but wrote no mosaic.fits"
    log(f"[{tag}] {label}: {row['status']} {row.get('wall_s', 0):.1f} s")
    return row

def has_planes(scene_name):
    return any(kv.startswith("simulate.tile_plane_mjysr=") and float(kv.split("=")[1]) > 0
               for kv in SCENES[scene_name]["sets"])


# ---------------------------------------------------------------------------------------------
# scene and inputs (untimed, cached)

def prepare(args, name):
    """Simulate, plan, prepare the peers' inputs; return the scene folder's paths."""
    sc = SCENES[name]
    d = Path(args.work) / name / "scene"
    sim = d / "cal"
    stamp = d / "simulated.json"
    sets = [x for kv in sc["sets"] for x in ("--set", kv)]
    cmd = [args.tessera, *sets, "simulate", *sc["simulate"], "--seed", str(args.seed), "--out", str(sim)]
    key = {"args": [str(c) for c in cmd[1:]], "tessera": sh([args.tessera, "--version"])}
    if not (stamp.exists() and json.loads(stamp.read_text()) == key and any(sim.glob("*_cal.fits"))):
        if sim.exists():
            shutil.rmtree(sim)
        d.mkdir(parents=True, exist_ok=True)
        run_quiet(["mpirun", "-n", str(min(2, os.cpu_count() or 1)), "--bind-to", "none"] + cmd,
                  f"simulate the quality scene {name}")
        stamp.write_text(json.dumps(key))
        for p in (d / "plan.json", d / "coverage.npz"):
            p.unlink(missing_ok=True)
    pj = d / "plan.json"
    if not pj.exists():
        run_quiet([args.tessera, "--set", f"run.output_dir={toml_str(d / 'plan-out')}", "plan", sim,
                   "--json", pj, "--ranks", "2"], f"plan the quality scene {name}")
    run_quiet([sys.executable, HERE / "prep_peers.py", sim, pj, d / "peer"], f"prepare peer inputs ({name})")
    if any(t.startswith("jwst") for t in args.tools):
        run_quiet([sys.executable, HERE / "prep_jwst.py", d / "peer", d / "jwst"], f"prepare JWST models ({name})")
    return {"name": name, "dir": d, "sim": sim, "plan": pj, "peer": d / "peer", "jwst": d / "jwst",
            "runs": Path(args.work) / name / "runs"}


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
    tile_of = {e["file"]: e["tile"] for e in truth["exposures"] if not e["is_off"]}
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


def faint_mask(truth_grid, truth, pixscale_arcsec, kind="faint"):
    """Grid pixels kept by the metrics. "faint": far from every source of the truth sky (the mosaics
    sit `absolute_offset_arcsec` off the truth, the simulated absolute astrometry error, which no tool
    here corrects; without a mask the sources' misaligned residuals set a floor of ~1e-3 MJy/sr under
    the seam spread). "compact": away from compact sources only (see COMPACT_MJYSR), for scenes whose
    extended emission fills the field."""
    from scipy.ndimage import maximum_filter, median_filter
    off = float(np.hypot.reduce([float(x) for x in truth.get("absolute_offset_arcsec") or [0.0]]))
    if kind == "faint":
        r = int(np.ceil(off / pixscale_arcsec)) + SOURCE_PAD_PX
        return maximum_filter(np.nan_to_num(truth_grid, nan=np.inf), size=2 * r + 1) < FAINT_MJYSR
    r = int(np.ceil(off / pixscale_arcsec)) + COMPACT_PAD_PX
    t = np.nan_to_num(truth_grid, nan=0.0)
    hp = np.where(np.isfinite(truth_grid), t - median_filter(t, size=COMPACT_SMOOTH_PX), np.inf)
    return maximum_filter(hp, size=2 * r + 1) < COMPACT_MJYSR


def tangent_arcsec(target_deg, ra_deg, dec_deg):
    """Gnomonic standard coordinates (xi east, eta north) in arcsec about target_deg, as the simulator's
    sky_to_tangent_arcsec."""
    a0, d0 = np.radians(target_deg[0]), np.radians(target_deg[1])
    a, d = np.radians(ra_deg), np.radians(dec_deg)
    den = np.sin(d) * np.sin(d0) + np.cos(d) * np.cos(d0) * np.cos(a - a0)
    xi = np.cos(d) * np.sin(a - a0) / den
    eta = (np.sin(d) * np.cos(d0) - np.cos(d) * np.sin(d0) * np.cos(a - a0)) / den
    k = math.degrees(1.0) * 3600.0
    return xi * k, eta * k


def true_wcs(e):
    """The exposure's true TAN-SIP WCS (truth.json `true_wcs`) as an astropy WCS (0-based pixels in
    all_pix2world(..., 0))."""
    w = e["true_wcs"]
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN-SIP", "DEC--TAN-SIP"
    h["CRPIX1"], h["CRPIX2"] = w["crpix"]
    h["CRVAL1"], h["CRVAL2"] = w["crval_deg"]
    (h["CD1_1"], h["CD1_2"]), (h["CD2_1"], h["CD2_2"]) = w["cd"]
    for name in ("a", "b"):
        poly = w[name]
        h[f"{name.upper()}_ORDER"] = poly["order"]
        for p, row in enumerate(poly["coeffs"]):
            for q, c in enumerate(row):
                if c != 0.0 and p + q <= poly["order"]:
                    h[f"{name.upper()}_{p}_{q}"] = c
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return WCS(h)


def true_level_at_centre(e, target):
    """What was added to the exposure at its centre (CRVAL of the true WCS): background + tile plane."""
    xi, eta = tangent_arcsec(target, *e["true_wcs"]["crval_deg"])
    p = e.get("plane") or [0.0, 0.0, 0.0]
    return e["background_mjysr"] + p[0] + p[1] * xi + p[2] * eta


def oracle_inputs(scene, truth):
    """The scene's cal files with each exposure's true background (sky + offset, the tile plane at each
    pixel through the true WCS, the Lyot level in the Lyot box) subtracted."""
    od = scene["dir"] / "oracle-cal"
    stamp = od / "done"
    if stamp.exists() and stamp.stat().st_mtime > (scene["dir"] / "simulated.json").stat().st_mtime:
        return od
    od.mkdir(parents=True, exist_ok=True)
    target = truth["target_deg"]
    for e in truth["exposures"]:
        if e["is_off"]:
            continue
        with fits.open(scene["sim"] / e["file"]) as f:
            sci = f["SCI"].data.astype(np.float64)
            bg = np.full(sci.shape, e["background_mjysr"])
            p = e.get("plane") or [0.0, 0.0, 0.0]
            if p != [0.0, 0.0, 0.0]:
                ys, xs = np.mgrid[0:sci.shape[0], 0:sci.shape[1]]
                ra, dec = true_wcs(e).all_pix2world(xs.ravel().astype(float), ys.ravel().astype(float), 0)
                xi, eta = tangent_arcsec(target, ra, dec)
                bg += (p[0] + p[1] * xi + p[2] * eta).reshape(sci.shape)
            if e.get("lyot_box") and e.get("lyot_offset_mjysr"):
                y0, y1, x0, x1 = e["lyot_box"]
                bg[y0:y1, x0:x1] += e["lyot_offset_mjysr"]
            f["SCI"].data = (sci - bg).astype(np.float32)
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


def boxes_of(cov, faint):
    """(all, boundary): the BOX_PX x BOX_PX boxes [(y0, x0, mask)] with at least BOX_MIN_FRAC of their
    pixels faint and covered, and of those the ones on a tile boundary (see the docstring); from the
    coverage only, so the same boxes for every tool."""
    sig = np.zeros(cov.shape[1:], np.int64)
    for t in range(cov.shape[0]):
        sig |= cov[t].astype(np.int64) << t
    use = (sig > 0) & faint
    ny, nx = sig.shape
    every, boundary = [], []
    for y0 in range(0, ny - BOX_PX + 1, BOX_PX):
        for x0 in range(0, nx - BOX_PX + 1, BOX_PX):
            u = use[y0:y0 + BOX_PX, x0:x0 + BOX_PX]
            n = int(u.sum())
            if n < BOX_MIN_FRAC * BOX_PX * BOX_PX:
                continue
            every.append((y0, x0, u))
            _, counts = np.unique(sig[y0:y0 + BOX_PX, x0:x0 + BOX_PX][u], return_counts=True)
            if (counts >= BOX_MIN_SET_FRAC * n).sum() >= 2:
                boundary.append((y0, x0, u))
    return every, boundary


def box_medians(resid, valid, boxes):
    vals, xy = [], []
    for y0, x0, u in boxes:
        sel = u & valid[y0:y0 + BOX_PX, x0:x0 + BOX_PX]
        if sel.sum() >= BOX_MIN_FRAC * BOX_PX * BOX_PX:
            vals.append(float(np.median(resid[y0:y0 + BOX_PX, x0:x0 + BOX_PX][sel])))
            xy.append((x0 + 0.5 * (BOX_PX - 1), y0 + 0.5 * (BOX_PX - 1)))
    return np.array(vals), np.array(xy).reshape(-1, 2)


# ---------------------------------------------------------------------------------------------
# the one scoring function

def score(mosaic, truth_grid, cov, faint, boxes, levels=None, truth=None):
    """Every metric of the docstring for one mosaic (a 2-D array on the grid); boxes = boxes_of(...);
    levels {file: level} when the tool reports per-exposure levels."""
    if mosaic.shape != truth_grid.shape:
        return {"error": f"mosaic shape {mosaic.shape} is not the grid's {truth_grid.shape}"}
    covered = cov.any(axis=0)
    single = cov.sum(axis=0) == 1
    valid = np.isfinite(mosaic) & np.isfinite(truth_grid) & (mosaic != 0)
    ok = single & valid
    resid = mosaic.astype(np.float64) - truth_grid
    out = {}
    # the band-wide plane: least squares over the medians of every box
    v, xy = box_medians(resid, valid, boxes[0])
    flat = resid
    if len(v) >= 6:
        a = np.column_stack([np.ones(len(v)), xy])
        coef, *_ = np.linalg.lstsq(a, v, rcond=None)
        out["band_plane"] = [float(c) for c in coef]
        ys, xs = np.mgrid[0:resid.shape[0], 0:resid.shape[1]]
        flat = resid - (coef[0] + coef[1] * xs + coef[2] * ys)
    for suffix, use, r in (("", ok & faint, resid), ("_all", ok, resid), ("_flat", ok & faint, flat)):
        med, npx = [], []
        for t in range(cov.shape[0]):
            sel = use & cov[t]
            npx.append(int(sel.sum()))
            med.append(float(np.median(r[sel])) if sel.sum() > 100 else float("nan"))
        m = np.array(med)
        out[f"tile_medians{suffix}_mjysr"] = med
        out[f"tile_pixels{suffix}"] = npx
        if np.all(np.isfinite(m)):
            out[f"seam_spread{suffix}_mjysr"] = float(m.max() - m.min())
            out[f"tile_rms{suffix}_mjysr"] = float(np.sqrt(np.mean((m - m.mean()) ** 2)))
        else:
            out["error"] = f"a tile has too few single-tile pixels: {npx}"
    if "band_plane" in out:
        v, _ = box_medians(flat, valid, boxes[1])
        out["boxes"] = len(v)
        if len(v) >= 2:
            out["box_rms_mjysr"] = float(np.sqrt(np.mean((v - v.mean()) ** 2)))
            out["box_spread_mjysr"] = float(v.max() - v.min())
    sel = covered & valid & faint
    if sel.sum() > 100:
        out["absolute_level_mjysr"] = float(np.median(resid[sel]))
    if levels and truth:
        target = truth["target_deg"]
        est = [(levels.get(e["file"]), true_level_at_centre(e, target),
                *tangent_arcsec(target, *e["true_wcs"]["crval_deg"])) for e in truth["exposures"] if not e["is_off"]]
        est = np.array([x for x in est if x[0] is not None], dtype=float).reshape(-1, 4)
        if len(est):
            r = est[:, 0] - est[:, 1]
            out["exposure_rms_about_mean_mjysr"] = float(np.sqrt(np.mean((r - r.mean()) ** 2)))
            out["exposure_rms_mjysr"] = out["exposure_rms_about_mean_mjysr"]
            if len(r) >= 6:
                # about a band-wide plane in the exposure centres' positions, as the other metrics
                a = np.column_stack([np.ones(len(r)), est[:, 2], est[:, 3]])
                coef, *_ = np.linalg.lstsq(a, r, rcond=None)
                out["exposure_rms_mjysr"] = float(np.sqrt(np.mean((r - a @ coef) ** 2)))
            out["exposures_with_levels"] = len(r)
    return out


def tessera_levels(level_json, truth, grid, prep_json=None):
    """Per exposure file, the level tessera subtracts at the exposure's centre: the MIRI off-source
    background prep subtracted (its median, prep.json) + step-1 offset + its tile's step-2 offset (or
    plane, evaluated at the exposure's centre on the grid) + the band sky, as
    tests/integration/level.rs reads level.json."""
    r = json.loads(Path(level_json).read_text())
    prep = {}
    if prep_json is not None and Path(prep_json).exists():
        for e in json.loads(Path(prep_json).read_text()).get("exposures", []):
            if e.get("background_median_mjysr") is not None:
                prep[e["file"]] = float(e["background_median_mjysr"])
    band = r.get("band_sky_mjysr") or 0.0
    planes = r.get("tile_planes") or {}
    ox, oy = (r.get("plane_origin_xy") or [0.0, 0.0])[:2]
    centre = {e["file"]: e["true_wcs"]["crval_deg"] for e in truth["exposures"]}
    out = {}
    for f, v in r["exposure_offsets_mjysr"].items():
        p = f.split("_")
        key = f"{p[0]}_{p[1]}_{p[3]}"
        if key in planes and f in centre:
            x, y = grid.all_world2pix([centre[f][0]], [centre[f][1]], 0)
            c = planes[key]
            tile = c[0] + c[1] * (float(x[0]) - ox) + c[2] * (float(y[0]) - oy)
        else:
            tile = r["tile_offsets_mjysr"].get(key, 0.0)
        out[f] = prep.get(f, 0.0) + v + tile + band
    return out


# ---------------------------------------------------------------------------------------------
# runs

def tools_for(scene_name, tools):
    return [t for t in tools if t != "tessera-plane" or has_planes(scene_name)]


def run_tools(args, scene, truth):
    rows = []
    env = dict(os.environ)
    env["STPIPE_DISABLE_CRDS_STEPPARS"] = "True"
    for tool in tools_for(scene["name"], args.tools):
        rd = scene["runs"] / tool.replace("+", "-")
        if rd.exists():
            shutil.rmtree(rd)
        rd.mkdir(parents=True)
        out = rd / "mosaic.fits"
        if tool in ("tessera", "tessera-plane", "oracle"):
            threads = max(1, (os.cpu_count() or 1) // 2)
            cal = oracle_inputs(scene, truth) if tool == "oracle" else scene["sim"]
            cmd = ["mpirun", "-n", "2", "--bind-to", "none", HERE / "rank-time", rd / "rss", args.tessera,
                   "--set", f"run.output_dir={toml_str(rd / 'out')}", "--set", f"run.threads={threads}",
                   "--set", "outlier.enabled=false", "--set", "destripe.enabled=false",
                   "--set", "destripe_multi.enabled=false", "--set", "align.enabled=false"]
            if tool == "tessera-plane":
                cmd += ["--set", 'level.tile_fit="plane"']
            cmd += ["mosaic", cal, "-o", out]
            if tool == "oracle":
                cmd += ["--no-prep", "--no-level"]
            prefix = rd / "rss"
            ext = "SCI"
        elif tool.startswith("jwst-"):
            cmd = [sys.executable, HERE / "run_jwst.py", scene["jwst"], out, "--no-outlier",
                   "--skymatch", tool[len("jwst-"):]]
            prefix, ext = None, "SCI"
        else:
            cmd = [sys.executable, HERE / "run_reproject.py", scene["peer"], out, "--match-background"]
            prefix, ext = None, 0
        row = run_peer(f"quality {scene['name']}", tool, LABELS[tool], cmd, out, rd, args, env, prefix)
        row["_out"], row["_ext"], row["_dir"] = out, ext, rd
        rows.append(row)
    return rows


def fmt(x, nd=5):
    return "" if x is None else f"{x:.{nd}f}"


METRICS = [("seam_spread_mjysr", "seam spread"), ("seam_spread_flat_mjysr", "seam spread, band plane removed"),
           ("box_rms_mjysr", "boundary-box rms")]


def summarize(rows):
    """Per metric: the best peer, and for every tessera row and the floor, best peer / row."""
    ok = [r for r in rows if r["status"].startswith("ok")]
    peers = [r for r in ok if r["tool"] in PEERS]
    s = {}
    for key, _ in METRICS:
        ps = [r for r in peers if r.get(key) is not None]
        if not ps:
            continue
        best = min(ps, key=lambda r: r[key])
        e = {"best_peer": best["tool"], "best_peer_value": best[key], "rows": {}}
        for r in ok:
            if r.get(key) is not None and (r["tool"].startswith("tessera") or r["tool"] == "oracle"):
                x = best[key] / max(r[key], 1e-12)
                e["rows"][r["tool"]] = {"value": r[key], "ratio": x, "met": x >= 5.0}
        s[key] = e
    return s


def table(rows):
    summ = summarize(rows)

    def ratio(r, key):
        e = summ.get(key)
        if e is None or r.get(key) is None or r[key] <= 0:
            return ""
        return f"{e['best_peer_value'] / r[key]:.1f}"
    L = ["| tool | seam spread | best peer / this | seam spread, band plane removed | best peer / this | "
         "boundary-box rms | best peer / this | boundary-box max - min | per-exposure level rms | absolute level | "
         "seam spread, sources kept | wall s | status |",
         "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for r in rows:
        good = r.get("seam_spread_mjysr") is not None
        exp = r.get("exposure_rms_mjysr")
        if r["tool"] == "oracle":
            exp_s = "0 (by construction)"
        else:
            exp_s = "not reported" if exp is None else f"{exp:.5f}"
        cells = [r["label"],
                 fmt(r.get("seam_spread_mjysr")), ratio(r, "seam_spread_mjysr"),
                 fmt(r.get("seam_spread_flat_mjysr")), ratio(r, "seam_spread_flat_mjysr"),
                 fmt(r.get("box_rms_mjysr")), ratio(r, "box_rms_mjysr"),
                 fmt(r.get("box_spread_mjysr")), exp_s if good else "",
                 fmt(r.get("absolute_level_mjysr"), 4), fmt(r.get("seam_spread_all_mjysr")),
                 f"{r['wall_s']:.1f}" if r.get("wall_s") and r["status"].startswith("ok") else "",
                 r["status"].replace("|", "/")]
        L.append("| " + " | ".join(cells) + " |")
    return "\n".join(L)


def summary_lines(summ):
    """Markdown bullets: per metric, best peer / each tessera row against the 5x target, and the floor."""
    out = []
    for key, name in METRICS:
        e = (summ or {}).get(key)
        if not e:
            continue
        parts = []
        for tool, v in e["rows"].items():
            if tool == "oracle":
                continue
            parts.append(f"{SHORT[tool]}: {v['ratio']:.1f}x ({'met' if v['met'] else 'NOT met'})")
        fl = e["rows"].get("oracle")
        out.append(f"- {name}, best peer ({e['best_peer']}, {e['best_peer_value']:.5f}) over tessera's (target >= 5x): "
                   + "; ".join(parts)
                   + (f"; over the floor's: {fl['ratio']:.1f}x (the most any level matching could show"
                      + (": below 5x, so this metric cannot show the target on this scene)" if fl["ratio"] < 5.0 else ")")
                      if fl else "")
                   + ".")
    return out


def run_scene(args, name):
    scene = prepare(args, name)
    truth = json.loads((scene["sim"] / "truth" / "truth.json").read_text())
    tg = truth_on_grid(scene)
    cov = tile_coverage(scene, truth)
    gw, _ = grid_wcs(scene["peer"])
    pixscale = json.loads((scene["peer"] / "grid.json").read_text())["pixscale_arcsec"]
    faint = faint_mask(tg, truth, pixscale, SCENES[name]["mask"])
    boxes = boxes_of(cov, faint)
    rows = run_tools(args, scene, truth)
    for r in rows:
        if not r["status"].startswith("ok"):
            continue
        levels = None
        if r["tool"].startswith("tessera"):
            lj = r["_dir"] / "out" / "level" / "level.json"
            levels = tessera_levels(lj, truth, gw, r["_dir"] / "out" / "prep" / "prep.json") if lj.exists() else None
        elif r["tool"] in PEERS:
            levels = (r.get("inner") or {}).get("sky_levels")
        with fits.open(r["_out"]) as f:
            img = f[r["_ext"]].data
        r.update(score(img, tg, cov, faint, boxes, levels, truth))
        if r.get("error"):
            r["status"] = f"failed: {r['error']}"
        if levels is not None:
            r["exposure_levels_mjysr"] = levels
    for r in rows:
        d = r.pop("_dir")
        r.pop("_out"), r.pop("_ext")
        if r["tool"].startswith("tessera"):
            r.pop("inner", None)
        if not args.keep_outputs:
            for f in list(d.glob("*.fits")) + [d / "out"]:
                shutil.rmtree(f, ignore_errors=True) if f.is_dir() else f.unlink(missing_ok=True)
    sci = [e for e in truth["exposures"] if not e["is_off"]]
    offs = [e["offset_mjysr"] for e in sci]
    planes = [math.hypot(e["plane"][1], e["plane"][2]) for e in sci if e.get("plane")]
    sc = SCENES[name]
    info = {"name": name, "title": sc["title"], "why": sc["why"],
            "simulate": [*sc["simulate"], "--seed", args.seed, *[f"--set {kv}" for kv in sc["sets"]]],
            "instrument": truth["config"]["instrument"],
            "n_exposures": len(sci), "n_off_exposures": len(truth["exposures"]) - len(sci),
            "detectors_per_exposure": len({e["detector"] for e in sci}),
            "injected_offset_rms_mjysr": float(np.std(offs)),
            "injected_offset_spread_mjysr": float(max(offs) - min(offs)),
            "background_mjysr": [float(min(e["background_mjysr"] for e in sci)),
                                 float(max(e["background_mjysr"] for e in sci))],
            "lyot_offset_mjysr": float(max(e.get("lyot_offset_mjysr") or 0.0 for e in sci)),
            "tile_plane_gradient_mjysr_per_arcsec": float(max(planes)) if planes else 0.0,
            "grid_pixscale_arcsec": pixscale, "grid_shape": list(tg.shape),
            "single_tile_pixels": [int(((cov.sum(0) == 1) & cov[t]).sum()) for t in range(cov.shape[0])],
            "faint_single_tile_pixels": [int(((cov.sum(0) == 1) & cov[t] & faint).sum())
                                         for t in range(cov.shape[0])],
            "boxes": len(boxes[0]), "boundary_boxes": len(boxes[1]), "box_px": BOX_PX,
            "mask": SCENES[name]["mask"], "faint_pixels": int((faint & cov.any(0)).sum()),
            "covered_pixels": int(cov.any(0).sum()),
            "coverage_dilation_px": DILATE_PX, "faint_mjysr": FAINT_MJYSR,
            "absolute_offset_arcsec": truth.get("absolute_offset_arcsec")}
    summ = summarize(rows)
    return {"scene": info, "rows": rows, "summary": summ, "summary_md": summary_lines(summ), "table_md": table(rows)}


def main():
    ap = section_parser(__doc__)
    ap.add_argument("--md", default="")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--scenes", default=",".join(SCENES))
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--keep-outputs", action="store_true")
    args = section_args(ap)
    args.tools = choices(ap, args.tools, TOOLS, "tool")
    args.scenes = choices(ap, args.scenes, SCENES, "scene")
    t0 = time.perf_counter()
    scenes = [run_scene(args, s) for s in args.scenes]
    res = {"scenes": scenes, "total_s": time.perf_counter() - t0,
           "metrics": {"box_px": BOX_PX, "box_min_frac": BOX_MIN_FRAC, "box_min_set_frac": BOX_MIN_SET_FRAC,
                       "coverage_dilation_px": DILATE_PX, "faint_mjysr": FAINT_MJYSR,
                       "source_pad_px": SOURCE_PAD_PX}}
    write_json(args.json, res)
    md = []
    for s in scenes:
        md += [f"### {s['scene']['name']}: {s['scene']['title']}", "", s["table_md"], ""]
        md += s["summary_md"]
        md.append("")
    if args.md:
        Path(args.md).write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())

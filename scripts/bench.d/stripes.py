#!/usr/bin/env python3
"""stripes.py: the NIRCam 1/f stripe power left in tessera's final mosaic, at sizes the tests cannot afford.

    stripes.py --tessera BIN --work DIR --json OUT.json [--scenes lw,sw,lw-2rolls] [--sizes small,medium]
               [--ranks 2] [--timeout S] [--keep-outputs]

For every scene (NIRCam LW F300M and SW F200W, 2x2 tiles x 4 dithers, the simulator's default stripes:
per-amplifier 1/f rows, weaker columns, a slow ripple) and size (small = 256^2 detectors with 64-column
amplifiers, medium = 1024^2 with 256-column amplifiers, large = 2048^2 with 512-column amplifiers) it
simulates the scene and its stripe-free twin (the same seed and noise, `simulate.stripe_rms_mjysr=0`),
mosaics the twin without destriping and the scene four ways under `mpirun -n RANKS` (no destriping;
single-tile only; single-tile + destripe_multi; single-tile + destripe_multi pass A only; with several
rolls also pass A not iterated, `destripe_multi.max_iterations=1`; outlier rejection off everywhere),
and the twin destriped (single-tile + destripe_multi: the floor, what the method adds to stripe-free
data), and measures, exactly as tests/integration/destripe.rs does but written
independently here (astropy WCS, scipy median filter):

  residual = mosaic - twin mosaic; pixels split into the fainter ("empty") and brighter ("emission")
  half of the truth sky (nearest truth pixel); every pixel binned by its row and its column in the
  first exposure's detector frame (TAN part of its WCS); the median of every bin with >= 20 pixels;
  the rms of the row profile and of the column profile about their means, in quadrature (with
  several rolls, the mean square over the first exposure of each roll's frame). With several rolls,
  a third area, "overlap": every pixel inside an exposure of each roll.
  "narrow": each profile minus its median filter of L = rows / 10 (odd) bins first, the band
  destripe_multi's large-scale pass is built for; "full": no filter.

Writes OUT.json with the numbers and a markdown table (`table_md`); progress on stderr.
"""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.dont_write_bytecode = True   # no __pycache__ in the repository's scripts folder
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import simulate, write_json  # noqa: E402
from bench import section_parser  # noqa: E402

# scene -> (instrument, seed, label, roll offsets in deg: one coverage per roll)
SCENES = {
    "lw": ("nircam_lw", "21", "NIRCam LW F300M", [0.0]),
    "sw": ("nircam_sw", "22", "NIRCam SW F200W", [0.0]),
    "lw-2rolls": ("nircam_lw", "21", "NIRCam LW F300M, two rolls 50 deg apart", [0.0, 50.0]),
    "sw-2rolls": ("nircam_sw", "22", "NIRCam SW F200W, two rolls 50 deg apart", [0.0, 50.0]),
}
SIZES = {"small": 256, "medium": 1024, "large": 2048}
RUNS = [
    ("none", "no destriping", ["--no-destripe"], []),
    ("single", "single-tile", [], ["destripe_multi.enabled=false"]),
    ("multi", "single-tile + destripe_multi", [], []),
    ("pass_a", "single-tile + destripe_multi pass A only", [], ["destripe_multi.large_scale=false"]),
]
# scenes with several rolls (where the automatic destripe_multi.method is the joint solve) also run
# pjpipe's pass A, once and iterated (method = "iterate")
ROLL_RUNS = [
    ("one_pass", "single-tile + destripe_multi, pass A not iterated", [],
     ['destripe_multi.method="iterate"', "destripe_multi.max_iterations=1"]),
    ("iterated", "single-tile + destripe_multi, pass A iterated", [], ['destripe_multi.method="iterate"']),
]


def log(msg):
    print(f"stripes: {msg}", file=sys.stderr, flush=True)


def sim_sets(inst, seed, size, rolls, stripes):
    s = [f'simulate.instrument="{inst}"', f'simulate.size="{size}"', 'simulate.tiles="2x2"', "simulate.dithers=4",
         f"simulate.seed={seed}", "simulate.pointing_error_arcsec=0.0"]
    if rolls != [0.0]:
        s.append("simulate.rolls_deg=[" + ", ".join(str(r) for r in rolls) + "]")
    return s if stripes else s + ["simulate.stripe_rms_mjysr=0.0"]


def mosaic(args, sim, work, flags, sets):
    """`tessera mosaic` under mpirun; returns (path, wall seconds)."""
    out = work / "m.fits"
    if out.exists():
        return out, None
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    cmd = ["mpirun", "-n", str(args.ranks), "--bind-to", "none", args.tessera, "--set", 'run.output_dir="out"',
           "--set", "outlier.enabled=false"]
    for s in sets:
        cmd += ["--set", s]
    cmd += ["mosaic", str(sim), "-o", "m.fits", *flags]
    log(" ".join(cmd))
    t = time.time()
    p = subprocess.run(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       timeout=args.timeout)
    (work / "stderr.log").write_text(p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"tessera mosaic exited {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
    return out, time.time() - t


def tan_only(h):
    """The TAN part of a cal file's SCI header (no SIP), as the Rust test bins with."""
    from astropy.wcs import WCS
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = [h["CRPIX1"], h["CRPIX2"]]
    w.wcs.crval = [h["CRVAL1"], h["CRVAL2"]]
    w.wcs.cd = [[h["CD1_1"], h["CD1_2"]], [h["CD2_1"], h["CD2_2"]]]
    return w


def large_scale_filter(ny):
    l = ny // 10
    return 1 if l == 0 else (l - 1 if l % 2 == 0 else l)


def profile_ms(keys, vals, narrow, scale):
    """Mean square about the mean of the per-bin medians (bins with >= 20 values, in key order)."""
    from scipy.ndimage import median_filter
    order = np.argsort(keys, kind="stable")
    k, v = keys[order], vals[order]
    uk, start, counts = np.unique(k, return_index=True, return_counts=True)
    meds = np.array([np.median(v[s:s + c]) for s, c in zip(start, counts) if c >= 20])
    if meds.size == 0:
        return float("nan")
    if narrow:
        meds = meds - median_filter(meds, size=scale, mode="reflect")
    return float(np.mean((meds - meds.mean()) ** 2))


def stripe_power(resid, sel, mosaic_wcs, det_wcs, scale):
    """(full, narrow) stripe rms of `resid` over `sel` in the detector frame of `det_wcs`."""
    y, x = np.nonzero(sel & np.isfinite(resid))
    ra, dec = mosaic_wcs.all_pix2world(x.astype(float), y.astype(float), 0)
    dx, dy = det_wcs.all_world2pix(ra, dec, 0)
    r = resid[y, x]
    rows, cols = np.round(dy).astype(np.int64), np.round(dx).astype(np.int64)
    out = []
    for narrow in (False, True):
        out.append(float(np.sqrt(profile_ms(rows, r, narrow, scale) + profile_ms(cols, r, narrow, scale))))
    return out


def roll_overlap(sim, truth, mw, shape, nrolls):
    """Mosaic pixels inside at least one exposure of every roll (tiles are numbered roll by roll)."""
    from astropy.io import fits
    from astropy.wcs import WCS
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    ra, dec = mw.all_pix2world(xx.ravel().astype(float), yy.ravel().astype(float), 0)
    ntiles = len({e["tile"] for e in truth["exposures"]}) // nrolls
    cover = [np.zeros(ra.shape, bool) for _ in range(nrolls)]
    for e in truth["exposures"]:
        h = fits.getheader(sim / e["file"], "SCI")
        x, y = tan_only(h).all_world2pix(ra, dec, 0)
        cover[e["tile"] // ntiles] |= (x > -0.5) & (y > -0.5) & (x < h["NAXIS1"] - 0.5) & (y < h["NAXIS2"] - 0.5)
    both = cover[0]
    for c in cover[1:]:
        both &= c
    return both.reshape(shape)


def measure(args, scene, size):
    from astropy.io import fits
    from astropy.wcs import WCS
    inst, seed, label, rolls = SCENES[scene]
    base = Path(args.work) / f"{scene}-{size}"
    striped, twin = base / "sim", base / "sim-twin"
    simulate(args.tessera, sim_sets(inst, seed, size, rolls, True), striped, log)
    simulate(args.tessera, sim_sets(inst, seed, size, rolls, False), twin, log)
    twin_m, _ = mosaic(args, twin, base / "run-twin", ["--no-destripe"], [])
    ref = fits.getdata(twin_m, "SCI").astype(np.float64)
    mw = WCS(fits.getheader(twin_m, "SCI"))
    truth = json.loads((striped / "truth" / "truth.json").read_text())
    tsky = fits.getdata(striped / "truth" / "truth_sky.fits").astype(np.float64)
    tw = WCS(fits.getheader(striped / "truth" / "truth_sky.fits"))
    yy, xx = np.mgrid[0:ref.shape[0], 0:ref.shape[1]]
    ra, dec = mw.all_pix2world(xx.ravel().astype(float), yy.ravel().astype(float), 0)
    tx, ty = tw.all_world2pix(ra, dec, 0)
    i, j = np.round(tx).astype(np.int64), np.round(ty).astype(np.int64)
    inside = (i >= 0) & (j >= 0) & (i < tsky.shape[1]) & (j < tsky.shape[0])
    t = np.full(i.shape, np.nan)
    t[inside] = tsky[j[inside], i[inside]]
    t = t.reshape(ref.shape)
    good = np.isfinite(t) & np.isfinite(ref) & (ref != 0)
    med = np.median(t[good])
    sels = {"empty": np.isfinite(t) & (t <= med), "emission": np.isfinite(t) & (t > med)}
    if len(rolls) > 1:
        sels["overlap"] = np.isfinite(t) & roll_overlap(striped, truth, mw, ref.shape, len(rolls))
    # the detector frame of each roll's first exposure (tiles are numbered roll by roll)
    ntiles = len({e["tile"] for e in truth["exposures"]}) // len(rolls)
    firsts = [next(e for e in truth["exposures"] if e["tile"] // ntiles == k) for k in range(len(rolls))]
    heads = [fits.getheader(striped / e["file"], "SCI") for e in firsts]
    dets = [tan_only(h) for h in heads]
    scale = large_scale_filter(heads[0]["NAXIS2"])
    res = {"scene": scene, "size": size, "label": label, "detector_px": SIZES[size], "exposures":
           len(truth["exposures"]), "filter_rows": scale, "simulate": sim_sets(inst, seed, size, rolls, True), "runs": {}}
    for key, name, flags, sets in RUNS + (ROLL_RUNS if len(rolls) > 1 else []):
        m, wall = mosaic(args, striped, base / f"run-{key}", flags, sets)
        sci = fits.getdata(m, "SCI").astype(np.float64)
        if sci.shape != ref.shape:
            raise RuntimeError(f"{m}: shape {sci.shape}, twin {ref.shape}")
        resid = np.where(np.isfinite(sci) & np.isfinite(ref) & (sci != 0), sci - ref, np.nan)
        r = {"name": name, "wall_s": wall}
        for area, sel in sels.items():
            # several rolls: the power along each roll's rows and columns, averaged over the rolls
            p = np.array([stripe_power(resid, sel, mw, det, scale) for det in dets])
            r[area] = [float(v) for v in np.sqrt(np.mean(p ** 2, axis=0))]
        log(f"{scene} {size} {name}: " + ", ".join(f"{a} {r[a][0]:.5f} / {r[a][1]:.5f}" for a in sels))
        res["runs"][key] = r
        if not args.keep_outputs:   # the stage products (HDF5 stores, ~1 GB per medium run); m.fits stays
            shutil.rmtree(base / f"run-{key}" / "out", ignore_errors=True)
    # the floor: the stripe-free twin destriped like the scene (single-tile + destripe_multi), against
    # the twin not destriped: what the method itself adds (noise of its row medians, sky taken for stripes)
    m, _ = mosaic(args, twin, base / "run-twin-destriped", [], [])
    sci = fits.getdata(m, "SCI").astype(np.float64)
    resid = np.where(np.isfinite(sci) & np.isfinite(ref) & (sci != 0), sci - ref, np.nan)
    res["floor"] = {}
    for area, sel in sels.items():
        p = np.array([stripe_power(resid, sel, mw, det, scale) for det in dets])
        res["floor"][area] = [float(v) for v in np.sqrt(np.mean(p ** 2, axis=0))]
    log(f"{scene} {size} floor (twin destriped): " + ", ".join(f"{a} {res['floor'][a][0]:.5f} / "
                                                               f"{res['floor'][a][1]:.5f}" for a in sels))
    if not args.keep_outputs:
        for d in ("run-twin", "run-twin-destriped"):
            shutil.rmtree(base / d / "out", ignore_errors=True)
    return res


def pct(after, before):
    return 100.0 * (1.0 - (after / before) ** 2)


def table_md(rows):
    L = ["| scene | detector px | area | no destriping: full / narrow rms (MJy/sr) | power removed, single-tile: "
         "full / narrow | single + multi: full / narrow | pass A only: full / narrow | pass A not iterated: "
         "full / narrow | single + multi / floor (rms): full / narrow |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            L.append(f"| {r['label']} ({r['size']}) | | | failed: {r['error'][:120]} | | | |")
            continue
        first = True
        for area in ("empty", "emission", "overlap"):
            if area not in r["runs"]["none"]:
                continue
            n = r["runs"]["none"][area]
            cells = []
            for k in ("single", "multi", "pass_a", "one_pass"):
                if k not in r["runs"]:
                    cells.append("")
                    continue
                a = r["runs"][k][area]
                cells.append(f"{pct(a[0], n[0]):.0f}% / {pct(a[1], n[1]):.0f}%")
            f, a = r.get("floor", {}).get(area), r["runs"]["multi"][area]
            cells.append(f"{a[0] / f[0]:.2f} / {a[1] / f[1]:.2f}" if f else "")
            head = f"{r['label']}, {r['exposures']} files" if first else ""
            px = f"{r['detector_px']}^2 (narrow < {r['filter_rows']} rows)" if first else ""
            L.append(f"| {head} | {px} | {area} | {n[0]:.5f} / {n[1]:.5f} | " + " | ".join(cells) + " |")
            first = False
    return "\n".join(L)


def main():
    ap = section_parser(__doc__)
    ap.add_argument("--scenes", default="lw,sw,lw-2rolls")
    ap.add_argument("--sizes", default="small,medium")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=7200)
    ap.add_argument("--keep-outputs", action="store_true", help="keep every run's out/ folder (stage products)")
    args = ap.parse_args()
    args.tessera = str(Path(args.tessera).resolve())
    for s in args.scenes.split(","):
        if s not in SCENES:
            ap.error(f"unknown --scenes entry {s!r} ({', '.join(SCENES)})")
    for s in args.sizes.split(","):
        if s not in SIZES:
            ap.error(f"unknown --sizes entry {s!r} ({', '.join(SIZES)})")
    rows = []
    for size in args.sizes.split(","):
        for scene in args.scenes.split(","):
            try:
                rows.append(measure(args, scene, size))
            except (RuntimeError, subprocess.SubprocessError, OSError) as e:
                log(f"{scene} {size}: {e}")
                rows.append({"scene": scene, "size": size, "label": SCENES[scene][2], "error": str(e)})
    out = {"scenes": rows, "table_md": table_md(rows)}
    write_json(args.json, out)
    print(out["table_md"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

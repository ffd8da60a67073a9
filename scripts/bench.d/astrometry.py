#!/usr/bin/env python3
"""astrometry.py: absolute astrometry of tessera against the JWST pipeline's TweakRegStep.

    astrometry.py --tessera BIN --work DIR --json OUT.json [--scenes lw,miri] [--timeout S]

For every scene (simulated by tessera with per-visit pointing errors, a global offset and rotation and
a reference catalogue, cached under DIR/<scene>/sim), it runs
  - tessera: `tessera mosaic <sim> --catalog <sim>/aux/refcat.csv` (align + astrometry), whose
    tweakback files carry the corrected exposure WCSs;
  - TweakRegStep (jwst): relative alignment of the exposures, then absolute alignment to the same
    catalogue (abs_refcat), with its own source finding (IRAF star finder, kernel FWHM = the band's PSF
    FWHM in pixels, the number tessera detects with);
and measures both exactly as tests/integration/align.rs measures tessera: a 5x5 lattice of pixels of
every science exposure through the corrected WCS and through the simulator's true WCS, projected on the
tangent plane at the target; the absolute rms of the differences (no fit removed), and the residual
rotation (the shift + rotation fit of corrected onto true positions).

The simulated cal files carry a FITS TAN-SIP WCS and no gwcs. TweakRegStep's tangent-plane corrector
(tweakwcs' JWSTWCSCorrector) needs a gwcs detector -> v2v3 -> world and meta.wcsinfo (v2_ref, v3_ref,
roll_ref, ra_ref, dec_ref) that agree with it, so every exposure gets: v2v3 -> world = jwst's own
V2V3-to-sky rotation (`jwst.assign_wcs.pointing._v23tosky`) for v2_ref = v3_ref = 0 at (ra_ref, dec_ref)
= CRVAL with roll_ref from the CD matrix, and detector -> v2v3 = the header's TAN-SIP followed by the
inverse of that rotation. The whole chain equals the header TAN-SIP (checked to < 0.01 mas on the
lattice), and a correction in the v2v3 tangent plane is a rigid correction on the sky, as for real data.

Writes OUT.json with the numbers and a markdown table (`table_md`); progress on stderr.
"""
import json
import math
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.dont_write_bytecode = True   # no __pycache__ in the repository's scripts folder
sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import simulate, write_json  # noqa: E402
from bench import section_parser  # noqa: E402

HERE = Path(__file__).resolve().parent

# scene name -> (tessera simulate --set overrides, extra tessera --set for the mosaic, label).
# The same scenes as tests/integration/align.rs (NIRCam LW small, MIRI F1000W medium).
SCENES = {
    "lw": ([
        'simulate.size="small"', 'simulate.tiles="2x2"', "simulate.dithers=2",
        "simulate.pointing_error_arcsec=0.15", "simulate.seed=5",
    ], [], "NIRCam LW F300M, 2x2 tiles x 2 dithers x 2 detectors of 256^2 px"),
    "miri": ([
        'simulate.instrument="miri"', 'simulate.size="medium"', 'simulate.tiles="2x2"', "simulate.dithers=4",
        "simulate.pointing_error_arcsec=0.15", "simulate.seed=5",
    ], ["outlier.enabled=false"], "MIRI F1000W, 2x2 tiles x 4 dithers of 512x520 px"),
}


def log(msg):
    print(f"astrometry: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- geometry shared by both measurements

def tangent_arcsec(c_deg, ra, dec):
    """Gnomonic projection at c_deg = (ra0, dec0): (xi east, eta north) in arcsec."""
    ra0, dec0 = np.radians(c_deg[0]), np.radians(c_deg[1])
    ra, dec = np.radians(ra), np.radians(dec)
    cosc = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    xi = np.cos(dec) * np.sin(ra - ra0) / cosc
    eta = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cosc
    return np.degrees(xi) * 3600.0, np.degrees(eta) * 3600.0


def tansip_header(w):
    """A FITS header dict from tessera's TanSip JSON (truth.json's true_wcs)."""
    h = {"CTYPE1": "RA---TAN-SIP", "CTYPE2": "DEC--TAN-SIP", "CRPIX1": w["crpix"][0], "CRPIX2": w["crpix"][1],
         "CRVAL1": w["crval_deg"][0], "CRVAL2": w["crval_deg"][1], "CD1_1": w["cd"][0][0], "CD1_2": w["cd"][0][1],
         "CD2_1": w["cd"][1][0], "CD2_2": w["cd"][1][1], "CUNIT1": "deg", "CUNIT2": "deg", "RADESYS": "ICRS"}
    for name in ("a", "b"):
        p = w.get(name)
        if not p:
            h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
            continue
        h[f"{name.upper()}_ORDER"] = p["order"]
        for i, row in enumerate(p["coeffs"]):
            for j, c in enumerate(row):
                if c != 0.0 and i + j <= p["order"]:
                    h[f"{name.upper()}_{i}_{j}"] = c
    return h


def astropy_wcs(h):
    from astropy.io import fits
    from astropy.wcs import WCS
    hdr = fits.Header()
    for k, v in h.items():
        hdr[k] = v
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return WCS(hdr)


def lattice(shape):
    ny, nx = shape
    xs, ys = [], []
    for i in range(5):
        for j in range(5):
            xs.append(i * (nx - 1) / 4.0)
            ys.append(j * (ny - 1) / 4.0)
    return np.array(xs), np.array(ys)


def fit_rshift(got, want):
    """Least-squares rotation (deg) + shift taking got onto want (2xN arrays, arcsec)."""
    gc, wc = got.mean(axis=1, keepdims=True), want.mean(axis=1, keepdims=True)
    g, w = got - gc, want - wc
    num = np.sum(g[0] * w[1] - g[1] * w[0])
    den = np.sum(g[0] * w[0] + g[1] * w[1])
    return math.degrees(math.atan2(num, den))


def score(truth, sim, world_of):
    """Absolute rms (mas) and residual rotation (deg) of world_of(file, x, y) -> (ra, dec) against the
    truth over the 5x5 lattices of every science exposure."""
    from astropy.io import fits
    c = truth["target_deg"]
    got, want = [[], []], [[], []]
    for e in truth["exposures"]:
        if e["is_off"]:
            continue
        tw = astropy_wcs(tansip_header(e["true_wcs"]))
        h = fits.getheader(sim / e["file"], "SCI")
        x, y = lattice((h["NAXIS2"], h["NAXIS1"]))
        ra, dec = world_of(e["file"], x, y)
        rt, dt = tw.all_pix2world(x, y, 0)
        g, h = tangent_arcsec(c, np.asarray(ra), np.asarray(dec)), tangent_arcsec(c, rt, dt)
        for k in range(2):
            got[k].extend(g[k])
            want[k].extend(h[k])
    got, want = np.array(got), np.array(want)
    rms = math.sqrt(np.mean(np.sum((got - want) ** 2, axis=0)))
    return 1e3 * rms, fit_rshift(got, want)


# ---------------------------------------------------------------- tessera

def run_tessera(tessera, sim, work, extra, timeout):
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    cmd = [tessera, "--set", 'run.output_dir="out"']
    for s in extra:
        cmd += ["--set", s]
    cmd += ["mosaic", str(sim), "-o", str(work / "m.fits"), "--catalog", str(sim / "aux" / "refcat.csv")]
    log(" ".join(cmd))
    t = time.time()
    p = subprocess.run(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout)
    (work / "stderr.log").write_text(p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"tessera mosaic exited {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
    r = json.loads((work / "out" / "astrometry" / "astrometry.json").read_text())
    return r, time.time() - t


def tessera_world(work):
    from astropy.io import fits
    cache = {}

    def world(file, x, y):
        stem = file[: -len("_cal.fits")]
        if file not in cache:
            cache[file] = astropy_wcs(dict(fits.getheader(work / "out" / "astrometry" / f"{stem}_tweakback.fits", "SCI")))
        return cache[file].all_pix2world(x, y, 0)
    return world


# ---------------------------------------------------------------- TweakRegStep

def v2v3_gwcs(h, shape):
    """The header TAN-SIP h as a gwcs detector -> v2v3 -> world, and the wcsinfo that goes with it."""
    import astropy.units as u
    from astropy.coordinates import ICRS
    from gwcs import coordinate_frames as cf
    from gwcs import wcs as gwcs_wcs
    from jwst.assign_wcs.pointing import _v23tosky
    from prep_jwst import _cd, tan_sip_gwcs

    det_to_sky = tan_sip_gwcs(h, shape).forward_transform
    cd = _cd(h)
    ra_ref, dec_ref = float(h["CRVAL1"]), float(h["CRVAL2"])
    roll_ref = float(math.degrees(math.atan2(cd[0, 1], cd[1, 1])))
    v23 = _v23tosky(0.0, 0.0, roll_ref, ra_ref, dec_ref)
    det_to_v23 = det_to_sky | v23.inverse
    det_to_v23.inverse = v23 | det_to_sky.inverse
    det = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    v2v3 = cf.Frame2D(name="v2v3", axes_order=(0, 1), axes_names=("v2", "v3"), unit=(u.arcsec, u.arcsec))
    world = cf.CelestialFrame(reference_frame=ICRS(), name="world", unit=(u.deg, u.deg), axes_names=("lon", "lat"))
    w = gwcs_wcs.WCS([(det, det_to_v23), (v2v3, v23), (world, None)])
    ny, nx = shape
    w.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    w.array_shape = (ny, nx)
    info = dict(v2_ref=0.0, v3_ref=0.0, roll_ref=roll_ref, ra_ref=ra_ref, dec_ref=dec_ref, v3yangle=0.0, vparity=-1)
    return w, info


# TweakRegStep parameter sets: its defaults, and tessera's [align]/[astrometry] defaults carried over
# (minimum matches, search radius, tolerance; separation > sqrt(2) x tolerance as TweakReg requires).
TWEAKREG_CONFIGS = {
    "default": {},
    "matched": dict(minobj=3, searchrad=1.0, tolerance=0.2, separation=0.5,
                    abs_minobj=5, abs_searchrad=1.5, abs_tolerance=0.15, abs_separation=0.5),
}


def run_tweakreg(sim, truth, work, fwhm_px, params):
    from astropy.io import fits
    from astropy.table import Table
    from astropy.time import Time
    from jwst.tweakreg import TweakRegStep
    from stdatamodels.jwst import datamodels

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    # the same catalogue, as ECSV with RA/DEC columns (TweakRegStep's reader)
    cat = Table.read(sim / "aux" / "refcat.csv", format="ascii.csv")
    Table({"RA": cat["ra"], "DEC": cat["dec"]}).write(work / "refcat.ecsv", overwrite=True)
    models, worst_mas = [], 0.0
    for e in truth["exposures"]:
        if e["is_off"]:
            continue
        path = sim / e["file"]
        h = fits.getheader(path, "SCI")
        m = datamodels.ImageModel(str(path))
        shape = m.data.shape
        w, info = v2v3_gwcs(h, shape)
        # the gwcs equals the header (same lattice as the score)
        x, y = lattice(shape)
        a = np.array(w(x, y, with_bounding_box=False))
        b = np.array(astropy_wcs(dict(h)).all_pix2world(x, y, 0))
        worst_mas = max(worst_mas, 3.6e6 * float(np.max(np.abs(a - b))))
        m.meta.wcs = w
        for k, v in info.items():
            setattr(m.meta.wcsinfo, k, v)
        t = Time(float(fits.getval(path, "EXPSTART", 0)), format="mjd")
        m.meta.observation.date, m.meta.observation.time = t.isot.split("T")
        m.meta.filename = e["file"]
        models.append(m)
    if worst_mas > 0.01:
        raise RuntimeError(f"the v2v3 gwcs departs from the header TAN-SIP by {worst_mas:.3g} mas")
    step = TweakRegStep(
        abs_refcat=str(work / "refcat.ecsv"),
        kernel_fwhm=fwhm_px,
        bkg_boxsize=min(400, min(models[0].data.shape) // 2),
        sip_approx=False,
        **params,
    )
    import logging
    handler = logging.FileHandler(work / "tweakreg.log", mode="w")
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    t0 = time.time()
    try:
        result = step.run(models)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    dt = time.time() - t0
    out, fit = {}, {}
    with result:
        for i, m in enumerate(result):
            out[m.meta.filename] = m.meta.wcs
            status = m.meta.cal_step.tweakreg
            fit[m.meta.filename] = status
            result.shelve(m, i, modify=False)
    return out, fit, dt, worst_mas


def parse_fits(log_path):
    """From TweakRegStep's log: groups that failed relative alignment, the absolute fit's matches and rms."""
    text = log_path.read_text()
    failed = sorted(set(re.findall(r"Failed to align catalog GROUP ID: (\S+)", text)))
    abs_part = text.split("Aligning to absolute reference catalog", 1)[-1]
    n = re.findall(r"Found (\d+) matches for 'GROUP ID: 987654'", abs_part)
    rmse = re.findall(r"FIT RMSE: (\S+)", abs_part)
    return {"relative_failed_groups": failed, "abs_matches": int(n[-1]) if n else None,
            "abs_fit_rms_mas": 1e3 * float(rmse[-1]) if rmse else None}


# ---------------------------------------------------------------- main

def fwhm_px_of(truth):
    e = next(e for e in truth["exposures"] if not e["is_off"])
    cd = np.array(e["true_wcs"]["cd"])
    scale = 3600.0 * math.sqrt(abs(np.linalg.det(cd)))
    return float(truth["psf_fwhm_arcsec"]) / scale


def bench_scene(args, name):
    sets, extra, label = SCENES[name]
    root = Path(args.work) / name
    sim = root / "sim"
    simulate(args.tessera, sets, sim, log)
    truth = json.loads((sim / "truth" / "truth.json").read_text())
    row = {"scene": name, "label": label, "simulate": sets,
           "n_exposures": sum(1 for e in truth["exposures"] if not e["is_off"]),
           "truth_rotation_deg": truth["absolute_rotation_deg"],
           "truth_offset_arcsec": truth["absolute_offset_arcsec"]}
    from astropy.io import fits
    before, rot0 = score(truth, sim, lambda f, x, y: astropy_wcs(dict(fits.getheader(sim / f, "SCI"))).all_pix2world(x, y, 0))
    row["before"] = {"rms_mas": before, "rotation_deg": rot0}
    try:
        r, dt = run_tessera(args.tessera, sim, root / "tessera", extra, args.timeout)
        rms, rot = score(truth, sim, tessera_world(root / "tessera"))
        strict = r["steps"][-1] if r["steps"] else {}
        row["tessera"] = {"rms_mas": rms, "rotation_deg": rot, "n_matches": strict.get("n_matches"),
                          "fit_rms_mas": 1e3 * strict.get("rms_arcsec", float("nan")), "wall_s": dt,
                          "solved": r["correction"] is not None, "warnings": r["warnings"]}
    except Exception as e:  # noqa: BLE001  reported in the table
        row["tessera"] = {"error": str(e)}
    for conf in args.tweakreg:
        try:
            fwhm = fwhm_px_of(truth)
            params = TWEAKREG_CONFIGS[conf]
            wcss, status, dt, worst = run_tweakreg(sim, truth, root / f"jwst-{conf}", fwhm, params)
            rms, rot = score(truth, sim, lambda f, x, y: wcss[f](x, y, with_bounding_box=False))
            fits_ = parse_fits(root / f"jwst-{conf}" / "tweakreg.log")
            row[f"tweakreg_{conf}"] = {
                "rms_mas": rms, "rotation_deg": rot, "wall_s": dt, "kernel_fwhm_px": fwhm, "params": params,
                "gwcs_vs_header_mas": worst, "status": sorted(set(str(s) for s in status.values())), **fits_}
        except Exception as e:  # noqa: BLE001  reported in the table
            import traceback
            traceback.print_exc()
            row[f"tweakreg_{conf}"] = {"error": f"{type(e).__name__}: {e}"}
    log(json.dumps(row))
    return row


def table_md(rows, confs):
    """One row per scene and tool: absolute rms and residual rotation against the truth."""
    L = ["| scene | tool | absolute rms against the truth | residual rotation | matches (fit rms) | notes |",
         "|---|---|---|---|---|---|"]

    def vals(d):
        if "error" in d:
            return f"failed: {d['error'][:100]}", "", ""
        return f"{d['rms_mas']:.2f} mas", f"{d['rotation_deg']:+.5f} deg", ""
    for r in rows:
        b = r["before"]
        L.append(f"| {r['label']} | header WCS (before) | {b['rms_mas']:.1f} mas | {b['rotation_deg']:+.5f} deg | | "
                 f"truth: offset {r['truth_offset_arcsec']} arcsec, rotation {r['truth_rotation_deg']} deg |")
        t = r["tessera"]
        rms, rot, _ = vals(t)
        m = "" if "error" in t else f"{t['n_matches']} ({t['fit_rms_mas']:.1f} mas)"
        L.append(f"| | tessera (align + astrometry) | {rms} | {rot} | {m} | |")
        for c in confs:
            j = r.get(f"tweakreg_{c}", {"error": "not run"})
            rms, rot, _ = vals(j)
            m, note = "", ""
            if "error" not in j:
                m = f"{j['abs_matches']} ({j['abs_fit_rms_mas']:.1f} mas)" if j.get("abs_matches") else "none"
                f = j["relative_failed_groups"]
                note = f"relative alignment failed for {len(f)} exposure(s)" if f else "every exposure aligned"
                if "error" not in t:
                    note += "; tessera " + ("<=" if t["rms_mas"] <= j["rms_mas"] else "**>**") + " TweakReg"
            L.append(f"| | TweakRegStep ({c} parameters) | {rms} | {rot} | {m} | {note} |")
    return "\n".join(L)


def main():
    ap = section_parser(__doc__)
    ap.add_argument("--scenes", default="lw,miri")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--tweakreg", default="default,matched", help="TweakRegStep parameter sets (default, matched)")
    args = ap.parse_args()
    args.tessera = str(Path(args.tessera).resolve())
    args.tweakreg = [c for c in args.tweakreg.split(",") if c]
    for c in args.tweakreg:
        if c not in TWEAKREG_CONFIGS:
            ap.error(f"unknown --tweakreg set {c!r} ({', '.join(TWEAKREG_CONFIGS)})")
    warnings.simplefilter("ignore")
    rows = [bench_scene(args, s) for s in args.scenes.split(",") if s]
    out = {"scenes": rows, "table_md": table_md(rows, args.tweakreg)}
    write_json(args.json, out)
    print(out["table_md"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""prep_peers.py SCENE_DIR PLAN_JSON OUT_DIR: the untimed preparation of peer inputs.

From the JWST cal files of SCENE_DIR and tessera's output grid (plan JSON), writes into OUT_DIR:
  sci/<name>.fits     SCI as a primary image with its WCS (CDi_j form, SIP kept); unusable pixels 0
  wht/<name>.fits     weight map 1/VAR_RNOISE, 0 where DQ has DO_NOT_USE|NON_SCIENCE or SCI/VAR is not finite
  grid.hdr            tessera's output grid as a FITS header text (Montage template, SWarp .head)
  grid.json           the same grid as JSON (crval, crpix 1-based, cd, nx, ny)
  inputs.json         the list of inputs and their total pixel count
Idempotent: does nothing when OUT_DIR/inputs.json is newer than every input.
"""
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits

DO_NOT_USE = 1
NON_SCIENCE = 512
BAD = DO_NOT_USE | NON_SCIENCE

# WCS keywords copied from the SCI header (SIP coefficients are added by pattern below).
WCS_KEYS = ["WCSAXES", "CTYPE1", "CTYPE2", "CUNIT1", "CUNIT2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2",
            "CD1_1", "CD1_2", "CD2_1", "CD2_2", "PC1_1", "PC1_2", "PC2_1", "PC2_2", "CDELT1", "CDELT2",
            "LONPOLE", "LATPOLE", "RADESYS", "EQUINOX", "MJD-OBS", "DATE-OBS",
            "A_ORDER", "B_ORDER", "AP_ORDER", "BP_ORDER"]


def grid_cd(g):
    s = g["pixscale_arcsec"] / 3600.0
    r = math.radians(g.get("rotation_deg", 0.0))
    c, si = math.cos(r), math.sin(r)
    return [[-s * c, s * si], [s * si, s * c]]


def grid_header(g):
    cd = grid_cd(g)
    h = fits.Header()
    h["SIMPLE"] = True
    h["BITPIX"] = -32
    h["NAXIS"] = 2
    h["NAXIS1"] = int(g["nx"])
    h["NAXIS2"] = int(g["ny"])
    h["CTYPE1"] = "RA---TAN"
    h["CTYPE2"] = "DEC--TAN"
    h["CUNIT1"] = "deg"
    h["CUNIT2"] = "deg"
    h["CRVAL1"] = float(g["crval_deg"][0])
    h["CRVAL2"] = float(g["crval_deg"][1])
    h["CRPIX1"] = float(g["crpix"][0])
    h["CRPIX2"] = float(g["crpix"][1])
    h["CD1_1"] = cd[0][0]
    h["CD1_2"] = cd[0][1]
    h["CD2_1"] = cd[1][0]
    h["CD2_2"] = cd[1][1]
    h["RADESYS"] = "ICRS"
    h["EQUINOX"] = 2000.0
    return h


def wcs_cards(sci_hdr):
    """The WCS of a SCI header in CDi_j form (Montage misreads PCi_j + CDELT), SIP kept."""
    out = fits.Header()
    for k in WCS_KEYS:
        if k in sci_hdr:
            out[k] = sci_hdr[k]
    for k in sci_hdr:
        if k[:2] in ("A_", "B_") or k[:3] in ("AP_", "BP_"):
            out[k] = sci_hdr[k]
    if "CD1_1" not in out:
        pc = [[sci_hdr.get("PC1_1", 1.0), sci_hdr.get("PC1_2", 0.0)],
              [sci_hdr.get("PC2_1", 0.0), sci_hdr.get("PC2_2", 1.0)]]
        cdelt = [sci_hdr.get("CDELT1", 1.0), sci_hdr.get("CDELT2", 1.0)]
        for i in range(2):
            for j in range(2):
                out[f"CD{i+1}_{j+1}"] = cdelt[i] * pc[i][j]
    for k in ("PC1_1", "PC1_2", "PC2_1", "PC2_2", "CDELT1", "CDELT2"):
        out.remove(k, ignore_missing=True)
    return out


def main(argv):
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    scene, plan_json, out = Path(argv[1]), Path(argv[2]), Path(argv[3])
    cals = sorted(scene.glob("*_cal.fits"))
    if not cals:
        print(f"prep_peers: no *_cal.fits in {scene}", file=sys.stderr)
        return 1
    stamp = out / "inputs.json"
    newest = max(p.stat().st_mtime for p in cals + [plan_json])
    if stamp.exists() and stamp.stat().st_mtime > newest:
        return 0
    (out / "sci").mkdir(parents=True, exist_ok=True)
    (out / "wht").mkdir(parents=True, exist_ok=True)
    plan = json.loads(plan_json.read_text())
    g = plan["grid"]
    gh = grid_header(g)
    # Montage template / SWarp .head: one card per line, END last
    (out / "grid.hdr").write_text("\n".join(str(c) for c in gh.cards) + "\nEND\n")
    (out / "grid.json").write_text(json.dumps({
        "crval_deg": g["crval_deg"], "crpix": g["crpix"], "cd": grid_cd(g), "nx": g["nx"], "ny": g["ny"],
        "pixscale_arcsec": g["pixscale_arcsec"], "rotation_deg": g.get("rotation_deg", 0.0)}, indent=1))
    items = []
    npix = 0
    for p in cals:
        with fits.open(p, memmap=False) as f:
            sci = f["SCI"].data.astype(np.float32)
            dq = f["DQ"].data.astype(np.uint32)
            var = f["VAR_RNOISE"].data.astype(np.float64)
            hdr = wcs_cards(f["SCI"].header)
            exptime = float(f[0].header.get("EFFEXPTM", f[0].header.get("EXPTIME", 1.0)))
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where((var > 0) & np.isfinite(var), 1.0 / var, 0.0)
        bad = ((dq & BAD) != 0) | ~np.isfinite(sci) | ~np.isfinite(w)
        w[bad] = 0.0
        sci[bad] = 0.0
        name = p.name.replace("_cal.fits", "")
        hdr["EXPTIME"] = exptime
        hdr["BUNIT"] = "MJy/sr"
        fits.PrimaryHDU(sci, header=hdr).writeto(out / "sci" / f"{name}.fits", overwrite=True)
        fits.PrimaryHDU(w.astype(np.float32), header=hdr).writeto(out / "wht" / f"{name}.fits", overwrite=True)
        items.append({"name": name, "cal": str(p.resolve()), "sci": f"sci/{name}.fits", "wht": f"wht/{name}.fits",
                      "shape": list(sci.shape), "exptime": exptime})
        npix += sci.size
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(json.dumps({"n_inputs": len(items), "input_pixels": npix, "inputs": items}, indent=1))
    os.replace(tmp, stamp)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

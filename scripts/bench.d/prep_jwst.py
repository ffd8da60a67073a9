#!/usr/bin/env python3
"""prep_jwst.py PEER_DIR OUT_DIR: the untimed preparation of the JWST pipeline's inputs.

tessera's simulated cal files carry a FITS TAN-SIP WCS but no ASDF/gwcs extension. The JWST stage-3
steps need `meta.wcs` (a gwcs) and a few `meta.wcsinfo` values, so for every cal file listed in
PEER_DIR/inputs.json this opens it as an ImageModel, attaches a gwcs built from the SCI header's
TAN-SIP (forward A/B polynomials, inverse from AP/BP when present, otherwise gwcs' numerical inverse),
sets wcsinfo (ra/dec_ref, roll_ref from the header orientation, v3yangle 0, vparity -1, s_region) and
saves it as OUT_DIR/<name>_cal.fits (FITS + ASDF extension). It also writes:
  OUT_DIR/asn.json   an image3 association of all of them
  OUT_DIR/grid.asdf  tessera's output grid as a gwcs (the ResampleStep `output_wcs` file)
Idempotent: does nothing when OUT_DIR/asn.json is newer than PEER_DIR/inputs.json.
"""
import json
import math
import os
import re
import sys
from pathlib import Path

import asdf
import astropy.units as u
import numpy as np
from astropy.coordinates import ICRS
from astropy.io import fits
from astropy.modeling import models as m
from gwcs import coordinate_frames as cf
from gwcs import wcs as gwcs_wcs
from stdatamodels.jwst import datamodels


def _poly(order, coeffs, prefix, identity_term):
    """x' = x + sum coeffs (identity_term is 'c1_0' for the x axis, 'c0_1' for y)."""
    order = max(int(order or 1), 1)
    p = m.Polynomial2D(order)
    for name in p.param_names:
        setattr(p, name, 0.0)
    for k, v in coeffs.items():
        i, j = (int(t) for t in k[len(prefix):].split("_"))
        if i + j <= order:
            setattr(p, f"c{i}_{j}", float(v))
    setattr(p, identity_term, getattr(p, identity_term).value + 1.0)
    return p


def _fit_inverse_sip(a_poly, b_poly, order, shape, crpix):
    """AP/BP coefficients (as Polynomial2D) inverting the forward SIP on the detector, by least squares.

    gwcs' numerical inverse fails on models built from instances (gwcs 1.0.3), so every gwcs here gets
    an analytic inverse: the header's AP/BP when present, this fit otherwise (residual << 0.01 px)."""
    ny, nx = shape
    x, y = np.meshgrid(np.linspace(-0.5, nx - 0.5, 64), np.linspace(-0.5, ny - 0.5, 64))
    u, v = x.ravel() - crpix[0], y.ravel() - crpix[1]
    uu, vv = a_poly(u, v), b_poly(u, v)
    terms = [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]
    scale = max(nx, ny)
    design = np.stack([(uu / scale) ** i * (vv / scale) ** j for i, j in terms], axis=1)
    polys = []
    for target, ident in ((u, "c1_0"), (v, "c0_1")):
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        p = m.Polynomial2D(order)
        for name in p.param_names:
            setattr(p, name, 0.0)
        for (i, j), c in zip(terms, coef):
            setattr(p, f"c{i}_{j}", c / scale ** (i + j))
        polys.append(p)
    return polys


def _cd(h):
    if "CD1_1" in h:
        return np.array([[h["CD1_1"], h.get("CD1_2", 0.0)], [h.get("CD2_1", 0.0), h["CD2_2"]]])
    pc = np.array([[h.get("PC1_1", 1.0), h.get("PC1_2", 0.0)], [h.get("PC2_1", 0.0), h.get("PC2_2", 1.0)]])
    return np.diag([h.get("CDELT1", 1.0), h.get("CDELT2", 1.0)]) @ pc


def tan_sip_gwcs(h, shape):
    """A gwcs equal to the FITS TAN-SIP header h (0-based pixels in, ICRS degrees out)."""
    crpix = (h["CRPIX1"] - 1.0, h["CRPIX2"] - 1.0)
    cd = _cd(h)
    a = {k: h[k] for k in h if re.fullmatch(r"A_\d+_\d+", k)}
    b = {k: h[k] for k in h if re.fullmatch(r"B_\d+_\d+", k)}
    ap = {k: h[k] for k in h if re.fullmatch(r"AP_\d+_\d+", k)}
    bp = {k: h[k] for k in h if re.fullmatch(r"BP_\d+_\d+", k)}
    shift = m.Shift(-crpix[0]) & m.Shift(-crpix[1])
    lin = m.AffineTransformation2D(matrix=cd, translation=[0.0, 0.0])
    sky = m.Pix2Sky_TAN() | m.RotateNative2Celestial(h["CRVAL1"], h["CRVAL2"], 180.0)
    if a or b:
        pa = _poly(h.get("A_ORDER"), a, "A_", "c1_0")
        pb = _poly(h.get("B_ORDER"), b, "B_", "c0_1")
        fwd = shift | (m.Mapping((0, 1, 0, 1)) | (pa & pb)) | lin | sky
        if ap or bp:
            ipa = _poly(h.get("AP_ORDER"), ap, "AP_", "c1_0")
            ipb = _poly(h.get("BP_ORDER"), bp, "BP_", "c0_1")
        else:
            order = max(int(h.get("A_ORDER", 1)), int(h.get("B_ORDER", 1))) + 1
            ipa, ipb = _fit_inverse_sip(pa, pb, order, shape, crpix)
        inv_dist = m.Mapping((0, 1, 0, 1)) | (ipa & ipb)
        fwd.inverse = sky.inverse | lin.inverse | inv_dist | shift.inverse
    else:
        fwd = shift | lin | sky
    det = cf.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    world = cf.CelestialFrame(reference_frame=ICRS(), name="world", unit=(u.deg, u.deg),
                              axes_names=("lon", "lat"))
    w = gwcs_wcs.WCS(fwd, input_frame=det, output_frame=world)
    ny, nx = shape
    w.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    w.array_shape = (ny, nx)
    return w


def s_region(w, shape):
    ny, nx = shape
    xs = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    ys = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    ra, dec = w(xs, ys, with_bounding_box=False)
    return "POLYGON ICRS " + " ".join(f"{r:.9f} {d:.9f}" for r, d in zip(ra, dec))


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    peer, out = Path(argv[1]), Path(argv[2])
    inv = json.loads((peer / "inputs.json").read_text())
    stamp = out / "asn.json"
    if stamp.exists() and stamp.stat().st_mtime > (peer / "inputs.json").stat().st_mtime:
        return 0
    out.mkdir(parents=True, exist_ok=True)
    members = []
    for it in inv["inputs"]:
        cal = Path(it["cal"])
        with fits.open(cal, memmap=False) as f:
            h = f["SCI"].header.copy()
        with datamodels.ImageModel(str(cal)) as model:
            shape = model.data.shape
            w = tan_sip_gwcs(h, shape)
            cd = _cd(h)
            model.meta.wcs = w
            wi = model.meta.wcsinfo
            wi.ra_ref, wi.dec_ref = float(h["CRVAL1"]), float(h["CRVAL2"])
            wi.v2_ref, wi.v3_ref = 0.0, 0.0
            # position angle of the detector +y axis, east of north
            wi.roll_ref = float(math.degrees(math.atan2(cd[0, 1], cd[1, 1])))
            wi.v3yangle, wi.vparity = 0.0, -1
            wi.s_region = s_region(w, shape)
            if model.meta.photometry.pixelarea_steradians is None:
                scale_deg = math.sqrt(abs(np.linalg.det(cd)))
                model.meta.photometry.pixelarea_steradians = math.radians(scale_deg) ** 2
                model.meta.photometry.pixelarea_arcsecsq = (scale_deg * 3600.0) ** 2
            if model.meta.exposure.exposure_time is None:
                model.meta.exposure.exposure_time = float(it["exptime"])
            if model.meta.exposure.measurement_time is None:
                model.meta.exposure.measurement_time = float(it["exptime"])
            name = f"{it['name']}_cal.fits"
            model.meta.filename = name
            model.save(str(out / name))
        members.append({"expname": name, "exptype": "science"})
    # tessera's output grid as a gwcs for ResampleStep(output_wcs=...)
    g = json.loads((peer / "grid.json").read_text())
    gh = {"CRPIX1": g["crpix"][0], "CRPIX2": g["crpix"][1], "CRVAL1": g["crval_deg"][0],
          "CRVAL2": g["crval_deg"][1], "CD1_1": g["cd"][0][0], "CD1_2": g["cd"][0][1],
          "CD2_1": g["cd"][1][0], "CD2_2": g["cd"][1][1]}
    gw = tan_sip_gwcs(gh, (g["ny"], g["nx"]))
    asdf.AsdfFile({"wcs": gw, "pixel_scale": float(g["pixscale_arcsec"]),
                   "array_shape": [g["ny"], g["nx"]]}).write_to(out / "grid.asdf")
    asn = {"asn_type": "image3", "asn_rule": "tessera_bench", "asn_id": "a3001", "asn_pool": "none",
           "program": "tessera-bench", "version_id": None, "code_version": "tessera-bench",
           "products": [{"name": "jwst_mosaic", "members": members}]}
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(json.dumps(asn, indent=1))
    os.replace(tmp, stamp)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

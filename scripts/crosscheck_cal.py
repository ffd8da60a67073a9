#!/usr/bin/env python3
"""Independent check that JWST *_cal.fits files written by tessera are genuine enough.

Every ``*_cal.fits`` under DIR (recursively, the truth directory excluded) is
opened with the official JWST data-model library and with astropy, and must
pass all of:

* FITS: astropy opens it and ``HDUList.verify('exception')`` finds nothing;
  HDUs SCI, ERR, DQ, VAR_POISSON, VAR_RNOISE, VAR_FLAT, AREA exist exactly
  once, are 2-D, all of SCI's shape; SCI/ERR/VAR_*/AREA are float32
  (BITPIX=-32, unscaled), DQ is uint32 (BITPIX=32 with BZERO=2147483648);
  SCI and ERR have BUNIT = 'MJy/sr'.
* Primary header: the cards TELESCOP INSTRUME DETECTOR FILTER (PUPIL for NIRCam)
  PROGRAM OBSERVTN VISIT VISITGRP SEQ_ID ACT_ID EXPOSURE EXPSTART EXPMID EXPEND
  EFFEXPTM SUBARRAY TARGPROP are present and non-empty in the primary HDU itself
  (stdatamodels would silently fall back to the ASDF tree for a missing card).
* stdatamodels: ``stdatamodels.jwst.datamodels.ImageModel(path)`` opens and
  validates it with every warning turned into an error; meta.telescope is
  JWST, instrument/detector/filter (and pupil for NIRCam), program,
  observation, visit, visit group, sequence, activity and exposure numbers,
  subarray, EXPSTART <= EXPMID <= EXPEND and EFFEXPTM > 0 are populated; the
  model's SCI array has the FITS shape; the file name follows the JWST
  pattern jwPPPPPOOOVVV_GGSAA_EEEEE_<detector>_cal.fits and agrees with the
  header.
* WCS: astropy ``WCS(hdul['SCI'].header)`` with every warning recorded: any
  warning fails, except astropy's 'datfix' FITSFixedWarning that only derives
  DATE-BEG/AVG/END from the MJD-BEG/AVG/END cards, which the JWST schema
  itself puts in the SCI header of every genuine cal file (reported as a note;
  fatal with --strict-datfix). The WCS must be celestial with CTYPE
  RA---TAN-SIP / DEC--TAN-SIP, RADESYS ICRS, SIP A/B and AP/BP present, a
  plausible pixel scale, finite corners, and AP/BP must invert A/B over the
  image to within {inv_tol} px.
* If the file has an ASDF extension carrying a gwcs (meta.wcs), the gwcs must
  agree with the FITS SIP WCS to within {gwcs_tol} px. A file without ASDF
  extension is reported (fatal with --require-asdf).
* Noise model: ERR^2 == VAR_POISSON + VAR_RNOISE + VAR_FLAT (rtol 1e-3)
  wherever all four are finite (at least one such pixel); ERR and VAR_* are
  >= 0 where finite.

With --truth DIR (default: DIR/truth when that exists) the truth directory
must exist and be non-empty; each FITS file in it must open and verify with
astropy, each JSON file must parse, each CSV/ECSV must have a header line; any
``*_cal.fits`` name mentioned in a truth JSON/CSV must exist under DIR. Other
files are listed as not checked.

Prints one line per failure ("FAIL <file>: <what>") and finally either
"crosscheck: N files OK" (exit 0) or "crosscheck: K of N files FAILED" (exit 1).
Exit 2 on usage errors (no such directory, no *_cal.fits found).

Run:
    $(scripts/setup-python | tail -n1) scripts/crosscheck_cal.py DIR [--truth DIR/truth] [--max-files N]
"""

import argparse
import json
import math
import re
import sys
import traceback
import warnings
from pathlib import Path

EXTS_FLOAT = ("SCI", "ERR", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT", "AREA")
EXTS = ("SCI", "ERR", "DQ", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT", "AREA")
BUNIT = "MJy/sr"
VAR_RTOL = 1e-3
INV_TOL_PX = 0.05  # AP/BP vs A/B self-consistency (jwst's own fit targets 0.01 px)
GWCS_TOL_PX = 0.05  # gwcs (ASDF) vs FITS SIP approximation (jwst targets 0.01 px)
PIXSCALE_RANGE_ARCSEC = (0.005, 1.0)
NAME_RE = re.compile(
    r"^jw(?P<program>\d{5})(?P<obs>\d{3})(?P<visit>\d{3})_(?P<visitgrp>\d{2})(?P<seq>\d)"
    r"(?P<act>[0-9a-zA-Z]{2})_(?P<expnum>\d{5})_(?P<det>[a-z0-9]+)_cal\.fits$"
)
DATFIX_LINE = re.compile(r"^Set DATE-(BEG|AVG|END|OBS) to '[^']*' from MJD-(BEG|AVG|END|OBS)\.?$")

__doc__ = __doc__.format(inv_tol=INV_TOL_PX, gwcs_tol=GWCS_TOL_PX)


class CheckFailed(Exception):
    """A check failed; the message says what."""


class FileReport:
    def __init__(self, path):
        self.path = path
        self.failures = []
        self.notes = []

    def fail(self, msg):
        self.failures.append(msg)

    def note(self, msg):
        self.notes.append(msg)


def _is_datfix_only(message):
    """True when a FITSFixedWarning is only astropy deriving DATE-* from MJD-*."""
    m = re.match(r"^'datfix' made the change '(.*)'\.?$", message, re.S)
    if not m:
        return False
    lines = [ln.strip() for ln in m.group(1).splitlines() if ln.strip()]
    return bool(lines) and all(DATFIX_LINE.match(ln) for ln in lines)


def check_fits_layout(rep, hdul, np):
    """HDUs, dtypes, shapes, BUNIT. Returns SCI shape or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            hdul.verify("exception")
    except Exception as e:  # noqa: BLE001 - report whatever astropy says
        rep.fail(f"FITS verify: {_short(e, 500)}")

    names = [h.name for h in hdul]
    sci_shape = None
    for ext in EXTS:
        n = names.count(ext)
        if n == 0:
            rep.fail(f"missing extension {ext} (HDUs: {', '.join(names)})")
            continue
        if n > 1:
            rep.fail(f"extension {ext} appears {n} times")
        hdu = hdul[ext]
        hdr = hdu.header
        if hdr.get("NAXIS") != 2:
            rep.fail(f"{ext}: NAXIS={hdr.get('NAXIS')}, expected 2")
            continue
        shape = (hdr.get("NAXIS2"), hdr.get("NAXIS1"))
        if ext == "SCI":
            sci_shape = shape
        if ext in EXTS_FLOAT:
            if hdr.get("BITPIX") != -32:
                rep.fail(f"{ext}: BITPIX={hdr.get('BITPIX')}, expected -32 (float32)")
            if "BZERO" in hdr or "BSCALE" in hdr:
                if hdr.get("BZERO", 0) != 0 or hdr.get("BSCALE", 1) != 1:
                    rep.fail(f"{ext}: scaled float data (BZERO={hdr.get('BZERO')}, BSCALE={hdr.get('BSCALE')})")
        else:  # DQ
            if hdr.get("BITPIX") != 32 or hdr.get("BZERO") != 2147483648 or hdr.get("BSCALE", 1) != 1:
                rep.fail(
                    f"DQ: BITPIX={hdr.get('BITPIX')} BZERO={hdr.get('BZERO')} BSCALE={hdr.get('BSCALE')}: "
                    "expected uint32 = BITPIX 32 with BZERO 2147483648 (BSCALE 1)"
                )
        try:
            data = hdu.data
        except Exception as e:  # noqa: BLE001
            rep.fail(f"{ext}: cannot read data: {type(e).__name__}: {e}")
            continue
        if data is None:
            rep.fail(f"{ext}: no data")
            continue
        want = np.dtype(np.uint32) if ext == "DQ" else np.dtype(np.float32)
        if data.dtype.newbyteorder("=") != want:
            rep.fail(f"{ext}: dtype {data.dtype.name}, expected {want.name}")
        if sci_shape is not None and data.shape != sci_shape and ext != "SCI":
            rep.fail(f"{ext}: shape {data.shape} differs from SCI {sci_shape}")
        if data.shape != shape:
            rep.fail(f"{ext}: data shape {data.shape} vs NAXIS {shape}")

    for ext in ("SCI", "ERR"):
        if ext in names:
            b = hdul[ext].header.get("BUNIT")
            if b != BUNIT:
                rep.fail(f"{ext}: BUNIT={b!r}, expected {BUNIT!r}")
    if sci_shape is not None and (sci_shape[0] < 1 or sci_shape[1] < 1):
        rep.fail(f"SCI: empty shape {sci_shape}")
    return sci_shape


PRIMARY_KEYS = ("TELESCOP", "INSTRUME", "DETECTOR", "FILTER", "PROGRAM", "OBSERVTN", "VISIT",
                "VISITGRP", "SEQ_ID", "ACT_ID", "EXPOSURE", "EXPSTART", "EXPMID", "EXPEND",
                "EFFEXPTM", "SUBARRAY", "TARGPROP")


def check_primary_header(rep, hdul):
    """The keys tessera reads must be cards of the primary HDU itself.

    stdatamodels falls back to the ASDF tree for a card missing from the FITS
    header, so ImageModel alone would not notice a missing card.
    """
    hdr = hdul[0].header
    keys = PRIMARY_KEYS + (("PUPIL",) if hdr.get("INSTRUME") == "NIRCAM" else ())
    missing = [k for k in keys if k not in hdr or hdr[k] is None or str(hdr[k]).strip() == ""]
    if missing:
        rep.fail(f"primary header lacks {', '.join(missing)}")


def _short(e, limit=300):
    text = f"{type(e).__name__}: {e}"
    first = " | ".join(ln.strip() for ln in text.splitlines()[:2] if ln.strip())
    return first if len(first) <= limit else first[:limit] + " ..."


def check_datamodel(rep, path, sci_shape, np):
    """Open with stdatamodels ImageModel, warnings as errors. Returns (opened, gwcs or None)."""
    from stdatamodels.jwst.datamodels import ImageModel

    gwcs_obj = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with ImageModel(str(path)) as m:
                m.validate()
                meta = m.meta
                inst = meta.instrument

                def need(label, value):
                    if value is None or (isinstance(value, str) and not value.strip()):
                        rep.fail(f"ImageModel: {label} is not populated")
                        return False
                    return True

                if meta.telescope != "JWST":
                    rep.fail(f"ImageModel: meta.telescope (TELESCOP) = {meta.telescope!r}, expected 'JWST'")
                need("meta.instrument.name (INSTRUME)", inst.name)
                need("meta.instrument.detector (DETECTOR)", inst.detector)
                need("meta.instrument.filter (FILTER)", inst.filter)
                if inst.name == "NIRCAM":
                    need("meta.instrument.pupil (PUPIL)", inst.pupil)
                obs = meta.observation
                fields = {
                    "PROGRAM": ("meta.observation.program_number", obs.program_number),
                    "OBSERVTN": ("meta.observation.observation_number", obs.observation_number),
                    "VISIT": ("meta.observation.visit_number", obs.visit_number),
                    "VISITGRP": ("meta.observation.visit_group", obs.visit_group),
                    "SEQ_ID": ("meta.observation.sequence_id", obs.sequence_id),
                    "ACT_ID": ("meta.observation.activity_id", obs.activity_id),
                    "EXPOSURE": ("meta.observation.exposure_number", obs.exposure_number),
                }
                for key, (label, value) in fields.items():
                    need(f"{label} ({key})", value)
                need("meta.subarray.name (SUBARRAY)", meta.subarray.name)
                need("meta.target.proposer_name (TARGPROP)", meta.target.proposer_name)
                exp = meta.exposure
                t0, tm, t1 = exp.start_time, exp.mid_time, exp.end_time
                if need("meta.exposure.start_time (EXPSTART)", t0) and need(
                    "meta.exposure.mid_time (EXPMID)", tm
                ) and need("meta.exposure.end_time (EXPEND)", t1):
                    if not (t0 <= tm <= t1):
                        rep.fail(f"ImageModel: EXPSTART {t0} <= EXPMID {tm} <= EXPEND {t1} violated")
                    if not (40000.0 < t0 < 80000.0):
                        rep.fail(f"ImageModel: EXPSTART {t0} is not a plausible MJD")
                if need("meta.exposure.exposure_time (EFFEXPTM)", exp.exposure_time):
                    if not exp.exposure_time > 0:
                        rep.fail(f"ImageModel: EFFEXPTM = {exp.exposure_time}, expected > 0")
                if m.data is None or m.data.shape != sci_shape:
                    rep.fail(
                        f"ImageModel: data shape {None if m.data is None else m.data.shape} "
                        f"!= SCI shape {sci_shape}"
                    )
                for attr in ("err", "dq", "var_poisson", "var_rnoise", "var_flat", "area"):
                    a = getattr(m, attr, None)
                    if a is None or a.shape != sci_shape:
                        rep.fail(f"ImageModel: {attr} shape {None if a is None else a.shape} != {sci_shape}")
                if meta.bunit_data != BUNIT:
                    rep.fail(f"ImageModel: meta.bunit_data = {meta.bunit_data!r}, expected {BUNIT!r}")
                if meta.subarray.xsize is not None and sci_shape and meta.subarray.xsize != sci_shape[1]:
                    rep.fail(f"ImageModel: SUBSIZE1 {meta.subarray.xsize} != NAXIS1 {sci_shape[1]}")
                if meta.subarray.ysize is not None and sci_shape and meta.subarray.ysize != sci_shape[0]:
                    rep.fail(f"ImageModel: SUBSIZE2 {meta.subarray.ysize} != NAXIS2 {sci_shape[0]}")

                # JWST file name <-> header
                mm = NAME_RE.match(path.name)
                if not mm:
                    rep.fail(
                        f"file name {path.name!r} does not follow jwPPPPPOOOVVV_GGSAA_EEEEE_<detector>_cal.fits"
                    )
                else:
                    pairs = [
                        ("program", "PROGRAM", obs.program_number),
                        ("obs", "OBSERVTN", obs.observation_number),
                        ("visit", "VISIT", obs.visit_number),
                        ("visitgrp", "VISITGRP", obs.visit_group),
                        ("seq", "SEQ_ID", obs.sequence_id),
                        ("act", "ACT_ID", obs.activity_id),
                        ("expnum", "EXPOSURE", obs.exposure_number),
                    ]
                    for grp, key, value in pairs:
                        if value is not None and str(value) != mm.group(grp):
                            rep.fail(f"file name has {key}={mm.group(grp)!r} but header has {value!r}")
                    det = (inst.detector or "").lower()
                    name_det = mm.group("det")
                    if det and name_det != det:
                        rep.fail(f"file name detector {name_det!r} but DETECTOR={inst.detector!r}")

                try:
                    gwcs_obj = meta.wcs
                except Exception:  # noqa: BLE001 - absence is handled below
                    gwcs_obj = None
    except CheckFailed:
        raise
    except Exception as e:  # noqa: BLE001 - report whatever the library says
        tb = traceback.extract_tb(e.__traceback__)
        where = f" (at {tb[-1].filename.split('site-packages/')[-1]}:{tb[-1].lineno})" if tb else ""
        rep.fail(f"stdatamodels ImageModel open/validate: {_short(e)}{where}")
        return False, None
    return True, gwcs_obj


def check_wcs(rep, hdul, sci_shape, gwcs_obj, np, strict_datfix):
    from astropy.wcs import WCS

    if "SCI" not in [h.name for h in hdul] or sci_shape is None:
        return
    hdr = hdul["SCI"].header
    for key in ("CTYPE1", "CTYPE2", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", "A_ORDER", "B_ORDER",
                "AP_ORDER", "BP_ORDER"):
        if key not in hdr:
            rep.fail(f"SCI header: no {key}")
    has_cd = all(k in hdr for k in ("CD1_1", "CD1_2", "CD2_1", "CD2_2"))
    has_pc = any(k in hdr for k in ("PC1_1", "PC1_2", "PC2_1", "PC2_2")) or any(
        k in hdr for k in ("CDELT1", "CDELT2"))
    if not has_cd and not has_pc:
        rep.fail("SCI header: neither CDi_j nor PCi_j/CDELTi")
    if has_cd and has_pc:
        rep.fail("SCI header: both CDi_j and PCi_j/CDELTi present")
    if hdr.get("RADESYS") != "ICRS":
        rep.fail(f"SCI header: RADESYS={hdr.get('RADESYS')!r}, expected 'ICRS'")

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            w = WCS(hdr)
    except Exception as e:  # noqa: BLE001
        rep.fail(f"astropy WCS(SCI header): {_short(e)}")
        return
    for wm in caught:
        msg = str(wm.message)
        cat = wm.category.__name__
        if cat == "FITSFixedWarning" and _is_datfix_only(msg):
            if strict_datfix:
                rep.fail(f"astropy WCS(SCI header) {cat}: {msg}")
            else:
                rep.note("astropy datfix derived DATE-BEG/AVG/END from MJD-* (genuine JWST layout)")
            continue
        rep.fail(f"astropy WCS(SCI header) warned {cat}: {msg}")

    ctype = list(w.wcs.ctype)
    if ctype != ["RA---TAN-SIP", "DEC--TAN-SIP"]:
        rep.fail(f"WCS CTYPE = {ctype}, expected ['RA---TAN-SIP', 'DEC--TAN-SIP']")
    if not w.has_celestial or w.naxis != 2:
        rep.fail(f"WCS is not a 2-axis celestial WCS (naxis={w.naxis}, celestial={w.has_celestial})")
        return
    if w.sip is None:
        rep.fail("WCS has no SIP distortion (astropy found no A_/B_ coefficients)")
        return
    if w.sip.ap is None or w.sip.bp is None:
        rep.fail("WCS SIP has no inverse AP/BP polynomials")
    try:
        scales = w.proj_plane_pixel_scales()
        sc = [float(s.to_value("arcsec")) if hasattr(s, "to_value") else float(s) * 3600 for s in scales]
        lo, hi = PIXSCALE_RANGE_ARCSEC
        if not all(lo < s < hi for s in sc):
            rep.fail(f"WCS pixel scale {sc} arcsec outside {PIXSCALE_RANGE_ARCSEC}")
    except Exception as e:  # noqa: BLE001
        rep.fail(f"WCS pixel scale: {type(e).__name__}: {e}")

    ny, nx = sci_shape
    step_x = max(1, nx // 16)
    step_y = max(1, ny // 16)
    xs = np.unique(np.concatenate([np.arange(0, nx, step_x), [nx - 1]])).astype(float)
    ys = np.unique(np.concatenate([np.arange(0, ny, step_y), [ny - 1]])).astype(float)
    gx, gy = np.meshgrid(xs, ys)
    gx, gy = gx.ravel(), gy.ravel()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ra, dec = w.all_pix2world(gx, gy, 0)
    except Exception as e:  # noqa: BLE001
        rep.fail(f"WCS all_pix2world: {type(e).__name__}: {e}")
        return
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec))):
        rep.fail("WCS all_pix2world gives non-finite sky coordinates inside the image")
        return
    if w.sip.ap is not None and w.sip.bp is not None:
        try:
            foc = w.sip_pix2foc(np.stack([gx, gy], 1), 0)
            back = w.sip_foc2pix(foc, 0)
            err = float(np.max(np.hypot(back[:, 0] - gx, back[:, 1] - gy)))
            if not err <= INV_TOL_PX:
                rep.fail(f"SIP AP/BP do not invert A/B: max error {err:.4g} px > {INV_TOL_PX} px")
        except Exception as e:  # noqa: BLE001
            rep.fail(f"SIP inverse check: {type(e).__name__}: {e}")

    if gwcs_obj is None:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # gwcs bounding-box NaNs are checked explicitly
            gra, gdec = gwcs_obj(gx, gy, with_bounding_box=False)
        gra = np.asarray(gra, dtype=float)
        gdec = np.asarray(gdec, dtype=float)
        if not (np.all(np.isfinite(gra)) and np.all(np.isfinite(gdec))):
            rep.fail("ASDF gwcs (meta.wcs) gives non-finite sky coordinates inside the image")
            return
        dra = ((gra - ra + 180.0) % 360.0 - 180.0) * np.cos(np.radians(dec))
        sep_arcsec = np.hypot(dra, gdec - dec) * 3600.0
        pix = min(sc) if "sc" in locals() else 0.03
        sep_px = float(sep_arcsec.max() / pix)
        if not sep_px <= GWCS_TOL_PX:
            rep.fail(f"ASDF gwcs (meta.wcs) and FITS SIP WCS differ by up to {sep_px:.4g} px > {GWCS_TOL_PX} px")
    except Exception as e:  # noqa: BLE001
        rep.fail(f"evaluating ASDF gwcs (meta.wcs): {type(e).__name__}: {e}")


def check_noise(rep, hdul, np):
    names = [h.name for h in hdul]
    if not all(e in names for e in ("SCI", "ERR", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT")):
        return
    try:
        sci = np.asarray(hdul["SCI"].data, dtype=np.float64)
        err = np.asarray(hdul["ERR"].data, dtype=np.float64)
        vp = np.asarray(hdul["VAR_POISSON"].data, dtype=np.float64)
        vr = np.asarray(hdul["VAR_RNOISE"].data, dtype=np.float64)
        vf = np.asarray(hdul["VAR_FLAT"].data, dtype=np.float64)
    except Exception as e:  # noqa: BLE001
        rep.fail(f"reading arrays: {type(e).__name__}: {e}")
        return
    if len({a.shape for a in (sci, err, vp, vr, vf)}) != 1:
        return  # reported by the layout check
    if not np.isfinite(sci).any():
        rep.fail("SCI has no finite pixel")
    for name, a in (("ERR", err), ("VAR_POISSON", vp), ("VAR_RNOISE", vr), ("VAR_FLAT", vf)):
        fin = np.isfinite(a)
        nneg = int(np.count_nonzero(a[fin] < 0))
        if nneg:
            rep.fail(f"{name}: {nneg} negative values")
    ok = np.isfinite(err) & np.isfinite(vp) & np.isfinite(vr) & np.isfinite(vf)
    n = int(ok.sum())
    if n == 0:
        rep.fail("no pixel where ERR and all VAR_* are finite: ERR^2 = sum(VAR_*) cannot be checked")
        return
    lhs = err[ok] ** 2
    rhs = vp[ok] + vr[ok] + vf[ok]
    # float32 storage: allow a tiny absolute floor for pixels with ~0 variance
    tol = VAR_RTOL * np.abs(rhs) + 1e-30
    bad = np.abs(lhs - rhs) > tol
    nbad = int(bad.sum())
    if nbad:
        i = int(np.flatnonzero(bad)[0])
        yy, xx = np.argwhere(ok)[i]
        rep.fail(
            f"ERR^2 != VAR_POISSON+VAR_RNOISE+VAR_FLAT (rtol {VAR_RTOL}) at {nbad} of {n} pixels, "
            f"first at x={xx} y={yy}: ERR^2={lhs[i]:.6g} sum(VAR)={rhs[i]:.6g}"
        )


def check_file(path, np, strict_datfix, require_asdf):
    from astropy.io import fits

    rep = FileReport(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            hdul = fits.open(path, memmap=False)
    except Exception as e:  # noqa: BLE001
        rep.fail(f"astropy cannot open the FITS file: {type(e).__name__}: {e}")
        return rep
    with hdul:
        sci_shape = check_fits_layout(rep, hdul, np)
        check_primary_header(rep, hdul)
        names = [h.name for h in hdul]
        if "ASDF" not in names:
            msg = "no ASDF extension (no gwcs for jwst tools)"
            if require_asdf:
                rep.fail(msg)
            else:
                rep.note(msg)
        opened, gwcs_obj = False, None
        if sci_shape is not None:
            opened, gwcs_obj = check_datamodel(rep, path, sci_shape, np)
        else:
            rep.fail("stdatamodels ImageModel check not run: no usable SCI extension")
        if opened and "ASDF" in names and gwcs_obj is None:
            rep.note("ASDF extension has no meta.wcs (gwcs); SIP-vs-gwcs comparison not done")
        check_wcs(rep, hdul, sci_shape, gwcs_obj, np, strict_datfix)
        check_noise(rep, hdul, np)
    return rep


def check_truth(truth_dir, data_dir, cal_names):
    """Generic checks on the truth directory. Returns (failures, notes)."""
    import csv

    from astropy.io import fits

    failures, notes = [], []
    files = sorted(p for p in truth_dir.rglob("*") if p.is_file())
    if not files:
        return [f"truth directory {truth_dir} is empty"], notes
    mentioned = set()
    unchecked = []
    cal_re = re.compile(r"[A-Za-z0-9_.-]*_cal\.fits")
    for p in files:
        suffix = "".join(p.suffixes[-2:]).lower() if p.suffix.lower() == ".gz" else p.suffix.lower()
        try:
            if suffix in (".fits", ".fit", ".fits.gz"):
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    with fits.open(p, memmap=False) as h:
                        h.verify("exception")
                        for hdu in h:
                            _ = hdu.data
            elif suffix == ".json":
                with open(p) as fh:
                    text = fh.read()
                json.loads(text)
                mentioned.update(cal_re.findall(text))
            elif suffix in (".csv", ".ecsv"):
                with open(p, newline="") as fh:
                    text = fh.read()
                lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
                if not lines:
                    raise ValueError("no header line")
                next(csv.reader([lines[0]]))
                mentioned.update(cal_re.findall(text))
            else:
                unchecked.append(p.name)
        except Exception as e:  # noqa: BLE001
            failures.append(f"truth file {p}: {type(e).__name__}: {e}")
    missing = sorted(n for n in mentioned if n not in cal_names)
    if missing:
        failures.append(
            f"truth mentions {len(missing)} cal file(s) not found under {data_dir}: {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
        )
    if unchecked:
        notes.append(f"truth: {len(unchecked)} file(s) of unknown type not checked: {', '.join(unchecked[:8])}"
                     + (" ..." if len(unchecked) > 8 else ""))
    notes.append(f"truth: {len(files) - len(unchecked)} file(s) checked in {truth_dir}")
    return failures, notes


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", help="directory holding *_cal.fits (searched recursively)")
    ap.add_argument("--truth", help="truth directory (default: DIR/truth when it exists)")
    ap.add_argument("--max-files", type=int, default=None, metavar="N",
                    help="check only the first N files (sorted by path); the rest are reported as skipped")
    ap.add_argument("--strict-datfix", action="store_true",
                    help="fail on astropy's datfix FITSFixedWarning for MJD-BEG/AVG/END in SCI too")
    ap.add_argument("--require-asdf", action="store_true", help="fail files without ASDF extension")
    args = ap.parse_args(argv)

    data_dir = Path(args.dir)
    if not data_dir.is_dir():
        print(f"crosscheck: error: {data_dir} is not a directory", file=sys.stderr)
        return 2
    if args.max_files is not None and args.max_files < 1:
        print("crosscheck: error: --max-files must be >= 1", file=sys.stderr)
        return 2
    truth_dir = Path(args.truth) if args.truth else (data_dir / "truth" if (data_dir / "truth").is_dir() else None)
    if args.truth and not truth_dir.is_dir():
        print(f"crosscheck: error: truth directory {truth_dir} does not exist", file=sys.stderr)
        return 2

    try:
        import numpy as np
        import astropy  # noqa: F401
        import stdatamodels  # noqa: F401
    except ImportError as e:
        print(f"crosscheck: error: {e}; create the venv with scripts/setup-python", file=sys.stderr)
        return 2

    def in_truth(p):
        if truth_dir is None:
            return False
        try:
            p.resolve().relative_to(truth_dir.resolve())
            return True
        except ValueError:
            return False

    files = sorted(p for p in data_dir.rglob("*_cal.fits") if p.is_file() and not in_truth(p))
    if not files:
        print(f"crosscheck: error: no *_cal.fits under {data_dir}", file=sys.stderr)
        return 2
    total = len(files)
    if args.max_files is not None and total > args.max_files:
        print(f"crosscheck: --max-files {args.max_files}: checking {args.max_files} of {total} files, "
              f"{total - args.max_files} not checked")
        files = files[: args.max_files]

    n_failed = 0
    note_counts = {}
    for p in files:
        try:
            rep = check_file(p, np, args.strict_datfix, args.require_asdf)
        except Exception as e:  # noqa: BLE001 - a crash in a check is a failure, never a skip
            rep = FileReport(p)
            rep.fail(f"crosscheck crashed: {type(e).__name__}: {e}\n{traceback.format_exc()}")
        for msg in rep.notes:
            note_counts[msg] = note_counts.get(msg, 0) + 1
        if rep.failures:
            n_failed += 1
            for msg in rep.failures:
                one_line = " | ".join(ln.strip() for ln in str(msg).splitlines() if ln.strip())
                print(f"FAIL {p}: {one_line}")

    for msg, n in note_counts.items():
        print(f"note: {n} file(s): {msg}")

    truth_failed = False
    if truth_dir is not None:
        tfail, tnotes = check_truth(truth_dir, data_dir, {p.name for p in data_dir.rglob("*_cal.fits")})
        for msg in tnotes:
            print(f"note: {msg}")
        for msg in tfail:
            print(f"FAIL truth: {msg}")
        truth_failed = bool(tfail)
    else:
        print(f"note: no truth directory checked (none given and {data_dir / 'truth'} does not exist)")

    n = len(files)
    if n_failed or truth_failed:
        what = f"{n_failed} of {n} files FAILED" if n_failed else f"{n} files OK but the truth check FAILED"
        print(f"crosscheck: {what}")
        return 1
    print(f"crosscheck: {n} files OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())

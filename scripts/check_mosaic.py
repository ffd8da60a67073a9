#!/usr/bin/env python3
"""Independent check of a tessera mosaic FITS with astropy.

Usage: check_mosaic.py MOSAIC.fits

Opens the file with warnings turned into errors, then checks:
- the extensions SCI ERR DQ WHT CON VAR_POISSON VAR_RNOISE VAR_FLAT are present;
- SCI has a celestial 2-D WCS (RA---TAN/DEC--TAN, degrees) that astropy builds without warnings,
  and whose pixel scale matches the image;
- BUNIT of SCI/ERR is MJy/sr;
- WHT > 0 where SCI is finite, and SCI is NaN where WHT == 0;
- the variances are non-negative, with ERR^2 = VAR_POISSON + VAR_RNOISE + VAR_FLAT where finite;
- HISTORY carries the tessera version and the config hash.
Prints "mosaic OK: ..." and exits 0; otherwise names the file, the HDU and what failed, and exits 1.
"""
import sys
import warnings

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales


def fail(msg):
    print(f"check_mosaic: {sys.argv[1]}: {msg}")
    sys.exit(1)


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    path = sys.argv[1]
    warnings.simplefilter("error")
    with fits.open(path) as h:
        names = [x.name for x in h]
        for e in ["SCI", "ERR", "DQ", "WHT", "CON", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT"]:
            if e not in names:
                fail(f"extension {e} missing (have {names})")
        sci_h = h["SCI"].header
        for e in ["SCI", "ERR"]:
            if h[e].header.get("BUNIT") != "MJy/sr":
                fail(f"HDU {e}: BUNIT is {h[e].header.get('BUNIT')!r}, expected 'MJy/sr'")
        w = WCS(sci_h)
        if not w.has_celestial or w.naxis != 2:
            fail("HDU SCI: no 2-D celestial WCS")
        ctype = list(w.wcs.ctype)
        if ctype != ["RA---TAN", "DEC--TAN"]:
            fail(f"HDU SCI: CTYPE {ctype}")
        scale = proj_plane_pixel_scales(w) * 3600.0
        if not np.allclose(scale[0], scale[1], rtol=1e-9) or not (0.01 < scale[0] < 1.0):
            fail(f"HDU SCI: odd pixel scale {scale} arcsec")
        ny, nx = h["SCI"].data.shape
        ra, dec = w.all_pix2world([[0, 0], [nx - 1, ny - 1]], 0).T
        if not np.all(np.isfinite(ra)) or not np.all(np.isfinite(dec)):
            fail("HDU SCI: WCS gives non-finite sky positions at the corners")
        sci = h["SCI"].data.astype(np.float64)
        wht = h["WHT"].data
        err = h["ERR"].data.astype(np.float64)
        if np.any(np.isfinite(sci) & (wht <= 0)):
            fail("HDU WHT: zero weight under finite SCI pixels")
        if np.any(~np.isfinite(sci) & (wht > 0)):
            fail("HDU SCI: NaN under positive weight")
        var = sum(h[e].data.astype(np.float64) for e in ["VAR_POISSON", "VAR_RNOISE", "VAR_FLAT"])
        ok = np.isfinite(var) & np.isfinite(err)
        if np.any(var[ok] < 0):
            fail("HDU VAR_*: negative variance")
        if not np.allclose(err[ok] ** 2, var[ok], rtol=1e-4, atol=1e-12):
            fail("HDU ERR: ERR^2 differs from the sum of the variances")
        if h["CON"].data.ndim not in (2, 3) or h["CON"].data.shape[-2:] != (ny, nx):
            fail(f"HDU CON: shape {h['CON'].data.shape}")
        hist = "\n".join(str(x) for x in h[0].header.get("HISTORY", []))
        if "tessera" not in hist or "config sha256" not in hist:
            fail("PRIMARY: HISTORY lacks tessera provenance")
        cov = np.mean(wht > 0)
        print(f"mosaic OK: {path}: {nx}x{ny} px at {scale[0]:.4f}\"/px, {cov:.1%} covered, extensions {names[1:]}")


if __name__ == "__main__":
    main()

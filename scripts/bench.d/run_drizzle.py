#!/usr/bin/env python3
"""run_drizzle.py PEER_DIR OUT.fits: co-add the prepared inputs onto tessera's grid with the `drizzle`
package (cdrizzle, square kernel, pixfrac 1, inverse-variance weights), the timed peer run."""
import json
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from drizzle.resample import Drizzle
from drizzle.utils import calc_pixmap

t0 = time.perf_counter()
peer, out = Path(sys.argv[1]), Path(sys.argv[2])
inputs = json.loads((peer / "inputs.json").read_text())["inputs"]
gh = fits.Header.fromfile(str(peer / "grid.hdr"), sep="\n", endcard=True, padding=False)
out_wcs = WCS(gh)
shape = (gh["NAXIS2"], gh["NAXIS1"])
out_wcs.array_shape = shape
d = Drizzle(kernel="square", out_shape=shape, fillval=np.nan)
for it in inputs:
    with fits.open(peer / it["sci"], memmap=False) as f:
        data, hdr = f[0].data, f[0].header
    with fits.open(peer / it["wht"], memmap=False) as f:
        wht = f[0].data
    in_wcs = WCS(hdr)
    in_wcs.array_shape = data.shape
    pixmap = calc_pixmap(in_wcs, out_wcs)
    d.add_image(data, exptime=float(it["exptime"]), pixmap=pixmap, weight_map=wht, pixfrac=1.0, in_units="cps")
hdr = gh.copy()
for k in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2"):
    hdr.remove(k, ignore_missing=True)
fits.HDUList([fits.PrimaryHDU(d.out_img.astype(np.float32), header=hdr),
              fits.ImageHDU(d.out_wht.astype(np.float32), header=hdr, name="WHT")]).writeto(out, overwrite=True)
print(json.dumps({"core_s": time.perf_counter() - t0}))

#!/usr/bin/env python3
"""run_reproject.py PEER_DIR OUT.fits [--match-background]: co-add the prepared inputs onto tessera's
grid with reproject's reproject_and_coadd (reproject_interp, weighted mean), the timed peer run."""
import json
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from reproject import reproject_interp
from reproject.mosaicking import reproject_and_coadd

t0 = time.perf_counter()
peer, out = Path(sys.argv[1]), Path(sys.argv[2])
match_bg = "--match-background" in sys.argv[3:]
inputs = json.loads((peer / "inputs.json").read_text())["inputs"]
gh = fits.Header.fromfile(str(peer / "grid.hdr"), sep="\n", endcard=True, padding=False)
out_wcs = WCS(gh)
shape = (gh["NAXIS2"], gh["NAXIS1"])
data = [str(peer / it["sci"]) for it in inputs]   # file names: read one at a time
weights = [str(peer / it["wht"]) for it in inputs]
arr, foot = reproject_and_coadd(data, out_wcs, shape_out=shape, input_weights=weights,
                                reproject_function=reproject_interp, combine_function="mean",
                                match_background=match_bg)
hdr = gh.copy()
for k in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2"):
    hdr.remove(k, ignore_missing=True)
fits.HDUList([fits.PrimaryHDU(arr.astype(np.float32), header=hdr),
              fits.ImageHDU(foot.astype(np.float32), header=hdr, name="FOOTPRINT")]).writeto(out, overwrite=True)
print(json.dumps({"core_s": time.perf_counter() - t0}))

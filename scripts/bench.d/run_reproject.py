#!/usr/bin/env python3
"""run_reproject.py PEER_DIR OUT.fits [--match-background] [--combine mean|median]: co-add the prepared
inputs onto tessera's grid with reproject's reproject_and_coadd (reproject_interp, weighted mean), the
timed peer run. reproject_and_coadd has no median (its combine functions are mean, sum, first, last,
min and max), so --combine median reprojects each input with reproject_interp and takes numpy's
nanmedian of the stack where the input's weight is positive: a median co-add as a user would write it.

With --match-background, the per-input corrections reproject subtracts (the return value of its own
solve_corrections_sgd, recorded by a pass-through wrapper, not recomputed) are added by cal file
name to the JSON line printed at the end ("sky_levels"), when every input was used."""
import json
import sys
import warnings
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from reproject import reproject_interp
from reproject.mosaicking import _coadd, reproject_and_coadd

t0 = time.perf_counter()
peer, out = Path(sys.argv[1]), Path(sys.argv[2])
match_bg = "--match-background" in sys.argv[3:]
combine = sys.argv[sys.argv.index("--combine") + 1] if "--combine" in sys.argv[3:] else "mean"
if combine not in ("mean", "median"):
    sys.exit(f"run_reproject.py: --combine {combine}: mean or median")
inputs = json.loads((peer / "inputs.json").read_text())["inputs"]
gh = fits.Header.fromfile(str(peer / "grid.hdr"), sep="\n", endcard=True, padding=False)
out_wcs = WCS(gh)
shape = (gh["NAXIS2"], gh["NAXIS1"])
data = [str(peer / it["sci"]) for it in inputs]   # file names: read one at a time
weights = [str(peer / it["wht"]) for it in inputs]
solved = []
if match_bg:
    # reproject_and_coadd calls the name bound in its module: wrap it there, record what it returns
    _sgd = _coadd.solve_corrections_sgd

    def _recording_sgd(*a, **k):
        c = _sgd(*a, **k)
        solved.append(np.array(c, dtype=float))
        return c
    _coadd.solve_corrections_sgd = _recording_sgd
if combine == "median":
    stack = np.full((len(inputs), *shape), np.nan, dtype=np.float32)
    for k, (d, w) in enumerate(zip(data, weights)):
        with fits.open(d) as fd, fits.open(w) as fw:
            iw = WCS(fd[0].header)
            # only the grid's bounding box of this input (its corners, 2 px of margin)
            ny_in, nx_in = fd[0].data.shape
            cx, cy = out_wcs.world_to_pixel(iw.pixel_to_world([-0.5, nx_in - 0.5, -0.5, nx_in - 0.5],
                                                               [-0.5, -0.5, ny_in - 0.5, ny_in - 0.5]))
            x0, x1 = max(0, int(np.floor(np.min(cx))) - 2), min(shape[1], int(np.ceil(np.max(cx))) + 3)
            y0, y1 = max(0, int(np.floor(np.min(cy))) - 2), min(shape[0], int(np.ceil(np.max(cy))) + 3)
            if x1 <= x0 or y1 <= y0:
                continue
            sub = out_wcs[y0:y1, x0:x1]
            a, fp = reproject_interp((fd[0].data, iw), sub, shape_out=(y1 - y0, x1 - x0))
            wt, _ = reproject_interp((fw[0].data, WCS(fw[0].header)), sub, shape_out=(y1 - y0, x1 - x0))
        ok = (fp > 0) & np.isfinite(a) & (wt > 0)
        stack[k, y0:y1, x0:x1][ok] = a[ok]
    foot = np.isfinite(stack).sum(axis=0).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # all-NaN columns outside every input: NaN, as intended
        arr = np.nanmedian(stack, axis=0)
else:
    arr, foot = reproject_and_coadd(data, out_wcs, shape_out=shape, input_weights=weights,
                                    reproject_function=reproject_interp, combine_function=combine,
                                    match_background=match_bg)
hdr = gh.copy()
for k in ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2"):
    hdr.remove(k, ignore_missing=True)
fits.HDUList([fits.PrimaryHDU(arr.astype(np.float32), header=hdr),
              fits.ImageHDU(foot.astype(np.float32), header=hdr, name="FOOTPRINT")]).writeto(out, overwrite=True)
info = {"core_s": time.perf_counter() - t0}
# the arrays reproject matched are the inputs in order (an input off the grid would be skipped:
# then the mapping is unknown and no levels are reported)
if len(solved) == 1 and len(solved[0]) == len(inputs):
    info["sky_levels"] = {Path(it["cal"]).name: float(c) for it, c in zip(inputs, solved[0])}
print(json.dumps(info))

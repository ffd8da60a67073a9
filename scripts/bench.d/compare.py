#!/usr/bin/env python3
"""compare.py REF.fits OUT.json LABEL=FILE...: untimed agreement of every mosaic with a reference
mosaic on the same grid (the SCI extension if there is one, else the first 2-D image; 0 or NaN =
no data). Writes per label: shape match, common coverage, median |diff| in MJy/sr, and the median
ratio on the reference's brightest 0.5 % pixels (point-source alignment / flux scale)."""
import json
import sys

import numpy as np
from astropy.io import fits


def image(path):
    with fits.open(path, memmap=False) as f:
        names = [h.name for h in f]
        if "SCI" in names:
            return np.asarray(f["SCI"].data, dtype=np.float64)
        for h in f:
            if h.data is not None and getattr(h.data, "ndim", 0) == 2:
                return np.asarray(h.data, dtype=np.float64)
    raise ValueError(f"{path}: no 2-D image")


ref = image(sys.argv[1])
ref[ref == 0] = np.nan
res = {}
for arg in sys.argv[3:]:
    label, path = arg.split("=", 1)
    try:
        a = image(path)
    except Exception as e:  # noqa: BLE001 - report and go on
        res[label] = {"error": str(e)[:200]}
        continue
    if a.shape != ref.shape:
        res[label] = {"shape": list(a.shape), "error": f"shape {a.shape} != reference {ref.shape}"}
        continue
    a[a == 0] = np.nan
    m = np.isfinite(a) & np.isfinite(ref)
    if not m.any():
        res[label] = {"error": "no common pixels"}
        continue
    d = a[m] - ref[m]
    hi = ref[m] > np.percentile(ref[m], 99.5)
    res[label] = {"coverage": float(m.sum() / np.isfinite(ref).sum()), "median_abs_diff": float(np.median(np.abs(d))),
                  "median_diff": float(np.median(d)), "bright_ratio": float(np.median(a[m][hi] / ref[m][hi]))}
json.dump(res, open(sys.argv[2], "w"), indent=1)

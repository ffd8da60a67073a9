#!/usr/bin/env python3
"""run_convolve_astropy.py MOSAIC KERNEL OUT: astropy's convolve_fft on a tessera mosaic with
tessera's own matching kernel at the mosaic's pixel scale (`psfmatch/kernels/<band>_to_<target>_mosaic.fits`),
computing what tessera's psfmatch stage computes (src/kernels/psfmatch/convolve.rs), in one process,
reading the FITS and writing the result FITS (SCI, ERR), so that scripts/bench --convolve compares
like with like. Prints one JSON line of inner timings (read, convolve, write).

  SCI = convolve_fft(SCI, K, nan_treatment="interpolate", preserve_nan=True, boundary="fill",
                     fill_value=NaN, min_wt=1e-3)
        the normalised convolution sum(K w x) / sum(K w), w = 1 where SCI is finite and 0 elsewhere,
        including beyond the image's edges (fill_value=NaN makes astropy give the padding weight 0;
        with fill_value=0 it would count the padding as zero-valued sky), NaN where SCI is NaN or
        the weight is below 1e-3: tessera's rule. "interpolate" rather than "fill": with "fill" every
        pixel within a kernel radius of the coverage edge would be dragged towards 0.
  ERR = sqrt(convolve_fft(w ERR^2, K^2, nan_treatment="fill", normalize_kernel=False)) / sum(K w),
        sum(K w) = convolve_fft(w, K, nan_treatment="fill", normalize_kernel=False): uncorrelated errors,
        normalised like SCI (two more FFT convolutions; astropy has no option that returns the weights).
"""
import json
import sys
import time

import numpy as np
from astropy.convolution import convolve_fft
from astropy.io import fits


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    mosaic, kernel, out = sys.argv[1:]
    t0 = time.perf_counter()
    with fits.open(mosaic, memmap=False) as f:
        sci = f["SCI"].data.astype(np.float64)
        err = f["ERR"].data.astype(np.float64)
        hdr = f["SCI"].header.copy()
    k = fits.getdata(kernel).astype(np.float64)
    t1 = time.perf_counter()
    w = np.isfinite(sci)
    e2 = np.where(w & np.isfinite(err), err * err, 0.0)
    common = {"boundary": "fill", "allow_huge": True}
    out_sci = convolve_fft(sci, k, nan_treatment="interpolate", preserve_nan=True, fill_value=np.nan,
                           min_wt=1e-3, normalize_kernel=True, **common)
    wsum = convolve_fft(w.astype(np.float64), k, nan_treatment="fill", fill_value=0.0, normalize_kernel=False,
                        **common)
    var = convolve_fft(e2, k * k, nan_treatment="fill", fill_value=0.0, normalize_kernel=False, **common)
    with np.errstate(invalid="ignore", divide="ignore"):
        out_err = np.sqrt(np.maximum(var, 0.0)) / wsum
    out_err[~np.isfinite(out_sci)] = np.nan
    t2 = time.perf_counter()
    keep = {c: hdr[c] for c in hdr if c.startswith(("CTYPE", "CRPIX", "CRVAL", "CD", "CDELT", "CUNIT", "PC"))}
    h = fits.Header(keep)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(out_sci.astype(np.float32), h, name="SCI"),
                  fits.ImageHDU(out_err.astype(np.float32), h, name="ERR")]).writeto(out, overwrite=True)
    t3 = time.perf_counter()
    print(json.dumps({"read_s": t1 - t0, "convolve_s": t2 - t1, "write_s": t3 - t2}))


if __name__ == "__main__":
    main()

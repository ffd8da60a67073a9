#!/usr/bin/env python3
"""run_jwst.py JWST_DIR OUT.fits [--no-outlier]: the JWST pipeline's OutlierDetectionStep then
ResampleStep (default parameters, in memory, offline) on the prepared association, resampled onto
tessera's grid (JWST_DIR/grid.asdf), the timed peer run."""
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "True")
os.environ.setdefault("CRDS_SERVER_URL", "https://localhost.invalid")   # never reach out
os.environ.setdefault("CRDS_PATH", str(Path(sys.argv[1]) / "crds_cache"))

t0 = time.perf_counter()
from jwst.datamodels import ModelLibrary            # noqa: E402
from jwst.outlier_detection import OutlierDetectionStep  # noqa: E402
from jwst.resample import ResampleStep               # noqa: E402

jdir, out = Path(sys.argv[1]), Path(sys.argv[2])
no_outlier = "--no-outlier" in sys.argv[3:]
t1 = time.perf_counter()
lib = ModelLibrary(str(jdir / "asn.json"), on_disk=False)
if not no_outlier:
    lib = OutlierDetectionStep.call(lib, in_memory=True)
t2 = time.perf_counter()
res = ResampleStep.call(lib, output_wcs=str(jdir / "grid.asdf"), in_memory=True)
t3 = time.perf_counter()
res.save(str(out))
print(json.dumps({"import_s": t1 - t0, "outlier_s": t2 - t1, "resample_s": t3 - t2,
                  "core_s": time.perf_counter() - t1, "shape": list(res.data.shape)}))

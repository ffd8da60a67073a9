#!/usr/bin/env python3
"""run_jwst.py JWST_DIR OUT.fits [--no-outlier] [--skymatch METHOD]: the JWST pipeline's
OutlierDetectionStep then ResampleStep (default parameters, in memory, offline) on the prepared
association, resampled onto tessera's grid (JWST_DIR/grid.asdf), the timed peer run.

--skymatch METHOD runs SkyMatchStep(skymethod=METHOD, e.g. match or global+match, other parameters
default: subtract=False, so ResampleStep subtracts meta.background.level) first, as calwebb_image3
does, and adds every model's sky level (by file name) to the JSON line printed at the end."""
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
skymethod = sys.argv[sys.argv.index("--skymatch") + 1] if "--skymatch" in sys.argv[3:] else None
t1 = time.perf_counter()
lib = ModelLibrary(str(jdir / "asn.json"), on_disk=False)
sky_levels = None
if skymethod:
    from jwst.skymatch import SkyMatchStep          # noqa: E402
    lib = SkyMatchStep.call(lib, skymethod=skymethod, in_memory=True)
    sky_levels = {}
    with lib:
        for i, model in enumerate(lib):
            lev = model.meta.background.level
            sky_levels[model.meta.filename] = None if lev is None else float(lev)
            lib.shelve(model, i, modify=False)
t_sky = time.perf_counter()
if not no_outlier:
    lib = OutlierDetectionStep.call(lib, in_memory=True)
t2 = time.perf_counter()
res = ResampleStep.call(lib, output_wcs=str(jdir / "grid.asdf"), in_memory=True)
t3 = time.perf_counter()
res.save(str(out))
info = {"import_s": t1 - t0, "skymatch_s": t_sky - t1, "outlier_s": t2 - t_sky, "resample_s": t3 - t2,
        "core_s": time.perf_counter() - t1, "shape": list(res.data.shape)}
if sky_levels is not None:
    info["sky_levels"] = sky_levels
print(json.dumps(info))

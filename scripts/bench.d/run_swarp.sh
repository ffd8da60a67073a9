#!/bin/sh
# run_swarp.sh PEER_DIR RUN_DIR NTHREADS: SWarp co-add of the prepared inputs onto tessera's grid
# (grid.hdr as the output .head), weighted mean, weight maps, no background subtraction, surface
# brightness kept (no flux scaling); resampling kernel is SWarp's default (LANCZOS3). The timed peer run.
set -eu
peer=$(cd "$1" && pwd); run=$2; nt=${3:-2}
mkdir -p "$run/resamp"
cd "$run"
cp "$peer/grid.hdr" coadd.head
imgs=$(python3 -c 'import json,sys; print(",".join(sys.argv[1]+"/"+i["sci"] for i in json.load(open(sys.argv[1]+"/inputs.json"))["inputs"]))' "$peer")
whts=$(python3 -c 'import json,sys; print(",".join(sys.argv[1]+"/"+i["wht"] for i in json.load(open(sys.argv[1]+"/inputs.json"))["inputs"]))' "$peer")
IFS=,
# shellcheck disable=SC2086
set -- $imgs
unset IFS
exec SWarp "$@" -c /dev/null \
  -IMAGEOUT_NAME coadd.fits -WEIGHTOUT_NAME coadd.weight.fits \
  -WEIGHT_TYPE MAP_WEIGHT -WEIGHT_IMAGE "$whts" \
  -COMBINE Y -COMBINE_TYPE WEIGHTED -RESAMPLE Y -RESAMPLE_DIR resamp -DELETE_TMPFILES Y \
  -SUBTRACT_BACK N -FSCALASTRO_TYPE NONE -FSCALE_KEYWORD NOFSCALE -FSCALE_DEFAULT 1.0 \
  -CELESTIAL_TYPE NATIVE -PROJECTION_TYPE TAN \
  -NTHREADS "$nt" -WRITE_XML N -VERBOSE_TYPE NORMAL

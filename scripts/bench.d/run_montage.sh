#!/bin/sh
# run_montage.sh PEER_DIR RUN_DIR: Montage co-add of the prepared inputs onto tessera's grid
# (grid.hdr as the template): mProjectPP per input with its weight map (-w; flux-conserving plane-to-
# plane reprojection, what mProjExec runs for TAN inputs, but mProjExec 6.0's -W weight column was
# seen to be ignored), then mImgtbl + mAdd -e (mean, exact template size). One process: Debian's
# Montage has no MPI executables. The timed peer run.
set -eu
peer=$(cd "$1" && pwd); run=$2
mkdir -p "$run/proj"
cd "$run"
check() { # Montage reports [struct stat="ERROR", ...] on stdout
  out=$("$@" 2>&1) || { echo "$out" >&2; exit 1; }
  case "$out" in *'stat="ERROR"'*) echo "$out" >&2; exit 1 ;; esac
}
python3 -c 'import json,sys; print("\n".join(i["name"] for i in json.load(open(sys.argv[1]))["inputs"]))' \
  "$peer/inputs.json" > inputs.list
while read -r n; do
  check mProjectPP -w "$peer/wht/$n.fits" "$peer/sci/$n.fits" "proj/$n.fits" "$peer/grid.hdr"
done < inputs.list
check mImgtbl proj pimages.tbl
check mAdd -e -p proj pimages.tbl "$peer/grid.hdr" mosaic.fits
echo "montage: $(wc -l < inputs.list) inputs projected and co-added"

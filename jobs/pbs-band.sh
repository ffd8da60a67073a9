#!/bin/bash
# One band of one target on PBS Pro / OpenPBS: the whole chain (tessera mosaic), resuming what an
# earlier job finished.
# Usage: qsub -v CALDIR=/path/to/cal,MOSAIC=/path/to/mosaic.fits[,CONFIG=config.toml] jobs/pbs-band.sh
#PBS -N tessera-band
#PBS -l select=1:ncpus=32:mpiprocs=8:ompthreads=4:mem=128gb
#PBS -l walltime=02:00:00
#PBS -j oe
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"
: "${CALDIR:?set CALDIR with qsub -v CALDIR=...}"
: "${MOSAIC:?set MOSAIC with qsub -v MOSAIC=...}"
CONFIG="${CONFIG:-config/phangs-nircam.toml}"
source "${JOBS_DIR:-jobs}/resources.sh"
mpiexec -n "$TESSERA_RANKS" "$TESSERA" --config "$CONFIG" --set run.mem_budget_mb="$TESSERA_MEM_MB" \
  --set run.threads="$TESSERA_THREADS" mosaic "$CALDIR" -o "$MOSAIC" --resume

#!/bin/bash
# One band of one target on PBS Pro / OpenPBS.
# Usage: qsub -v CALDIR=/path/to/cal,CONFIG=config/phangs-nircam.toml jobs/pbs-band.sh
#PBS -N tessera-band
#PBS -l select=1:ncpus=32:mpiprocs=8:mem=128gb
#PBS -l walltime=02:00:00
#PBS -j oe
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"
: "${CALDIR:?set CALDIR with qsub -v CALDIR=...}"
CONFIG="${CONFIG:-config/phangs-nircam.toml}"
export RAYON_NUM_THREADS=4
mpirun -n 8 tessera --config "$CONFIG" --set run.threads=4 --set run.mem_budget_mb=12000 plan "$CALDIR"

#!/bin/bash
# A job array over the targets of a campaign file: sub-job i runs the i-th [[target]] (1-based, in
# file order; or the i-th line of TARGETS, a list of target names), all its bands and its release.
# Usage: qsub -J 1-<number of targets> -v CAMPAIGN=campaign.toml[,TARGETS=targets.txt] jobs/pbs-array.sh
#PBS -N tessera-array
#PBS -l select=1:ncpus=32:mpiprocs=8:ompthreads=4:mem=128gb
#PBS -l walltime=04:00:00
#PBS -j oe
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"
: "${CAMPAIGN:?set CAMPAIGN with qsub -v CAMPAIGN=...}"
i="${PBS_ARRAY_INDEX:-${PBS_ARRAYID:?not an array job: submit with qsub -J 1-N}}"
source "${JOBS_DIR:-jobs}/resources.sh"
target=$(nth_target "$CAMPAIGN" "$i" "${TARGETS:-}")
mpiexec -n "$TESSERA_RANKS" "$TESSERA" --set run.mem_budget_mb="$TESSERA_MEM_MB" \
  --set run.threads="$TESSERA_THREADS" run "$CAMPAIGN" --target "$target" --resume

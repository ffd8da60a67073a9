#!/bin/bash
# A whole campaign in one job: the ranks split into communicator groups (NGROUPS, default "auto":
# from the bands' input sizes and the memory budget) that take (target, band) tasks.
# Usage: qsub -v CAMPAIGN=campaign.toml[,NGROUPS=4] jobs/pbs-campaign.sh
#PBS -N tessera-campaign
#PBS -l select=4:ncpus=32:mpiprocs=8:ompthreads=4:mem=128gb
#PBS -l walltime=12:00:00
#PBS -j oe
set -euo pipefail
cd "${PBS_O_WORKDIR:-.}"
: "${CAMPAIGN:?set CAMPAIGN with qsub -v CAMPAIGN=...}"
groups="${NGROUPS:-auto}"
source "${JOBS_DIR:-jobs}/resources.sh"
mpiexec -n "$TESSERA_RANKS" "$TESSERA" --set run.mem_budget_mb="$TESSERA_MEM_MB" \
  --set run.threads="$TESSERA_THREADS" --set run.groups="$groups" run "$CAMPAIGN" --resume

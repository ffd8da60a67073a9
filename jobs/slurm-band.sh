#!/bin/bash
# One band of one target on Slurm: the whole chain (tessera mosaic) on every rank of the job,
# resuming what an earlier (killed or timed-out) job finished.
# Usage: sbatch jobs/slurm-band.sh <cal-dir> <mosaic.fits> [config.toml]
#SBATCH --job-name=tessera-band
#SBATCH --nodes=1
#SBATCH --ntasks=8
#SBATCH --cpus-per-task=4
#SBATCH --mem-per-cpu=4G
#SBATCH --time=02:00:00
#SBATCH --output=tessera-%j.log
set -euo pipefail
caldir="${1:?usage: sbatch jobs/slurm-band.sh <cal-dir> <mosaic.fits> [config.toml]}"
mosaic="${2:?usage: sbatch jobs/slurm-band.sh <cal-dir> <mosaic.fits> [config.toml]}"
config="${3:-config/phangs-nircam.toml}"
source "${JOBS_DIR:-jobs}/resources.sh"
srun "$TESSERA" --config "$config" --set run.mem_budget_mb="$TESSERA_MEM_MB" --set run.threads="$TESSERA_THREADS" \
  mosaic "$caldir" -o "$mosaic" --resume

#!/bin/bash
# One band of one target on Slurm: plan (and, as stages land, the whole band) with N ranks.
# Usage: sbatch jobs/slurm-band.sh <cal-dir> [config.toml]
#SBATCH --job-name=tessera-band
#SBATCH --nodes=1
#SBATCH --ntasks=8
#SBATCH --cpus-per-task=4
#SBATCH --mem-per-cpu=4G
#SBATCH --time=02:00:00
#SBATCH --output=tessera-%j.log
set -euo pipefail
caldir="${1:?usage: sbatch jobs/slurm-band.sh <cal-dir> [config.toml]}"
config="${2:-config/phangs-nircam.toml}"
export RAYON_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"
# memory per rank in MiB, from Slurm's allocation, for the chunk sizing
mem=$(( ${SLURM_MEM_PER_CPU:-4096} * ${SLURM_CPUS_PER_TASK:-1} * 3 / 4 ))
srun tessera --config "$config" --set run.mem_budget_mb="$mem" --set run.threads="${SLURM_CPUS_PER_TASK:-1}" plan "$caldir"

#!/bin/bash
# A job array over targets: one array task per line of a target list (a cal directory per line).
# Usage: sbatch --array=1-$(wc -l < targets.txt) jobs/slurm-array.sh targets.txt [config.toml]
#SBATCH --job-name=tessera-array
#SBATCH --nodes=1
#SBATCH --ntasks=8
#SBATCH --cpus-per-task=4
#SBATCH --mem-per-cpu=4G
#SBATCH --time=04:00:00
#SBATCH --output=tessera-%A_%a.log
set -euo pipefail
list="${1:?usage: sbatch --array=1-N jobs/slurm-array.sh targets.txt [config.toml]}"
config="${2:-config/phangs-nircam.toml}"
caldir=$(sed -n "${SLURM_ARRAY_TASK_ID}p" "$list")
name=$(basename "$caldir")
export RAYON_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"
srun tessera --config "$config" --set run.output_dir="\"tessera-out/$name\"" \
  --set run.threads="${SLURM_CPUS_PER_TASK:-1}" plan "$caldir"

#!/bin/bash
# A job array over the targets of a campaign file: array task i runs the i-th [[target]] (1-based,
# in file order; or the i-th line of a list of target names), all its bands and its release.
# Usage: sbatch --array=1-<number of targets> jobs/slurm-array.sh campaign.toml [targets.txt]
#SBATCH --job-name=tessera-array
#SBATCH --nodes=1
#SBATCH --ntasks=8
#SBATCH --cpus-per-task=4
#SBATCH --mem-per-cpu=4G
#SBATCH --time=04:00:00
#SBATCH --output=tessera-%A_%a.log
set -euo pipefail
campaign="${1:?usage: sbatch --array=1-N jobs/slurm-array.sh campaign.toml [targets.txt]}"
i="${SLURM_ARRAY_TASK_ID:?not an array job: submit with sbatch --array=1-N}"
source "${JOBS_DIR:-jobs}/resources.sh"
target=$(nth_target "$campaign" "$i" "${2:-}")
srun "$TESSERA" --set run.mem_budget_mb="$TESSERA_MEM_MB" --set run.threads="$TESSERA_THREADS" \
  run "$campaign" --target "$target" --resume

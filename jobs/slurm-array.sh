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
if [[ -n "${2:-}" ]]; then
  target=$(sed -n "${i}p" "$2")
else
  target=$(grep -E '^[[:space:]]*name[[:space:]]*=' "$campaign" | sed -n "${i}p" | sed -E 's/^[^=]*=[[:space:]]*"([^"]*)".*/\1/')
fi
[[ -n "$target" ]] || { echo "no target number $i in $campaign" >&2; exit 2; }
source "${JOBS_DIR:-jobs}/resources.sh"
srun "$TESSERA" --set run.mem_budget_mb="$TESSERA_MEM_MB" --set run.threads="$TESSERA_THREADS" \
  run "$campaign" --target "$target" --resume

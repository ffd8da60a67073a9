#!/bin/bash
# A whole campaign in one job: the ranks split into communicator groups (run.groups, default
# "auto": from the bands' input sizes and the memory budget) that take (target, band) tasks.
# Usage: sbatch jobs/slurm-campaign.sh campaign.toml [groups]
#SBATCH --job-name=tessera-campaign
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=4
#SBATCH --mem-per-cpu=4G
#SBATCH --time=12:00:00
#SBATCH --output=tessera-%j.log
set -euo pipefail
campaign="${1:?usage: sbatch jobs/slurm-campaign.sh campaign.toml [groups]}"
groups="${2:-auto}"
source "${JOBS_DIR:-jobs}/resources.sh"
srun "$TESSERA" --set run.mem_budget_mb="$TESSERA_MEM_MB" --set run.threads="$TESSERA_THREADS" \
  --set run.groups="$groups" run "$campaign" --resume

#!/bin/bash
# Sourced by the job scripts (from $JOBS_DIR, default jobs/ of the submit folder: schedulers run a
# copy of the script, so its own folder is not the repository): the rank count, threads per rank and
# memory budget per rank (MiB) from the scheduler's variables, as TESSERA_RANKS, TESSERA_THREADS and
# TESSERA_MEM_MB, and the tessera binary as TESSERA (default: tessera on PATH).
#   Slurm: SLURM_NTASKS, SLURM_CPUS_PER_TASK, and SLURM_MEM_PER_CPU (MiB per CPU) or
#          SLURM_MEM_PER_NODE (MiB per node, shared by the node's tasks: SLURM_NTASKS_PER_NODE, else
#          SLURM_NTASKS / SLURM_JOB_NUM_NODES).
#   PBS:   the lines of PBS_NODEFILE (one per MPI process), OMP_NUM_THREADS or NCPUS (PBS Pro sets both
#          from the ompthreads / ncpus of the chunk), and Resource_List.mem of `qstat -f $PBS_JOBID`
#          divided over the processes.
# Ranks get 3/4 of their share of the memory as run.mem_budget_mb: the rest is for MPI, HDF5 and the OS.
# TESSERA_MEM_MB / TESSERA_THREADS / TESSERA_RANKS set by hand win over all of this.
TESSERA="${TESSERA:-tessera}"
# nth_target CAMPAIGN I [LIST]: the I-th target (1-based) of the array scripts: the I-th line of LIST
# when given, else the name of the I-th [[target]] table of the campaign file, in file order (only
# `name` keys inside [[target]] tables count). Exits 2 when there is none.
nth_target() {
  local campaign="$1" i="$2" list="${3:-}" target
  if [[ -n "$list" ]]; then
    target=$(sed -n "${i}p" "$list")
  else
    target=$(awk -v i="$i" '
      /^[[:space:]]*\[/ { in_target = ($0 ~ /^[[:space:]]*\[\[[[:space:]]*target[[:space:]]*\]\]/) }
      in_target && /^[[:space:]]*name[[:space:]]*=/ {
        if (++n == i) { sub(/^[^=]*=[[:space:]]*"/, ""); sub(/".*/, ""); print; exit }
      }' "$campaign")
  fi
  [[ -n "$target" ]] || { echo "no target number $i in ${list:-$campaign}" >&2; exit 2; }
  echo "$target"
}
to_mib() { # "8gb", "8000mb", "8G", "1024" (MiB) -> MiB
  local v="${1,,}"
  case "$v" in
    *tb|*t) echo $(( ${v%%[tb]*} * 1024 * 1024 )) ;;
    *gb|*g) echo $(( ${v%%g*} * 1024 )) ;;
    *mb|*m) echo $(( ${v%%m*} )) ;;
    *kb|*k) echo $(( ${v%%k*} / 1024 )) ;;
    *) echo "$v" ;;
  esac
}
if [[ -n "${SLURM_JOB_ID:-}${SLURM_NTASKS:-}" ]]; then
  ranks="${SLURM_NTASKS:-1}"
  threads="${SLURM_CPUS_PER_TASK:-1}"
  if [[ -n "${SLURM_MEM_PER_CPU:-}" ]]; then
    mem=$(( SLURM_MEM_PER_CPU * threads ))
  elif [[ -n "${SLURM_MEM_PER_NODE:-}" ]]; then
    per_node="${SLURM_NTASKS_PER_NODE:-$(( (ranks + ${SLURM_JOB_NUM_NODES:-1} - 1) / ${SLURM_JOB_NUM_NODES:-1} ))}"
    mem=$(( SLURM_MEM_PER_NODE / per_node ))
  else
    mem=4096
  fi
elif [[ -n "${PBS_JOBID:-}" ]]; then
  ranks=$( [[ -r "${PBS_NODEFILE:-}" ]] && wc -l < "$PBS_NODEFILE" || echo 1 )
  threads="${OMP_NUM_THREADS:-${NCPUS:-1}}"
  total=$(qstat -f "$PBS_JOBID" 2>/dev/null | sed -n 's/^ *Resource_List\.mem = *//p' | head -n 1)
  if [[ -n "$total" ]]; then
    mem=$(( $(to_mib "$total") / ranks ))
  else
    mem=4096
  fi
else
  ranks=1; threads=1; mem=4096
fi
TESSERA_RANKS="${TESSERA_RANKS:-$ranks}"
TESSERA_THREADS="${TESSERA_THREADS:-$threads}"
TESSERA_MEM_MB="${TESSERA_MEM_MB:-$(( mem * 3 / 4 ))}"
export RAYON_NUM_THREADS="$TESSERA_THREADS"
echo "tessera job: $TESSERA_RANKS ranks x $TESSERA_THREADS threads, run.mem_budget_mb = $TESSERA_MEM_MB" >&2

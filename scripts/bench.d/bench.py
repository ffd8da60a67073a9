#!/usr/bin/env python3
"""bench.py: the driver behind scripts/bench (standard library only; run it through scripts/bench,
which installs the peers, builds tessera and makes the Python venv first).

For every scene: simulate it with tessera (untimed, cached), plan it (tessera's output grid), prepare
the peers' inputs on that grid (untimed, cached), then time every tool on the same inputs with GNU
time (wall clock, peak RSS; per rank for mpirun), and write BENCHMARKS.md plus raw JSON.
With --quality it also runs quality.py (level matching quality against the JWST SkyMatchStep and
reproject's match_background on a scene with background offsets) and reports it in the same page.
"""
import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

# The F200W-like NIRCam SW survey: 2x2 tiles x 4 dithers x 8 detectors = 128 cal files per scene.
SIM_ARGS = ["--instrument", "nircam_sw", "--filter", "F200W", "--tiles", "2x2", "--dithers", "4"]
SCENES = ["small", "medium", "large"]
DETECTOR_PX = {"small": 256, "medium": 1024, "large": 2048}
LARGE_MIN_FREE_GB = 40
PEERS = ["swarp", "montage", "drizzle", "reproject", "jwst"]
# Peers run on the large scene by default, and why the others are left out (2 cores, 24 GB here).
LARGE_PEERS = ["swarp", "drizzle"]
LARGE_WHY = {
    "jwst": "in_memory OutlierDetection+Resample holds all 128 2048^2 models with their resampled "
            "copies (> 24 GB here); on_disk mode would take hours on 2 cores",
    "montage": "mProjectPP writes a projected copy plus area map of every input (~30 GB more disk) "
               "and takes hours on 2 cores",
    "reproject": "31 s on the small scene, so about an hour and a half on large; not in --large-peers",
}

# What each peer row runs, and which tessera chain it is compared with.
PEER_INFO = {
    "swarp": ("SWarp", "drizzle", "weighted mean co-add, LANCZOS3 (default), MAP_WEIGHT, no back-sub, no SIP"),
    "montage": ("Montage", "drizzle", "mProjectPP per input (flux-conserving, weight maps) + mAdd mean; 1 process"),
    "drizzle": ("drizzle pkg", "drizzle", "cdrizzle square kernel, pixfrac 1, ivm weights; 1 process"),
    "reproject": ("reproject_and_coadd", "drizzle", "reproject_interp (bilinear), weighted mean; 1 process"),
    "jwst": ("JWST OutlierDetection+Resample", "outlier+drizzle",
             "jwst default parameters, in_memory, output_wcs = tessera grid; 1 process"),
}


def section_parser(doc):
    """The argument parser of a section script of bench.d (quality.py, cosmic.py, ...), with the
    three arguments bench.py always passes: the tessera binary, the work folder, the JSON to write."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tessera", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--json", required=True)
    return ap


def section_args(ap):
    """Parse a section script's arguments with every path made absolute (the runs start in their own
    folders)."""
    args = ap.parse_args()
    args.work = str(Path(args.work).resolve())
    args.tessera = str(Path(args.tessera).resolve())
    return args


def choices(ap, text, allowed, what):
    """The comma-separated `text` as a list, every item one of `allowed` (else a usage error naming it)."""
    items = [t for t in text.split(",") if t]
    for t in items:
        if t not in allowed:
            ap.error(f"unknown {what} '{t}' ({', '.join(allowed)})")
    return items


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def toml_str(s):
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---------------------------------------------------------------------------------------------
# running and timing

def parse_gnu_time(path):
    """Wall seconds, max RSS KiB and exit status from a `/usr/bin/time -v` report."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    out = {}
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)
    if m:
        secs = 0.0
        for part in m.group(1).split(":"):
            secs = secs * 60 + float(part)
        out["wall_s"] = secs
    for key, pattern, conv in (("max_rss_kib", r"Maximum resident set size \(kbytes\): (\d+)", int),
                               ("user_s", r"User time \(seconds\): ([\d.]+)", float),
                               ("sys_s", r"System time \(seconds\): ([\d.]+)", float),
                               ("cpu_pct", r"Percent of CPU this job got: (\d+)%", int),
                               ("exit_status", r"Exit status: (-?\d+)", int)):
        m = re.search(pattern, text)
        if m:
            out[key] = conv(m.group(1))
    return out


SHORTEN = []  # (path, short name) replaced in failure reasons


def last_error_line(*texts):
    ansi = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
    for text in texts:
        for path, short in SHORTEN:
            text = text.replace(path, short)
        lines = [ansi.sub("", ln).strip() for ln in text.splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith(("Command exited", "Command terminated"))]
        # prefer a line that says what went wrong
        for ln in reversed(lines):
            if re.search(r"error|Error|ERROR|failed|Traceback|Exception|panick|Killed|No such", ln):
                return ln[:300]
        if lines:
            return lines[-1][:300]
    return "no output"


def run_timed(cmd, run_dir, timeout_s, env=None, rank_prefix=None):
    """Run cmd under /usr/bin/time -v; return a dict with status, wall, RSS (and per-rank RSS)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tfile = run_dir / "time.txt"
    full = ["/usr/bin/time", "-v", "-o", str(tfile)] + [str(c) for c in cmd]
    (run_dir / "command.txt").write_text(shlex.join(full) + "\n")
    rec = {"command": shlex.join(str(c) for c in cmd)}
    t0 = time.perf_counter()
    with open(run_dir / "stdout.log", "wb") as so, open(run_dir / "stderr.log", "wb") as se:
        p = subprocess.Popen(full, stdout=so, stderr=se, cwd=run_dir, env=env, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            rc = None
    rec["measured_wall_s"] = time.perf_counter() - t0
    gt = parse_gnu_time(tfile) or {}
    rec.update(gt)
    rec.setdefault("wall_s", rec["measured_wall_s"])
    out = (run_dir / "stdout.log").read_text(errors="replace")
    err = (run_dir / "stderr.log").read_text(errors="replace")
    if rc is None:
        rec["status"] = f"failed: timeout after {timeout_s:.0f} s"
    elif rc != 0 and not (rank_prefix and rc == 3):
        why = last_error_line(err, out)
        if rc in (-9, 137) or gt.get("exit_status") in (137,) or "Killed" in err:
            why = f"killed (out of memory?): {why}"
        rec["status"] = f"failed: {why}"
        rec["exit_code"] = rc
    else:
        rec["status"] = "ok" if rc == 0 else "ok (exit 3: some inputs failed)"
    if rank_prefix is not None:
        ranks = []
        for f in sorted(run_dir.glob(rank_prefix.name + ".*"), key=lambda q: int(q.suffix[1:])):
            r = parse_gnu_time(f) or {}
            ranks.append({"rank": int(f.suffix[1:]), "max_rss_kib": r.get("max_rss_kib"),
                          "wall_s": r.get("wall_s"), "user_s": r.get("user_s")})
        rec["per_rank"] = ranks
        rss = [r["max_rss_kib"] for r in ranks if r.get("max_rss_kib")]
        if rss:
            rec["max_rank_rss_kib"] = max(rss)
    # a JSON line printed by our Python runners (inner timings)
    for ln in reversed(out.splitlines()):
        if ln.startswith("{") and ln.endswith("}"):
            try:
                rec["inner"] = json.loads(ln)
            except ValueError:
                pass
            break
    return rec


def run_quiet(cmd, what, env=None, cwd=None):
    """An untimed preparation step; raise RuntimeError with the reason on failure."""
    log(f"{what}: {shlex.join(str(c) for c in cmd)}")
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=cwd)
    if p.returncode != 0:
        raise RuntimeError(f"{what}: {last_error_line(p.stderr, p.stdout)}")
    return p.stdout


# ---------------------------------------------------------------------------------------------
# machine facts and versions

def sh(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_facts(args):
    f = {"nproc": os.cpu_count(), "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    try:
        mem = Path("/proc/meminfo").read_text()
        f["mem_total_gib"] = round(int(re.search(r"MemTotal:\s+(\d+)", mem).group(1)) / 2**20, 1)
        cpu = Path("/proc/cpuinfo").read_text()
        m = re.search(r"model name\s*:\s*(.+)", cpu)
        f["cpu"] = m.group(1).strip() if m else platform.processor()
    except (OSError, AttributeError):
        pass
    f["os"] = sh(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]) + ", kernel " + platform.release()
    f["load_avg_at_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    v = {}
    if Path(args.tessera).exists():
        v["tessera"] = sh([args.tessera, "--version"])
    head = sh(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = sh(["git", "-C", str(REPO), "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"])
    v["tessera_git"] = head + (" + uncommitted changes in src/" if dirty else "")
    v["rustc"] = sh(["rustc", "--version"])
    v["open_mpi"] = sh(["mpirun", "--version"]).splitlines()[0] if shutil.which("mpirun") else "missing"
    v["swarp"] = (sh(["SWarp", "-v"]).splitlines() or [""])[0] if shutil.which("SWarp") else "missing"
    v["montage"] = sh(["dpkg-query", "-W", "-f=${Version}", "montage"]) if shutil.which("mProjExec") else "missing"
    if args.python:
        code = ("import importlib.metadata as m, json, sys\n"
                "out = {'python': sys.version.split()[0]}\n"
                "for p in ['jwst', 'stcal', 'stdatamodels', 'gwcs', 'drizzle', 'reproject', 'astropy', 'numpy']:\n"
                "    try: out[p] = m.version(p)\n"
                "    except Exception: out[p] = 'missing'\n"
                "print(json.dumps(out))")
        try:
            v.update(json.loads(sh([args.python, "-c", code]).splitlines()[-1]))
        except (ValueError, IndexError):
            v["python"] = "venv unusable"
    else:
        v["python"] = "no venv (scripts/setup-python --bench failed)"
    f["versions"] = v
    return f


# ---------------------------------------------------------------------------------------------
# scenes

def scene_dir(args, scene):
    return Path(args.work) / "scenes" / scene


def free_gb(path):
    p = Path(path)
    while not p.exists():
        p = p.parent
    return shutil.disk_usage(p).free / 1e9


def simulate(args, scene):
    d = scene_dir(args, scene)
    sim = d / "cal"
    stamp = d / "simulated.json"
    cmd = [args.tessera, "simulate", *SIM_ARGS, "--size", scene, "--seed", str(args.seed), "--out", str(sim)]
    key = {"args": cmd[1:], "tessera": sh([args.tessera, "--version"])}
    if stamp.exists() and json.loads(stamp.read_text()) == key and any(sim.glob("*_cal.fits")):
        return sim
    if sim.exists():
        shutil.rmtree(sim)
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # simulate under 2 ranks: same bytes as 1 rank, twice as fast
    mpi = ["mpirun", "-n", str(min(2, os.cpu_count() or 1)), "--bind-to", "none"]
    run_quiet(mpi + cmd, f"simulate {scene}")
    log(f"simulated {scene} in {time.perf_counter() - t0:.0f} s")
    stamp.write_text(json.dumps(key))
    return sim


def plan(args, scene, sim):
    d = scene_dir(args, scene)
    pj = d / "plan.json"
    key = json.dumps([args.tessera_sets, args.mem_budget_mb, max(args.ranks)])
    kf = d / "plan.key"
    if pj.exists() and pj.stat().st_mtime > (d / "simulated.json").stat().st_mtime and kf.exists() \
            and kf.read_text() == key:
        return pj
    sets = [x for kv in args.tessera_sets for x in ("--set", kv)]
    if args.mem_budget_mb:
        sets += ["--set", f"run.mem_budget_mb={args.mem_budget_mb}"]
    run_quiet([args.tessera, "--set", f"run.output_dir={toml_str(d / 'plan-out')}", *sets, "plan", sim,
               "--json", pj, "--ranks", str(max(args.ranks))], f"plan {scene}")
    kf.write_text(key)
    return pj


def prepare_peers(args, scene, sim, pj, peers):
    """Untimed: SCI+WCS and weight maps for the peers; JWST models. Returns problems."""
    problems = {}
    d = scene_dir(args, scene)
    peer = d / "peer"
    if not args.python:
        return peer, {p: "failed: no Python venv (scripts/setup-python --bench failed)" for p in peers}
    run_quiet([args.python, HERE / "prep_peers.py", sim, pj, peer], f"prepare peer inputs ({scene})")
    if "jwst" in peers:
        try:
            run_quiet([args.python, HERE / "prep_jwst.py", peer, d / "jwst"], f"prepare JWST models ({scene})")
        except RuntimeError as e:
            problems["jwst"] = f"failed: {e}"
    return peer, problems


# ---------------------------------------------------------------------------------------------
# the runs

def tessera_runs(args, scene, sim, runs_dir):
    rows = []
    nproc = os.cpu_count() or 1
    for chain in ("drizzle", "outlier+drizzle"):
        for ranks in args.ranks:
            threads = max(1, nproc // ranks)
            name = f"tessera {chain} {ranks}r"
            rd = runs_dir / f"tessera-{chain.replace('+', '-')}-{ranks}r"
            if rd.exists():
                shutil.rmtree(rd)
            rd.mkdir(parents=True)
            # like with like: no peer matches levels, destripes or aligns, so neither does tessera here
            sets = ["--set", f"run.output_dir={toml_str(rd / 'out')}", "--set", f"run.threads={threads}"]
            for stage in ("prep", "destripe", "align", "level", "destripe_multi"):
                sets += ["--set", f"{stage}.enabled=false"]
            if chain == "drizzle":
                sets += ["--set", "outlier.enabled=false"]
            if args.mem_budget_mb:
                sets += ["--set", f"run.mem_budget_mb={args.mem_budget_mb}"]
            for kv in args.tessera_sets:
                sets += ["--set", kv]
            cmd = ["mpirun", "-n", str(ranks), "--bind-to", "none", HERE / "rank-time", rd / "rss",
                   args.tessera, *sets, "mosaic", sim, "-o", rd / "mosaic.fits"]
            row = {"tool": "tessera", "chain": chain, "ranks": ranks, "threads": threads,
                   "label": f"tessera {chain}", "procs": f"{ranks} rank{'s' if ranks > 1 else ''} x {threads} thr"}
            if args.tessera_error:
                row["status"] = f"failed: {args.tessera_error}"
            else:
                log(f"[{scene}] {name} ...")
                row.update(run_timed(cmd, rd, args.timeout, rank_prefix=rd / "rss"))
                if row["status"].startswith("ok") and not (rd / "mosaic.fits").exists():
                    row["status"] = "failed: exited 0 but wrote no mosaic.fits"
                if row["status"].startswith("ok"):
                    row["output"] = str(rd / "mosaic.fits")
                    st = {}
                    for m in re.finditer(r"^(?:\[rank 0/\d+\] )?\[(\w+)\][^\n]* in ([\d.]+) s", (rd / "stderr.log").read_text(
                            errors="replace"), re.M):
                        st[m.group(1)] = float(m.group(2))
                    if st:
                        row["stages"] = st
                log(f"[{scene}] {name}: {row['status']} {row.get('wall_s', 0):.1f} s")
            rows.append(row)
    return rows


def peer_runs(args, scene, peer_dir, runs_dir, peers, problems):
    rows = []
    jdir = scene_dir(args, scene) / "jwst"
    for p in peers:
        label, chain, what = PEER_INFO[p]
        row = {"tool": p, "label": label, "chain": chain, "settings": what}
        rd = runs_dir / p
        if rd.exists():
            shutil.rmtree(rd)
        rd.mkdir(parents=True)
        env = dict(os.environ)
        if p == "swarp":
            row["procs"] = f"1 process x {args.swarp_threads} thr"
            cmd = ["sh", HERE / "run_swarp.sh", peer_dir, rd, str(args.swarp_threads)]
            need = "SWarp"
            outf = rd / "coadd.fits"
        elif p == "montage":
            row["procs"] = "1 process"
            cmd = ["sh", HERE / "run_montage.sh", peer_dir, rd]
            need = "mProjExec"
            outf = rd / "mosaic.fits"
        else:
            row["procs"] = "1 process"
            script = {"drizzle": "run_drizzle.py", "reproject": "run_reproject.py", "jwst": "run_jwst.py"}[p]
            src = jdir if p == "jwst" else peer_dir
            cmd = [args.python or "python3", HERE / script, src, rd / "mosaic.fits"]
            if p == "reproject" and args.reproject_match_background:
                cmd.append("--match-background")
                row["settings"] += ", match_background"
            if p == "jwst":
                env["STPIPE_DISABLE_CRDS_STEPPARS"] = "True"
            need = None
            outf = rd / "mosaic.fits"
        if p in problems:
            row["status"] = problems[p]
        elif need and not shutil.which(need):
            row["status"] = f"failed: {need} not installed"
        elif p in ("drizzle", "reproject", "jwst") and not args.python:
            row["status"] = "failed: no Python venv"
        else:
            log(f"[{scene}] {label} ...")
            row.update(run_timed(cmd, rd, args.timeout, env=env))
            if row["status"] == "ok" and not outf.exists():
                row["status"] = f"failed: exited 0 but wrote no {outf.name}"
            log(f"[{scene}] {label}: {row['status']} {row.get('wall_s', 0):.1f} s")
        if row.get("status", "").startswith("ok"):
            row["output"] = str(outf)
        if p == "jwst" and row.get("status", "").startswith("ok"):
            err = (rd / "stderr.log").read_text(errors="replace")
            row["outliers_flagged"] = sum(int(x) for x in re.findall(r"(\d+) pixels marked as outliers", err))
        rows.append(row)
    return rows


def compare_outputs(args, res, runs_dir):
    """Untimed: every mosaic against a reference on the same grid (tessera drizzle at the most ranks if
    it ran, else the drizzle package), then delete the outputs unless --keep-outputs."""
    ok = [r for r in res["rows"] if r.get("output") and Path(r["output"]).exists()]
    ref = None
    for r in ok:
        if r["tool"] == "tessera" and r["chain"] == "drizzle" and r["ranks"] == max(args.ranks):
            ref = r
    if ref is None:
        ref = next((r for r in ok if r["tool"] == "drizzle"), None)
    if ref is not None and args.python:
        res["reference"] = ref["label"] + (f" {ref['ranks']}r" if ref["tool"] == "tessera" else "")
        labels = {f"{r['tool']}-{r['chain']}-{r.get('ranks', '')}": r for r in ok if r is not ref}
        cj = runs_dir / "compare.json"
        try:
            run_quiet([args.python, HERE / "compare.py", ref["output"], cj]
                      + [f"{k}={r['output']}" for k, r in labels.items()], "compare mosaics")
            cmp = json.loads(cj.read_text())
            for k, r in labels.items():
                r["agreement"] = cmp.get(k)
        except (RuntimeError, ValueError) as e:
            log(f"comparison failed: {e}")
    if not args.keep_outputs:
        for r in res["rows"]:
            if r.get("output"):
                rd = Path(r["output"]).parent
                for f in list(rd.glob("*.fits")) + [rd / "resamp", rd / "proj", rd / "out"]:
                    if f.is_dir():
                        shutil.rmtree(f, ignore_errors=True)
                    elif f.exists():
                        f.unlink()


def reused_rows(args, scene):
    """Peer rows of this scene from the --reuse results files, for peers not run now (marked)."""
    rows = []
    for path in args.reuse:
        old = json.loads(Path(path).read_text())
        for res in old.get("scenes", []):
            if res.get("scene") != scene:
                continue
            for r in res.get("rows", []):
                if r["tool"] == "tessera" or r["tool"] in args.peers or any(q["tool"] == r["tool"] for q in rows):
                    continue
                r = dict(r)
                for k in [k for k in r if k.startswith("ratio_")]:
                    del r[k]
                r["label"] += " (earlier run)"
                r["reused_from"] = str(path)
                rows.append(r)
    return rows


def bench_scene(args, scene):
    res = {"scene": scene, "rows": []}
    d = scene_dir(args, scene)
    if scene == "large" and not (d / "simulated.json").exists():
        gb = free_gb(d)
        if gb < LARGE_MIN_FREE_GB:
            res["skipped"] = (f"only {gb:.0f} GB free under {args.work}; the large scene needs "
                              f"{LARGE_MIN_FREE_GB} GB (14 GB of cal files plus peer copies and outputs)")
            log(f"skipping large: {res['skipped']}")
            return res
    if args.tessera_error and not Path(args.tessera).exists():
        res["skipped"] = f"no tessera binary ({args.tessera_error}): cannot simulate the scene"
        return res
    try:
        sim = simulate(args, scene)
        pj = plan(args, scene, sim)
    except RuntimeError as e:
        res["skipped"] = str(e)
        return res
    inv_files = sorted(sim.glob("*_cal.fits"))
    p = json.loads(pj.read_text())
    g = p["grid"]
    res["grid"] = {k: g[k] for k in ("nx", "ny", "pixscale_arcsec", "crval_deg", "crpix", "rotation_deg") if k in g}
    res["chunks"] = {k: p.get(k) for k in ("chunk_px", "chunks_x", "chunks_y")}
    runs_dir = Path(args.work) / "runs" / scene
    peers = list(args.peers)
    problems = {}
    if scene == "large":
        left = [q for q in peers if q not in args.large_peers]
        peers = [q for q in peers if q in args.large_peers]
    else:
        left = []
    peer_dir = d / "peer"
    if peers:
        try:
            peer_dir, problems = prepare_peers(args, scene, sim, pj, peers)
        except RuntimeError as e:
            problems = {q: f"failed: {e}" for q in peers}
    for q in left:
        problems[q] = f"not run on large: {LARGE_WHY.get(q, 'not in --large-peers')}"
    peers += left
    inv = peer_dir / "inputs.json"
    if inv.exists():
        j = json.loads(inv.read_text())
        res["n_inputs"], res["input_pixels"] = j["n_inputs"], j["input_pixels"]
    else:
        res["n_inputs"] = len(inv_files)
        res["input_pixels"] = len(inv_files) * DETECTOR_PX[scene] ** 2
    res["rows"] += tessera_runs(args, scene, sim, runs_dir)
    res["rows"] += peer_runs(args, scene, peer_dir, runs_dir, peers, problems)
    compare_outputs(args, res, runs_dir)
    res["rows"] += reused_rows(args, scene)
    mpix = res["input_pixels"] / 1e6
    for r in res["rows"]:
        if r["status"].startswith("ok") and r.get("wall_s"):
            r["mpix_per_s"] = mpix / r["wall_s"]
    # ratios: tessera (same chain) wall / peer wall, as throughput tessera / peer
    for r in res["rows"]:
        if r["tool"] == "tessera" or "mpix_per_s" not in r:
            continue
        for t in res["rows"]:
            if t["tool"] == "tessera" and t["chain"] == r["chain"] and "mpix_per_s" in t:
                r[f"ratio_{t['ranks']}r"] = t["mpix_per_s"] / r["mpix_per_s"]
    return res


# ---------------------------------------------------------------------------------------------
# report

def fmt(x, nd=1):
    return "" if x is None else f"{x:.{nd}f}"


def mib(kib):
    return None if kib is None else kib / 1024


def agreement(r):
    a = r.get("agreement")
    if not a:
        return ""
    if "error" in a:
        return a["error"]
    return f"{a['median_abs_diff']:.2g} MJy/sr, {a['bright_ratio']:.3f}"


def scene_table(res, ranks):
    lines = ["| tool | chain | processes | wall s | peak RSS MiB (max rank; per rank) | input Mpix/s | "
             + " | ".join(f"tessera {r}r / peer" for r in ranks) + " | vs reference: median abs diff, bright ratio | status |",
             "|---|---|---|--:|--:|--:|" + "--:|" * len(ranks) + "---|---|"]
    for r in res["rows"]:
        ok = r["status"].startswith("ok")
        rss = r.get("max_rank_rss_kib", r.get("max_rss_kib")) if ok else None
        rat = [fmt(r.get(f"ratio_{k}r"), 2) if r["tool"] != "tessera" else "" for k in ranks]
        rss_s = fmt(mib(rss), 0)
        per = [q.get("max_rss_kib") for q in r.get("per_rank", [])]
        if ok and len(per) > 1 and all(per):
            rss_s += " (" + " / ".join(f"{mib(q):.0f}" for q in per) + ")"
        lines.append(f"| {r['label']} | {r['chain']} | {r.get('procs', '')} | "
                     f"{fmt(r.get('wall_s')) if ok else ''} | {rss_s} | {fmt(r.get('mpix_per_s'), 2)} | "
                     + " | ".join(rat) + f" | {agreement(r)} | {r['status'].replace('|', '/')} |")
    return "\n".join(lines)


def targets(results, args):
    """The targets of the issue, read against the measured numbers (largest scene that has them)."""
    out = []
    top = max(args.ranks)

    def find(res, tool, chain=None, ranks=None):
        for r in res["rows"]:
            if r["tool"] == tool and (chain is None or r["chain"] == chain) and (ranks is None or r.get("ranks") == ranks):
                return r
        return None

    def judge(name, tool, chain, want):
        said = []
        for res in results:
            if "rows" not in res or not res["rows"]:
                continue
            peer = find(res, tool)
            tess = find(res, "tessera", chain, top)
            if peer is None:
                continue
            if tess is None or not tess["status"].startswith("ok"):
                said.append(f"{res['scene']}: not measured (tessera: {tess['status'] if tess else 'not run'})")
            elif not peer["status"].startswith("ok"):
                said.append(f"{res['scene']}: not measured ({peer['label']}: {peer['status']})")
            else:
                x = peer.get(f"ratio_{top}r")
                said.append(f"{res['scene']}: {x:.2f}x ({'met' if x >= want else 'NOT met'})")
        out.append(f"- **{name}** (target >= {want}x): " + ("; ".join(said) if said else "not measured (peer not run)"))

    judge(f"tessera drizzle, {top} ranks, vs SWarp {args.swarp_threads} threads", "swarp", "drizzle", 3)
    judge(f"tessera drizzle, {top} ranks, vs the drizzle package", "drizzle", "drizzle", 3)
    judge(f"tessera outlier+drizzle, {top} ranks, vs JWST OutlierDetection+Resample", "jwst", "outlier+drizzle", 10)
    budget = args.mem_budget_mb or args.default_budget_mb
    said = []
    for res in results:
        if res["scene"] != "large":
            continue
        if res.get("skipped"):
            said.append(f"not measured: {res['skipped']}")
        for r in res.get("rows", []):
            if r["tool"] == "tessera" and r["status"].startswith("ok") and r.get("max_rank_rss_kib"):
                m = mib(r["max_rank_rss_kib"])
                said.append(f"{r['chain']} {r['ranks']}r: {m:.0f} MiB ({'met' if m < budget else 'NOT met'})")
            elif r["tool"] == "tessera":
                said.append(f"{r['chain']} {r['ranks']}r: not measured ({r['status']})")
    if not said:
        small = []
        for res in results:
            for r in res.get("rows", []):
                if r["tool"] == "tessera" and r.get("max_rank_rss_kib") and r["status"].startswith("ok"):
                    small.append(f"{res['scene']} {r['chain']} {r['ranks']}r {mib(r['max_rank_rss_kib']):.0f} MiB")
        said.append("not measured: the large scene was not run" + (f" (smaller scenes: {'; '.join(small)})" if small else ""))
    out.append(f"- **peak memory per rank below the budget ({budget} MiB) on the large scene**: " + "; ".join(said))
    return out


def run_table_script(args, name, extra=(), keeps=False):
    """Run scripts/bench.d/<name>.py in the venv (its own simulated scenes, tools and scores) with
    --tessera, --work <work>/<name>, --json and --timeout plus `extra` (and --keep-outputs when asked
    for and the script `keeps` them); return its JSON, or {"error": reason}."""
    if args.tessera_error:
        return {"error": f"tessera: {args.tessera_error}"}
    if not args.python:
        return {"error": "no Python venv (scripts/setup-python --bench failed)"}
    work = Path(args.work) / name
    out = work / f"{name}.json"
    out.unlink(missing_ok=True)
    cmd = [args.python, HERE / f"{name}.py", "--tessera", args.tessera, "--work", work, "--json", out,
           "--timeout", str(args.timeout), *extra] + (["--keep-outputs"] if keeps and args.keep_outputs else [])
    log(f"{name}: {shlex.join(str(c) for c in cmd)}")
    p = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, text=True)   # progress on stderr
    if p.returncode != 0 or not out.exists():
        return {"error": f"{name}.py exited {p.returncode}"}
    return json.loads(out.read_text())


def quality_run(args):
    """quality.py: level matching against SkyMatchStep and reproject (run_table_script)."""
    return run_table_script(args, "quality", ["--seed", str(args.seed)], keeps=True)


def quality_section(q, json_name):
    L = ["## Level matching quality", ""]
    if q.get("error"):
        return L + [f"Not measured: {q['error']}.", ""]
    m = q.get("metrics", {})
    L += [f"Every tool gets the same inputs and writes the same grid as in the timing runs; no outlier "
          "rejection anywhere (`outlier.enabled=false` for tessera, no OutlierDetectionStep), so only level "
          "matching differs. No scene has stripes or pointing errors (destripe and align are off in tessera's "
          f"runs). Raw numbers: `{json_name}`; metrics defined below and in `scripts/bench.d/quality.py`.", ""]
    for sc in q["scenes"]:
        i = sc["scene"]
        sim = " ".join(str(x) for x in i["simulate"])
        what = (f"{i['n_exposures']} {i['instrument']} cal files ({i['detectors_per_exposure']} detector(s) per "
                "exposure, 4 tiles x 4 dithers)"
                + (f" and {i['n_off_exposures']} off-source exposures" if i.get("n_off_exposures") else "")
                + f"; per-exposure offsets {i['injected_offset_rms_mjysr']:.3f} MJy/sr rms "
                f"({i['injected_offset_spread_mjysr']:.3f} max - min), total backgrounds "
                f"{i['background_mjysr'][0]:.2f} to {i['background_mjysr'][1]:.2f} MJy/sr"
                + (f", Lyot box +{i['lyot_offset_mjysr']:.2f} MJy/sr" if i.get("lyot_offset_mjysr") else "")
                + (f", tile planes of {i['tile_plane_gradient_mjysr_per_arcsec']:.4f} MJy/sr per arcsec"
                   if i.get("tile_plane_gradient_mjysr_per_arcsec") else ""))
        L += [f"### Scene {i['name']}: {i['title']}", "",
              f"`tessera simulate {sim}`: {what}. Why this scene: {i['why']}",
              f"Grid {i['grid_shape'][1]} x {i['grid_shape'][0]} px at {i['grid_pixscale_arcsec']}\"; "
              f"{i['faint_pixels']} of {i['covered_pixels']} covered pixels kept by the `{i['mask']}` source mask; "
              f"single-tile kept pixels per tile: {', '.join(str(x) for x in i['faint_single_tile_pixels'])}; "
              f"{i['boxes']} boxes of {i['box_px']} px, {i['boundary_boxes']} of them on tile boundaries.",
              "", sc["table_md"], ""]
        L += sc.get("summary_md") or []
        L.append("")
    L += [
        "Metrics (MJy/sr; r = mosaic - truth sky bilinearly resampled onto the grid; one function, `score` in "
        "`scripts/bench.d/quality.py`, scores every mosaic on one pixel set):",
        "",
        "- Pixel set: grid pixels covered by the inputs' usable pixels (reprojected onto the grid once, OR-ed per "
        f"tile, dilated by {m.get('coverage_dilation_px', 2)} px), minus a source mask. `faint` mask (nircam): "
        f"pixels within the simulated absolute pointing offset (+1 px) of a truth pixel above {m.get('faint_mjysr')} "
        "MJy/sr are left out (the mosaics sit that offset from the truth; misaligned sources alone give a spread "
        "of ~1e-3, the 'sources kept' column). `compact` mask (MIRI, whose emission fills the field, so a "
        "brightness cut would keep few pixels, far from the galaxy): pixels within 3 px of compact structure (truth minus its 9 x 9 px "
        "median above 0.01 MJy/sr) are left out; the MIRI scenes have no absolute offset.",
        "- Seam spread: for every tile, the median of r over the pixels covered by that tile only; max - min over "
        "the tiles (the issue's 'spread of the median residual across tiles'). It sees only a tile's mean level, "
        "and a gradient across the whole mosaic enters it fully.",
        "- Band plane: one plane (least squares in grid x, y) through the medians of r in every "
        f"{m.get('box_px', 32)} x {m.get('box_px', 32)} px box with at least a quarter of its pixels kept. Relative "
        "level matching cannot know it (with tile planes, the reference tile's plane is the gauge and spreads "
        "over the mosaic), so the next metrics remove it, for every tool alike. 'Seam spread, band plane "
        "removed' is the seam spread of r minus that plane.",
        "- Boundary boxes: the boxes whose kept pixels have two or more tile coverage sets (which tiles cover a "
        "pixel), each on at least 10 % of them: the boxes along the seams. Boundary-box rms: the rms about their "
        "mean of the boxes' medians of r minus the band plane; max - min also given. Unlike the seam spread, it "
        "sees a gradient left across a tile whose median is right, and steps that vary along a seam.",
        "- Per-exposure level rms ('background error'): where the tool reports per-exposure levels, the rms of "
        "(level at the exposure's centre - true background there: offset + sky + tile plane) over the exposures, "
        "about a band-wide plane in the exposure centres' positions. tessera: prep's off-source background median "
        "+ level.json's exposure offset + tile offset or plane + band sky; SkyMatch: `meta.background.level`; "
        "reproject: the corrections its `solve_corrections_sgd` returned (recorded by a pass-through wrapper in "
        "`run_reproject.py`, not recomputed). The floor subtracts the truth: 0 by construction.",
        "- Absolute level: the median of r over all kept pixels, the background left in the mosaic. "
        "reproject and SkyMatch `match` subtract no absolute sky, so the mean background stays; tessera's band "
        "sky and SkyMatch's `global` are taken from the data, where emission fills the field, so they remove "
        "some emission too (PHANGS anchors the absolute level to external data afterwards).",
        "- Floor: the cal files with every exposure's true background (offset, sky, tile plane through the true "
        "WCS, Lyot level) subtracted, mosaicked by tessera with prep and level off: what is left is noise and "
        "resampling residue, the best any level matching can do on the metric. 'best peer / this' is the best "
        "peer's value over the row's; the target is tessera >= 5x.",
        "- JWST SkyMatchStep: default parameters except skymethod (subtract=False, so ResampleStep subtracts "
        "`meta.background.level`); `global+match` adds one constant to every level, so its seams equal "
        "`match`'s. It takes a sky statistic (the mode by default) of each image over each overlap and matches "
        "their differences. reproject: `reproject_interp`, weighted mean (as in the timing table), "
        "`match_background=True`: the median of the pixel differences per overlapping pair, no pair "
        "rejection or weights, solved by stochastic gradient descent. Neither separates the MIRI Lyot box or "
        "fits planes; tessera does both (prep, level).",
        "- Wall time: the whole process under GNU time, as in the timing table (tessera under `mpirun -n 2`; "
        "the others one process); on these small scenes start-up dominates.",
        ""]
    return L


def astrometry_run(args):
    """astrometry.py: tessera against TweakRegStep (run_table_script)."""
    return run_table_script(args, "astrometry")


def astrometry_section(a, json_name):
    L = ["## Absolute astrometry against the JWST TweakRegStep", ""]
    if a.get("error"):
        return L + [f"Not measured: {a['error']}.", ""]
    scenes = "; ".join(f"{r['label']}: `tessera simulate {' '.join(r['simulate'])}`" for r in a["scenes"])
    L += [f"Scenes ({scenes}) with per-visit pointing errors, a global offset and rotation, and the simulated "
          f"reference catalogue (80 % complete, 10 mas noise per axis). Raw numbers: `{json_name}` "
          "(`scripts/bench.d/astrometry.py`).", "", a["table_md"], "",
          "- Metric (as `tests/integration/align.rs`): a 5x5 lattice of pixels of every exposure through the "
          "corrected WCS (tessera's tweakback files; TweakRegStep's corrected gwcs) and through the simulator's "
          "true WCS, on the target's tangent plane: the rms of the differences, no fit removed. Residual rotation: "
          "the rotation of the shift + rotation fit of corrected onto true positions. Matches: the absolute "
          "(strict) fit's matched sources and its residual rms against the catalogue.",
          "- tessera: `tessera mosaic <scene> --catalog refcat.csv` with default parameters (align, then the wide "
          "shift and strict shift + rotation match of the mosaic's sources).",
          "- TweakRegStep: every exposure gets a gwcs detector -> v2v3 -> world equal to its header TAN-SIP "
          "(jwst's V2V3-to-sky rotation at v2_ref = v3_ref = 0, roll_ref from the CD matrix; equal to the header "
          "to < 1e-6 mas) and the matching wcsinfo; its own source finding (IRAF star finder, kernel FWHM = the "
          "band's PSF FWHM in pixels, background box = half the detector); relative alignment of the exposures, "
          "then absolute (rshift) to the same catalogue (`abs_refcat`). 'default parameters': TweakRegStep's "
          "defaults (minobj 15, searchrad 2\", tolerance 0.7\"; abs_minobj 15, abs_searchrad 6\", "
          "abs_tolerance 0.7\"); 'matched parameters': tessera's defaults carried over (minobj 3, searchrad 1\", "
          "tolerance 0.2\"; abs_minobj 5, abs_searchrad 1.5\", abs_tolerance 0.15\").",
          ""]
    return L


def stripes_run(args):
    """stripes.py: the stripe power left in the final mosaic (run_table_script)."""
    return run_table_script(args, "stripes", ["--sizes", args.stripes], keeps=True)


def stripes_section(s, json_name):
    L = ["## NIRCam stripe power left in the final mosaic", ""]
    if s.get("error"):
        return L + [f"Not measured: {s['error']}.", ""]
    scenes = "; ".join(f"{r['label']} {r['size']}: `tessera {' '.join(repr(x) for x in r['simulate'])} simulate`"
                       .replace("'simulate.", "--set 'simulate.") for r in s["scenes"] if "simulate" in r)
    L += [f"Scenes ({scenes}), each with its stripe-free twin (`simulate.stripe_rms_mjysr=0.0`, the same noise), "
          f"mosaicked under mpirun -n 2 with outlier rejection off. Raw numbers: `{json_name}` "
          "(`scripts/bench.d/stripes.py`).", "", s["table_md"], "",
          "- Metric (tests/integration/destripe.rs's, implemented again in Python): mosaic minus the twin's "
          "mosaic (no destriping) in the fainter ('empty') and brighter ('emission') half of the truth sky; "
          "pixels binned by row and by column of the first exposure's detector; the rms of the bin medians "
          "(>= 20 pixels) about their mean, rows and columns in quadrature. Power removed = 1 - (rms / rms "
          "without destriping)^2. 'narrow': each profile minus its median filter of rows / 10 bins first, the "
          "stripes narrower than destripe_multi's large-scale filter; 'full': the whole profile.",
          "- Stripes wider than the large-scale filter (most of a 1/f spectrum's power, plus the slow ripple) add "
          "up in the mosaic the same way whatever relative correction is applied; with one orientation no "
          "data-only method separates them from sky structure along the rows, and pjpipe keeps them by design "
          "(its cascade and filters treat them as sky). The small detectors' 64-column amplifiers make each "
          "row median noisier than on real 512-column amplifiers.",
          "- Scenes with several rolls add the area 'overlap' (mosaic pixels inside an exposure of each roll) and "
          "a run with pass A not iterated (`destripe_multi.max_iterations=1`); the last column divides the "
          "single + multi rms by the floor, the stripe-free twin destriped the same way (issue 19 asks <= 1.5) "
          "(tables written before issue 19 lack these columns).",
          ""]
    return L


def cosmic_run(args):
    """cosmic.py: cosmic rays left in the final mosaic, tessera against JWST stage 3 and reproject."""
    return run_table_script(args, "cosmic", ["--scenes", args.cosmic, "--seed", str(args.seed)], keeps=True)


def cosmic_section(c, json_name):
    L = ["## Cosmic rays left in the final mosaic", ""]
    if c.get("error"):
        return L + [f"Not measured: {c['error']}.", ""]
    scenes = "; ".join(f"{s['scene']['title']}: `tessera simulate {' '.join(str(x) for x in s['scene']['simulate'])}`"
                       for s in c["scenes"])
    L += [f"Scenes ({scenes}), the simulator's cosmic rays at five times its default rate (single pixels, blobs, streaks, "
          "charge spilling into the neighbours) and nothing else to correct, so every tool resamples the same "
          "exposures onto the same grid without alignment or level matching. Raw numbers: "
          f"`{json_name}` (`scripts/bench.d/cosmic.py`).", "", c["table_md"], "",
          "- Metric (tests/integration/cosmic.rs's, computed again in Python on every mosaic alike): r = mosaic - "
          "truth sky; at a position, the largest |r - median of r over 15x15| over its 3x3 pixels, over the local "
          "noise (1.4826 x MAD of r over the 15x15 window without its central 5x5). Positions: each cosmic ray's "
          "brightest pixel where two or more exposures overlap, and control positions in the same exposures away "
          "from cosmic rays; bright sources and the mosaic edge left out. Issue 15's target: p99 at cosmic rays "
          "within 1.5x of the controls'.",
          "- reproject_and_coadd has no outlier rejection and no median; the median row reprojects each input "
          "(reproject_interp) and takes numpy's nanmedian, as a user would.", ""]
    return L


def chain_run(args):
    """chain.py: the whole chain against the JWST pipeline's stage 3 (issue 20)."""
    return run_table_script(args, "chain", ["--sizes", args.chain, "--seed", str(args.seed)], keeps=True)


def chain_section(c, json_name):
    L = ["## The whole chain against the JWST pipeline's stage 3 (issue 20)", ""]
    if c.get("error"):
        return L + [f"Not measured: {c['error']}.", ""]
    sims = "; ".join(f"{s['scene']['size']}: `tessera simulate {' '.join(s['scene']['simulate'])}`" for s in c["scenes"])
    L += [f"Scenes ({sims}): NIRCam LW F300M, 2x1 tiles x 4 dithers x 2 detectors = 16 cal files, with the "
          "simulator's defaults (1/f stripes, background offsets, pointing errors, cosmic rays). Timed with GNU "
          "time, one after the other on the same cores: `mpirun -n 2 tessera mosaic CAL -o m.fits --catalog "
          "CAL/aux/refcat.csv` (every stage, run.threads = 1), and the JWST pipeline's SkyMatchStep (match), "
          "OutlierDetectionStep and ResampleStep in one process onto tessera's grid (`scripts/bench.d/run_jwst.py "
          f"--skymatch match`). Raw numbers: `{json_name}` (`scripts/bench.d/chain.py`).", "", c["table_md"], "",
          "- tessera does more than the JWST steps (destriping, alignment, tile planes, astrometry); the issue "
          "compares the wall clock a user sees. The tessera stages do not add up to its wall time: the rest is "
          "mpirun's start, the manifest's checksums and each stage's loading of the band.", ""]
    return L


def convolve_run(args):
    """convolve.py: PSF-matching convolution, tessera psfmatch against astropy convolve_fft (issue 16)."""
    return run_table_script(args, "convolve", ["--sizes", args.convolve, "--seed", str(args.seed)], keeps=True)


def convolve_section(c, json_name):
    L = ["## PSF-matching convolution against astropy (issue 16)", ""]
    if c.get("error"):
        return L + [f"Not measured: {c['error']}.", ""]
    sc = c["scenes"]
    sims = "; ".join(f"{s['scene']['size']}: `tessera simulate {' '.join(s['scene']['simulate'])}`" for s in sc)
    L += [f"Scenes ({sims}): NIRCam LW F300M, 2x2 tiles x 4 dithers x 2 detectors, with the simulator's "
          "4x oversampled F300M PSF (`aux/psf_F300M_os4.fits`); untimed, `tessera mosaic` under mpirun -n 2 with "
          "`run.stop_after=\"astrometry\"` makes the mosaic (every stage up to astrometry at its defaults). Timed "
          "three times each, the fastest reported (GNU time: wall clock, CPU seconds of the process and its children, "
          "peak RSS; tessera's ranks each under GNU time): `tessera psfmatch` alone on "
          "that run folder (`psfmatch.psf` = the PSF, `psfmatch.targets = [\"gauss0p90\"]`, "
          "`psfmatch.noise_curve=false`) under `mpirun -n 1` and `-n 2` with run.threads = nproc / ranks: it "
          "builds the Aniano kernel, convolves SCI and ERR in row chunks (`psfmatch.chunk_rows` = 512) with halos "
          "and writes `<mosaic>_atgauss0p90.fits`; and astropy's `convolve_fft` in one Python process "
          "(`scripts/bench.d/run_convolve_astropy.py`) on the same mosaic with the kernel tessera used "
          "(`psfmatch/kernels/f300m_to_gauss0p90_mosaic.fits`, written by the stage at the mosaic's pixel scale), "
          f"reading the FITS and writing SCI and ERR. Raw numbers: `{json_name}` (`scripts/bench.d/convolve.py`).",
          "", c["table_md"], ""]
    notes = []
    for s in sc:
        i = s["scene"]
        same = {True: "bit-identical", False: "NOT bit-identical", None: "not compared (a run failed)"}[i.get("ranks_bit_identical")]
        notes.append(f"{i['size']}: mosaic {i['nx']} x {i['ny']} px at {i.get('scale_arcsec')}\"/px "
                     f"({100 * i['finite_px'] / i['mosaic_px']:.0f} % of it covered), kernel {i['kernel_px']} x "
                     f"{i['kernel_px']} px at that scale (sum {i['kernel_sum']:.6f}); tessera's SCI and ERR with 1 and "
                     f"2 ranks: {same}.")
        for r in s["rows"]:
            ru = r.get("runner")
            if r["tool"] == "tessera" and ru and ru.get("stage_wall_s") is not None:
                notes.append(f"{i['size']}, tessera {r['processes']}r: the invocation's {ru['invocation_wall_s']:.1f} s "
                             f"(manifest) hold the psfmatch stage, {ru['stage_wall_s']:.1f} s (kernel, convolution, "
                             f"products, safe-FWHM table), and the runner's SHA-256s, {ru['checksum_s']:.1f} s "
                             "(the inputs and the upstream stages' products verified before it runs one stage, then its own hashed).")
        ast = next((r for r in s["rows"] if r["tool"] == "astropy" and r.get("inner")), None)
        if ast:
            n = ast["inner"]
            notes.append(f"{i['size']}: astropy's own split: read {n['read_s']:.1f} s, three convolve_fft calls "
                         f"{n['convolve_s']:.1f} s, write {n['write_s']:.1f} s (the rest of its wall time is Python "
                         "start-up and imports).")
    L += [f"- {n}" for n in notes]
    L += ["- Mosaic Mpix/s = mosaic pixels (the whole grid, covered or not: both tools transform all of it) / wall "
          "seconds; `tessera / astropy` = tessera's Mpix/s over astropy's. Above 1 means tessera is faster. "
          "Each row is the whole process: start-up (mpirun, Python imports), reading, the kernel (tessera builds "
          "it from the PSF; astropy reads tessera's), convolving, writing.",
          "- Like with like: astropy computes what tessera computes (src/kernels/psfmatch/convolve.rs). SCI with "
          "`nan_treatment=\"interpolate\"`, `preserve_nan=True`, `boundary=\"fill\"`, `fill_value=NaN`, "
          "`min_wt=1e-3`: the normalised convolution sum(K w x) / sum(K w) with weight 0 at NaN pixels and beyond "
          "the image edge (a finite fill_value would count the padding as sky of that value), NaN where the input "
          "is NaN or the weight is below 1e-3. 'interpolate' and not 'fill', because with 'fill' every pixel "
          "within a kernel radius of the coverage edge is pulled towards the fill value, which is not what a "
          "mosaic with NaN outside its coverage wants. ERR as sqrt(convolve_fft(w ERR^2, K^2)) / sum(K w) "
          "(`normalize_kernel=False`; sum(K w) from a third convolve_fft of w, since astropy does not return its "
          "weights). numpy's FFT is single-threaded: the astropy row uses one core, tessera's rows both.",
          "- Agreement: the median |astropy - tessera| over the pixels finite in both, over the median |tessera| "
          "(SCI, and ERR in brackets), against tessera's 2-rank product, and the largest |difference| of SCI.",
          f"- Load average {c.get('load_avg_start')} at the start and {c.get('load_avg_end')} at the end of the "
          f"section, on {c.get('nproc')} cores: the machine was shared, so the wall times are inflated by an "
          "unknown factor; the ratio between tools run back to back is the more robust number.", ""]
    return L


def groups_run(args):
    """groups.py: a campaign's wall time with 1, 2, 4 communicator groups on 4 ranks, and the model (issue 17)."""
    model_from = next((p for p in args.reuse if any(s.get("scene") == "large" for s in
                                                    json.loads(Path(p).read_text()).get("scenes", []))), "")
    return run_table_script(args, "groups", ["--seed", str(args.seed)] + (["--model-from", model_from] if model_from else []),
                            keeps=True)


def groups_section(g, json_name):
    L = ["## Campaign groups (issue 17)", ""]
    if g.get("error"):
        return L + [f"Not measured: {g['error']}.", ""]
    c = g["campaign"]
    L += [f"A campaign of {c['targets']} targets x {len(c['bands'])} bands ({', '.join(c['bands'])}), every band "
          f"`tessera simulate --tiles {c['tiles']} --dithers {c['dithers']} --size {c['size']}` (NIRCam LW: 2 "
          "detectors per exposure; MIRI: 4 exposures and 2 off exposures), the target's seed in every band, "
          "the F300M reference catalogue; release off, no anchoring references and no PSF targets (those stages "
          f"skip), everything else at its defaults. Timed with GNU time: `mpirun -n {c['ranks']} --oversubscribe "
          "tessera run c.toml` with run.groups = 1, 2 and 4 (run.threads = 1, the release build). "
          f"**{c['ranks']} ranks on {c['nproc']} cores are oversubscribed**, and the machine was shared (load "
          f"averages in the table), so the wall times show the shape, not the speed. Raw numbers: `{json_name}` "
          "(`scripts/bench.d/groups.py`).", "", g["table_md"], ""]
    runs = [r for r in g["runs"] if r["status"].startswith("ok")]
    if runs:
        one = next((r for r in runs if r["groups"] == 1), None)
        same = all(r.get("same_sci_as_first") for r in runs)
        L.append(f"- Every task's SCI image is {'bit-identical' if same else 'NOT bit-identical'} across the "
                 f"{len(runs)} runs ({len(runs[0].get('sci_sha256') or {})} mosaics compared).")
        if one:
            L.append("- Speed-up over one group: " + ", ".join(
                f"{r['groups']} groups {one['wall_s'] / r['wall_s']:.2f}x" for r in runs if r["groups"] != 1) + ". "
                "On 2 shared cores a band does not run faster on 4 ranks than on 1 (its collectives wait for "
                "descheduled ranks), so groups win by running bands side by side; a chain (a target's bands of one "
                "instrument, reference band first) is the unit of scheduling, so the wall cannot fall below the "
                "longest chain.")
        L.append("")
    p, m, ph = g["model_params"], g["model"], g["phangs"]
    rows = m["rows"]
    one = rows[0]
    auto = next(r for r in rows if r["groups"] == m["auto_groups"])
    L += ["### Model: 1000 ranks, a PHANGS-size campaign (74 targets x 8 bands)", "",
          "Not measured: evaluated by `scripts/bench.d/groups.py` from the figures and assumptions below.", "",
          f"- A band on p ranks takes T(p) = a + b / p: `a` the work that does not shrink with ranks (rank 0 streams "
          "the mosaic out of the band store, solves level and align, detects sources for astrometry; collectives' "
          "latency), `b` the rank-seconds of the distributed work (destriping, level pairs, outlier median and "
          "blot, drizzle). Collectives' log p latency and the shared file system's bandwidth are left out.",
          f"- NIRCam band, from {p['source']} (NIRCam SW, 128 cal files of 2048^2): b = {p['ranks']} ranks x "
          f"(drizzle {p['drizzle_s']:.0f} s + outlier {p['outlier_s']:.0f} s) = **{p['b_nircam']:.0f} rank-s**; "
          f"a = assemble {p['assemble_s']:.0f} s + {p['a_other_s']:.0f} s (assumed: the rest of a whole chain's "
          f"rank-0 work, which those drizzle-only rows do not run) = **{p['a_nircam']:.0f} s**. Every NIRCam band "
          "is taken as large as that SW scene (an upper bound: an LW band has a quarter of its pixels).",
          f"- MIRI band: {p['miri_fraction']:g} of a NIRCam band's a and b (1032 x 1024 detectors, fewer "
          f"exposures; assumed): a = {p['a_miri']:.0f} s, b = {p['b_miri']:.0f} rank-s.",
          f"- Groups are dealt as `tessera run` deals them: {m['chains']} chains (a target's NIRCam bands, its MIRI "
          "bands), largest input first to the group with the fewest input bytes so far; a group's time is the sum "
          "of its chains' bands at its rank count (1000 // groups ranks each; the remainder tessera spreads over "
          "the groups is ignored). `run.groups = \"auto\"`: a NIRCam band's inputs (128 x 2048^2 x "
          f"~24 B = {ph['nircam_band_bytes'] / 1e9:.1f} GB: SCI, ERR, DQ, three variances) in half of a "
          f"{ph['budget_mb']} MiB budget per rank need {m['ranks_per_band_auto']} ranks: {m['auto_groups']} groups "
          f"of {ph['ranks'] // m['auto_groups']} ranks.", "",
          "| groups | ranks per group | campaign wall s | hours | gain over 1 group | groups busy |",
          "|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        tag = " (auto)" if r["groups"] == m["auto_groups"] else (" (one chain each)" if r["groups"] == m["chains"] else "")
        L.append(f"| {r['groups']}{tag} | {r['ranks_per_group']} | {r['wall_s']:,.0f} | {r['wall_s'] / 3600:.2f} | "
                 f"{r['gain']:.1f}x | {100 * r['busy']:.0f} % |")
    L += ["",
          f"- **One group of {ph['ranks']} ranks:** every band runs on all ranks, one after another: "
          f"{ph['targets'] * ph['nircam_bands']} NIRCam bands x {m['band_s']['nircam']['1000']:.1f} s + "
          f"{ph['targets'] * ph['miri_bands']} MIRI bands x {m['band_s']['miri']['1000']:.1f} s = {one['wall_s']:,.0f} s, "
          f"**{one['wall_s'] / 3600:.1f} h**; the serial part a is {100 * m['serial_share_one_group']:.0f} % of it: "
          "the other ranks wait while rank 0 assembles.",
          f"- **`auto` ({m['auto_groups']} groups):** a NIRCam chain of 4 bands takes 4 x "
          f"{m['band_s']['nircam']['auto']:.0f} s, a MIRI chain 4 x {m['band_s']['miri']['auto']:.0f} s; "
          + ("every chain gets a group of its own" if m['auto_groups'] >= m['chains'] else
             "the NIRCam chains get a group each, the MIRI chains share the rest")
          + ", and the wall is the NIRCam chain: "
          f"**{auto['wall_s']:,.0f} s, {auto['wall_s'] / 3600:.2f} h, {auto['gain']:.0f}x less than one group**, with the "
          f"groups busy {100 * auto['busy']:.0f} % of it.",
          "- What limits it then: the chain (a target's bands of one instrument run in sequence on one group, for "
          "their reference band's solutions); the serial a of each band, which groups overlap but do not shorten; "
          "and, not modelled, the groups reading their inputs and writing mosaics at once on the shared file "
          "system.", ""]
    return L


# ---------------------------------------------------------------------------------------------
# destriping (--destripe): tessera's own stage times; no peer here destripes cal files

def two_rank_mosaic(args, scene, name):
    """The scene's cal files, a fresh run folder `runs/<scene>/tessera-<name>-2r` and the start of a
    `tessera mosaic` command under mpirun -n 2 (1 thread per rank, peak RSS per rank): the caller adds
    `-o` and its flags."""
    sim = simulate(args, scene)
    files = sorted(sim.glob("*_cal.fits"))
    ranks = 2
    rd = Path(args.work) / "runs" / scene / f"tessera-{name}-2r"
    if rd.exists():
        shutil.rmtree(rd)
    rd.mkdir(parents=True)
    cmd = ["mpirun", "-n", str(ranks), "--bind-to", "none", HERE / "rank-time", rd / "rss",
           args.tessera, "--set", f"run.output_dir={toml_str(rd / 'out')}", "--set", "run.threads=1",
           "mosaic", sim]
    return sim, files, ranks, rd, cmd


def destripe_run(args, scene):
    """Time tessera's NIRCam destriping (destripe, then destripe_multi passes A and B) on a scene under
    mpirun -n 2 (1 thread per rank), stopping after destripe_multi (`--stop-after`); prep, align and
    level off. Returns a dict with the whole run (GNU time) and the two stages' own times from the log."""
    sim, files, ranks, rd, cmd = two_rank_mosaic(args, scene, "destripe")
    cmd += ["-o", rd / "unused.fits", "--no-prep", "--no-align", "--no-level",
           "--stop-after", "destripe_multi"]
    log(f"[{scene}] tessera destriping, {ranks} ranks ...")
    rec = {"scene": scene, "ranks": ranks, "threads": 1, "exposures": len(files),
           "load_avg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    rec.update(run_timed(cmd, rd, args.timeout, rank_prefix=rd / "rss"))
    err = (rd / "stderr.log").read_text(errors="replace")
    for stage in ("destripe", "destripe_multi"):
        m = re.search(r"\[" + stage + r"\][^\n]*\(([\d.]+) s\)", err)
        if m:
            rec[f"{stage}_s"] = float(m.group(1))
    side = {"small": 256, "medium": 1024, "large": 2048}[scene]
    rec["side_px"] = side
    if rec.get("destripe_s"):
        # rank-seconds (1 thread) per exposure, scaled to a 2048^2 frame by pixel count
        per = rec["destripe_s"] * ranks / max(1, len(files))
        rec["single_tile_s_per_exposure"] = per
        rec["single_tile_s_per_2048sq"] = per * (2048 / side) ** 2
    log(f"[{scene}] destriping: {rec['status']} {rec.get('wall_s', 0):.1f} s")
    return rec


def destripe_section(runs):
    L = ["## Destriping", "",
         "tessera's NIRCam 1/f destriping alone: `tessera mosaic --no-prep --no-align --no-level --stop-after "
         "destripe_multi` under `mpirun -n 2 --bind-to none` with `run.threads=1`, on the timing scenes above "
         "(NIRCam SW F200W, 128 cal files); wall time and peak memory from GNU time, the stages' own times from "
         "tessera's log. The single-tile time per exposure is the `destripe` stage's time x 2 ranks / exposures "
         "(one core), scaled to a 2048^2 frame by pixel count on the smaller scenes. No peer is timed: of the "
         "tools installed here, none destripes calibrated images (the JWST pipeline's clean_flicker_noise works "
         "on ramps and rate files, before flat fielding).", "",
         "The CPU column (user + system over all ranks, from GNU time) does not depend on what else runs on "
         "the machine; the wall times do (the load average when each run started is given).", "",
         "| scene | exposures | px | whole run wall s | CPU s, all ranks | load at start | peak RSS MiB (max rank) "
         "| destripe s | destripe_multi s (passes A + B) | single-tile s per exposure (1 core) | per 2048^2 exposure "
         "| status |",
         "|---|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|---|"]
    for r in runs:
        rss = r.get("max_rank_rss_kib") or r.get("max_rss_kib")
        L.append(f"| {r['scene']}{' *(earlier run)*' if r.get('reused_from') else ''} | {r.get('exposures')} | "
                 f"{r.get('side_px')}^2 | {fmt(r.get('wall_s'))} | "
                 f"{fmt((r.get('user_s') or 0) + (r.get('sys_s') or 0) or None)} | {r.get('load_avg_at_start', '')} | "
                 f"{fmt(mib(rss), 0)} | {fmt(r.get('destripe_s'))} | "
                 f"{fmt(r.get('destripe_multi_s'))} | {fmt(r.get('single_tile_s_per_exposure'), 2)} | "
                 f"{fmt(r.get('single_tile_s_per_2048sq'), 2)} | {r.get('status')} |")
    L.append("")
    return L


# checksums (--checksums): what the manifest's SHA-256s cost in a whole run

def checksums_run(args, scene):
    """The whole chain (`tessera mosaic`, every stage) on a scene under mpirun -n 2, then the manifest's
    own account: wall time of the invocation and the part spent computing checksums (inputs, products)."""
    sim, files, ranks, rd, cmd = two_rank_mosaic(args, scene, "checksums")
    cmd += ["-o", rd / "mosaic.fits"]
    log(f"[{scene}] tessera whole chain for the checksum cost, {ranks} ranks ...")
    rec = {"scene": scene, "ranks": ranks, "threads": 1, "exposures": len(files),
           "input_gb": sum(f.stat().st_size for f in files) / 1e9,
           "load_avg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    rec.update(run_timed(cmd, rd, args.timeout, rank_prefix=rd / "rss"))
    man = rd / "out" / "manifest.json"
    if man.exists():
        m = json.loads(man.read_text())
        rec["invocation_wall_s"] = m.get("invocation_wall_s")
        rec["checksum_s"] = m.get("checksum_s")
        rec["product_gb"] = sum(p["bytes"] for e in m["stages"] for p in e.get("products", [])) / 1e9
        if rec["invocation_wall_s"]:
            rec["checksum_pct"] = 100.0 * (rec["checksum_s"] or 0.0) / rec["invocation_wall_s"]
    if not args.keep_outputs:
        shutil.rmtree(rd / "out", ignore_errors=True)
    log(f"[{scene}] checksums: {rec.get('checksum_s')} s of {rec.get('invocation_wall_s')} s")
    return rec


def checksums_section(runs):
    L = ["## Checksums in the manifest", "",
         "The whole chain (`tessera mosaic`, every stage, no catalogue) under `mpirun -n 2 --bind-to none` with "
         "`run.threads=1` on the timing scenes above; the time spent computing SHA-256 checksums of the inputs "
         "and of every stage's products (all ranks in parallel, files dealt by size) as the manifest "
         "(`manifest.json`: `checksum_s`, `invocation_wall_s`) accounts it. Target: below 5% of the run.", "",
         "| scene | exposures | inputs GB | products GB | whole run s | checksums s | share | load at start | status |",
         "|---|--:|--:|--:|--:|--:|--:|---|---|"]
    for r in runs:
        L.append(f"| {r['scene']}{' *(earlier run)*' if r.get('reused_from') else ''} | {r.get('exposures')} | "
                 f"{fmt(r.get('input_gb'), 2)} | {fmt(r.get('product_gb'), 2)} | {fmt(r.get('invocation_wall_s'))} | "
                 f"{fmt(r.get('checksum_s'))} | {fmt(r.get('checksum_pct'), 1)}% | {r.get('load_avg_at_start', '')} | "
                 f"{r.get('status')} |")
    L.append("")
    return L


def write_report(args, facts, results, json_path, quality=None, quality_json=None, destripe=None,
                 astrometry=None, astrometry_json=None, stripes=None, stripes_json=None, checksums=None,
                 cosmic=None, cosmic_json=None, convolve=None, convolve_json=None, groups=None, groups_json=None,
                 chain=None, chain_json=None):
    v = facts["versions"]
    L = ["# Benchmarks", "",
         "Produced by `scripts/bench` (do not edit by hand; rerun it). Command:", "",
         f"    {args.cmdline}", "",
         f"Run {facts['date_utc']}; raw numbers in `{json_path}`.", "",
         "## Machine", "",
         f"- {facts.get('cpu', '?')}, nproc {facts['nproc']}, {facts.get('mem_total_gib', '?')} GiB memory; {facts['os']}",
         f"- load average when the run started: {facts['load_avg_at_start']} (the machine is shared: "
         "other builds and tests may run at the same time, so treat small differences as noise)",
         f"- tessera {v.get('tessera', '?')} (git {v.get('tessera_git', '?')}), {v.get('rustc', '')}, {v.get('open_mpi', '')}",
         f"- SWarp: {v.get('swarp')}; Montage (Debian): {v.get('montage')}",
         "- Python " + ", ".join(f"{k} {v.get(k)}" for k in ("python", "jwst", "stcal", "stdatamodels", "gwcs",
                                                             "drizzle", "reproject", "astropy", "numpy") if k in v),
         "",
         "## Method", "",
         f"- Scenes: `tessera simulate {' '.join(SIM_ARGS)} --size S --seed {args.seed}`: 128 JWST-format "
         "`*_cal.fits` (4 tiles x 4 dithers x 8 NIRCam SW detectors) of 256^2 (small), 1024^2 (medium) or "
         "2048^2 (large) pixels.",
         "- Every tool writes the same output grid: the one `tessera plan --json` chooses (north-up TAN at the "
         "native 0.031\"/px), given to SWarp as the output `.head`, to Montage as the template header, to "
         "`drizzle`/`reproject` as an astropy WCS and to the JWST ResampleStep as an `output_wcs` gwcs file.",
         "- Untimed preparation (cached under the work folder): the simulation, the plan, SCI images with their "
         "WCS in CDi_j form, weight maps 1/VAR_RNOISE with DQ DO_NOT_USE|NON_SCIENCE zeroed, "
         "and for the JWST steps ImageModels with a gwcs built from the TAN-SIP header (the simulated "
         "files have no ASDF extension) plus an association.",
         "- Timed: the whole process (reading inputs, computing, writing the mosaic), with `/usr/bin/time -v`: "
         "wall clock and peak resident memory; tessera runs as `mpirun -n R --bind-to none` with every rank "
         "wrapped by GNU time (`scripts/bench.d/rank-time`), so the memory column is the largest rank's peak. "
         f"tessera gets `run.threads = nproc / ranks`, so 1 and 2 ranks both use all {facts['nproc']} cores. "
         "The page cache is warm for every tool (the preparation has just read the inputs).",
         "- Input Mpix/s = input detector pixels of the scene / wall seconds. `tessera R r / peer` = tessera's "
         "throughput with R ranks over the peer's, for the tessera chain in the same row (drizzle-only, "
         "`--set outlier.enabled=false`, for SWarp, Montage, drizzle and reproject; outlier + drizzle for the "
         "JWST steps; prep, destripe, align, level and destripe_multi off in both, since no peer does them). "
         "Above 1 means tessera is faster.",
         f"- tessera's memory budget: run.mem_budget_mb = {args.mem_budget_mb or args.default_budget_mb} MiB per rank"
         + (" (tessera's default)" if not args.mem_budget_mb else "")
         + (f"; extra settings: {', '.join('`' + kv + '`' for kv in args.tessera_sets)}." if args.tessera_sets else "."),
         "",
         "Peer settings:", ""]
    for p in args.peers:
        L.append(f"- {PEER_INFO[p][0]}: {PEER_INFO[p][2]}"
                 + (f" ({args.swarp_threads} threads)" if p == "swarp" else ""))
    for path in args.reuse:
        old = json.loads(Path(path).read_text())
        L.append(f"- Rows marked *(earlier run)* are reused from `{path}` (command `{old.get('command')}`, "
                 f"run {old.get('machine', {}).get('date_utc', '?')}): those peers were not rerun; their ratios "
                 "are against this run's tessera.")
    L += ["", "## Results", ""]
    for res in results:
        L.append(f"### {res['scene']}")
        L.append("")
        if res.get("reused_from"):
            L.append(f"*From an earlier run (not rerun now): `{res['reused_from']}`; ratios are against that run's tessera.*")
            L.append("")
        if res.get("skipped"):
            L.append(f"Skipped: {res['skipped']}")
            L.append("")
            continue
        g = res.get("grid", {})
        L.append(f"{res.get('n_inputs')} inputs, {res.get('input_pixels', 0) / 1e6:.1f} Mpix in; output grid "
                 f"{g.get('nx')} x {g.get('ny')} px ({g.get('nx', 0) * g.get('ny', 0) / 1e6:.1f} Mpix) at "
                 f"{g.get('pixscale_arcsec')}\"/px.")
        L.append("")
        L.append(scene_table(res, args.ranks))
        L.append("")
        c = res.get("chunks") or {}
        if c.get("chunk_px"):
            n = (c.get("chunks_x") or 0) * (c.get("chunks_y") or 0)
            L.append(f"tessera's plan for this scene: {c['chunks_x']} x {c['chunks_y']} output chunk(s) of "
                     f"{c['chunk_px']} px" + (f" (with {n} chunk(s) and {max(args.ranks)} ranks, some ranks own no "
                                             "output chunk: their peak RSS shows how little they do)"
                                             if n < max(args.ranks) else "") + ".")
            L.append("")
        for r in res["rows"]:
            st = r.get("stages")
            if st and r["status"].startswith("ok"):
                L.append(f"{r['label']} {r['ranks']}r stages (rank 0 log): "
                         + ", ".join(f"{k} {v:.1f} s" for k, v in st.items()) + ".")
        L.append("")
        if res.get("reference"):
            L.append(f"Reference for the agreement column: {res['reference']} (untimed check that every tool "
                     "wrote the same grid; the bright ratio is the median ratio on the reference's brightest "
                     "0.5 % of pixels, sensitive to misalignment and kernel blur).")
            L.append("")
        inner = [r for r in res["rows"] if r.get("inner") and r["status"].startswith("ok")]
        for r in inner:
            if r["tool"] == "jwst":
                i = r["inner"]
                if r.get("outliers_flagged") is not None:
                    L.append(f"JWST OutlierDetectionStep flagged {r['outliers_flagged']} pixels "
                             f"({100 * r['outliers_flagged'] / res['input_pixels']:.2f} % of the input).")
                L.append(f"JWST inner split: import {i.get('import_s', 0):.1f} s, OutlierDetectionStep "
                         f"{i.get('outlier_s', 0):.1f} s, ResampleStep {i.get('resample_s', 0):.1f} s.")
                L.append("")
    if quality is not None:
        L += quality_section(quality, quality_json)
    if astrometry is not None:
        L += astrometry_section(astrometry, astrometry_json)
    if destripe:
        L += destripe_section(destripe)
    if checksums:
        L += checksums_section(checksums)
    if stripes is not None:
        L += stripes_section(stripes, stripes_json)
    if cosmic is not None:
        L += cosmic_section(cosmic, cosmic_json)
    if chain is not None:
        L += chain_section(chain, chain_json)
    if convolve is not None:
        L += convolve_section(convolve, convolve_json)
    if groups is not None:
        L += groups_section(groups, groups_json)
    L += ["## Reading against the targets", ""]
    L += targets(results, args)
    L += ["", "## Notes", ""]
    notes = list(args.notes)
    fails = {}
    for res in results:
        for r in res.get("rows", []):
            if not r["status"].startswith("ok"):
                fails.setdefault(r["label"], []).append(f"{res['scene']}: {r['status']}")
    for k, vs in fails.items():
        notes.append(f"{k} did not produce a number: " + "; ".join(vs) + ".")
    notes += [
        "SWarp ignores the SIP distortion (its positions are off by the distortion, up to a few pixels at the "
        "detector corners); it is timed anyway as the fastest widely used co-adder. Its default resampling "
        "kernel (LANCZOS3) costs more per pixel than a square drizzle kernel.",
        "The bright ratio in the agreement column is about 0.97 for SWarp against ~1.000 for the SIP-aware "
        "tools (Montage, drizzle, reproject, JWST): its point sources come out slightly fainter or shifted, as "
        "expected from SWarp ignoring SIP (and from its LANCZOS3 kernel).",
        "JWST steps: the inputs carry a gwcs built from the header TAN-SIP and synthesized wcsinfo "
        "(roll_ref from the CD matrix, v3yangle 0, vparity -1; the simulated files have no V2/V3 reference "
        "information). OutlierDetectionStep builds its median on its own default grid; ResampleStep writes "
        "tessera's grid. No SkyMatchStep runs before it (tessera runs with level.enabled=false here, like with like), so "
        "the simulated per-exposure background offsets and 1/f stripes make the JWST step flag more pixels "
        "than it would on sky-matched data.",
        "On the small scene process start-up (mpirun, Python imports of 1.5-2.5 s) is a sizeable part of every "
        "wall time, so its ratios say little about throughput at scale; medium and large are the meaningful "
        "scenes. Timings on this shared 2-core machine vary by 10-30 % between runs.",
        "Montage and the Python peers run as one process: Debian's Montage has no MPI executables, and "
        "`drizzle`, `reproject_and_coadd` and the JWST steps are single-threaded here.",
        "Per-run logs, the exact commands and GNU time reports are in the work folder "
        f"(`{args.work}/runs/<scene>/<tool>/`).",
    ]
    L += [f"- {n}" for n in notes]
    L.append("")
    Path(args.out).write_text("\n".join(L))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scenes", default="small,medium")
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--large-peers", default=",".join(LARGE_PEERS),
                    help="of --peers, the ones also run on the large scene")
    ap.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    ap.add_argument("--work", default=str(REPO / "target" / "bench"))
    ap.add_argument("--results-dir", default=str(REPO / "bench-results"))
    ap.add_argument("--tessera", default=str(REPO / "target" / "release" / "tessera"))
    ap.add_argument("--tessera-error", default="", help="why tessera could not be built (rows fail with it)")
    ap.add_argument("--python", default="", help="the bench venv's python ('' = none)")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--swarp-threads", type=int, default=2)
    ap.add_argument("--mem-budget-mb", type=int, default=0)
    ap.add_argument("--tessera-set", dest="tessera_sets", action="append", default=[],
                    help="extra tessera --set KEY=VALUE for the timed runs (and the plan), repeatable")
    ap.add_argument("--reproject-match-background", action="store_true")
    ap.add_argument("--quality", action="store_true",
                    help="also run the level matching quality table (scripts/bench.d/quality.py)")
    ap.add_argument("--quality-from", default="",
                    help="an earlier bench-results/*-quality.json: its quality tables, not rerun")
    ap.add_argument("--astrometry", action="store_true",
                    help="also run the absolute astrometry table against TweakRegStep (scripts/bench.d/astrometry.py)")
    ap.add_argument("--astrometry-from", default="",
                    help="an earlier bench-results/*-astrometry.json: its astrometry table, not rerun")
    ap.add_argument("--stripes", default="",
                    help="comma-separated detector sizes (small, medium, large) on which to measure the stripe power "
                         "left in the final mosaic (scripts/bench.d/stripes.py)")
    ap.add_argument("--stripes-from", default="",
                    help="an earlier bench-results/*-stripes.json: its stripe table, not rerun")
    ap.add_argument("--cosmic", default="",
                    help="comma-separated scenes (lw, sw) on which to measure the cosmic rays left in the final "
                         "mosaic against the JWST pipeline and reproject (scripts/bench.d/cosmic.py)")
    ap.add_argument("--cosmic-from", default="",
                    help="an earlier bench-results/*-cosmic.json: its cosmic-ray table, not rerun")
    ap.add_argument("--chain", default="",
                    help="comma-separated detector sizes (small, medium, large) on which to time the whole chain "
                         "against the JWST pipeline's stage 3 (scripts/bench.d/chain.py)")
    ap.add_argument("--chain-from", default="",
                    help="an earlier bench-results/*-chain.json: its whole-chain table, not rerun")
    ap.add_argument("--convolve", default="",
                    help="comma-separated detector sizes (small, medium) on which to time PSF-matching convolution "
                         "against astropy convolve_fft (scripts/bench.d/convolve.py)")
    ap.add_argument("--convolve-from", default="",
                    help="an earlier bench-results/*-convolve.json: its convolution table, not rerun")
    ap.add_argument("--groups", action="store_true",
                    help="also time a campaign with 1, 2 and 4 groups on 4 ranks, and the 1000-rank model "
                         "(scripts/bench.d/groups.py)")
    ap.add_argument("--groups-from", default="",
                    help="an earlier bench-results/*-groups.json: its campaign groups section, not rerun")
    ap.add_argument("--destripe", default="",
                    help="comma-separated scenes on which to time tessera's destriping alone (e.g. large)")
    ap.add_argument("--checksums", default="",
                    help="comma-separated scenes on which to measure the manifest's checksum cost in a whole run")
    ap.add_argument("--timeout", type=float, default=3 * 3600)
    ap.add_argument("--keep-outputs", action="store_true")
    ap.add_argument("--cmdline", default="scripts/bench")
    ap.add_argument("--note", dest="notes", action="append", default=[])
    ap.add_argument("--reuse", action="append", default=[],
                    help="an earlier bench-results/*.json: its scenes not run now, and its peer rows for peers not run "
                         "now, are reused (marked)")
    args = ap.parse_args()
    args.scenes = [s for s in args.scenes.split(",") if s and s != "none"]
    args.peers = [p for p in args.peers.split(",") if p]
    args.large_peers = [p for p in args.large_peers.split(",") if p]
    for p in args.large_peers:
        if p not in PEERS:
            ap.error(f"unknown peer '{p}' in --large-peers ({', '.join(PEERS)})")
    for s in args.scenes:
        if s not in SCENES:
            ap.error(f"unknown scene '{s}' (small, medium, large)")
    for p in args.peers:
        if p not in PEERS:
            ap.error(f"unknown peer '{p}' ({', '.join(PEERS)})")
    args.ranks = sorted({int(r) for r in args.ranks.split(",")})
    args.default_budget_mb = 4096
    if Path(args.tessera).exists():
        m = re.search(r"^mem_budget_mb\s*=\s*(\d+)", sh([args.tessera, "config", "default"]), re.M)
        if m:
            args.default_budget_mb = int(m.group(1))
    elif not args.tessera_error:
        args.tessera_error = f"{args.tessera} not found"
    SHORTEN.append((str(Path(args.work).resolve()), "$WORK"))
    SHORTEN.append((str(Path(args.work)), "$WORK"))
    facts = machine_facts(args)
    results = []
    for s in args.scenes:
        log(f"scene {s}")
        results.append(bench_scene(args, s))
    # scenes not run now, whole, from the --reuse files (first file wins)
    for path in args.reuse:
        for res in json.loads(Path(path).read_text()).get("scenes", []):
            if res.get("scene") not in [r["scene"] for r in results]:
                res["reused_from"] = str(path)
                results.append(res)
    results.sort(key=lambda r: SCENES.index(r["scene"]))
    def reuse_or_run(path, key, what, want, run):
        """The JSON of an earlier table script (`path`, checked for `key`), or a new run when `want`."""
        if path:
            d = json.loads(Path(path).read_text())
            if key not in d:
                ap.error(f"{path}: not a {what} JSON of this version (no '{key}')")
            return d
        if want:
            log(what)
            return run()
        return None
    quality = reuse_or_run(args.quality_from, "scenes", "level matching quality", args.quality,
                           lambda: quality_run(args))
    astrometry = reuse_or_run(args.astrometry_from, "table_md", "absolute astrometry against TweakRegStep",
                              args.astrometry, lambda: astrometry_run(args))
    stripes = reuse_or_run(args.stripes_from, "table_md", "stripe power left in the final mosaic",
                           bool(args.stripes), lambda: stripes_run(args))
    cosmic = reuse_or_run(args.cosmic_from, "table_md", "cosmic rays left in the final mosaic",
                          bool(args.cosmic), lambda: cosmic_run(args))
    chain = reuse_or_run(args.chain_from, "table_md", "the whole chain against JWST stage 3",
                         bool(args.chain), lambda: chain_run(args))
    convolve = reuse_or_run(args.convolve_from, "table_md", "PSF-matching convolution against astropy",
                            bool(args.convolve), lambda: convolve_run(args))
    groups = reuse_or_run(args.groups_from, "table_md", "campaign groups", args.groups, lambda: groups_run(args))
    destripe = [destripe_run(args, sc) for sc in args.destripe.split(",") if sc and sc != "none"]
    for path in args.reuse:
        for r in json.loads(Path(path).read_text()).get("destripe") or []:
            if r.get("scene") not in [x["scene"] for x in destripe]:
                r["reused_from"] = str(path)
                destripe.append(r)
    checksums = [checksums_run(args, sc) for sc in args.checksums.split(",") if sc and sc != "none"]
    for path in args.reuse:
        for r in json.loads(Path(path).read_text()).get("checksums") or []:
            if r.get("scene") not in [x["scene"] for x in checksums]:
                r["reused_from"] = str(path)
                checksums.append(r)
    Path(args.results_dir).mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    jp = Path(args.results_dir) / f"{stamp}.json"

    def rel(p):
        try:
            return p.resolve().relative_to(REPO)
        except ValueError:
            return p
    def saved(path_from, data, name):
        """Where a table script's JSON lives: the reused file, or <results>/<stamp>-<name>.json now."""
        if path_from:
            return Path(path_from)
        if data is None:
            return None
        p = Path(args.results_dir) / f"{stamp}-{name}.json"
        p.write_text(json.dumps(data, indent=1))
        return p
    qp = saved(args.quality_from, quality, "quality")
    ap_ = saved(args.astrometry_from, astrometry, "astrometry")
    sp = saved(args.stripes_from, stripes, "stripes")
    cp = saved(args.cosmic_from, cosmic, "cosmic")
    vp = saved(args.convolve_from, convolve, "convolve")
    gp = saved(args.groups_from, groups, "groups")
    hp = saved(args.chain_from, chain, "chain")
    jp.write_text(json.dumps({"command": args.cmdline, "machine": facts, "scenes": results,
                              "quality": None if qp is None else str(rel(qp)), "destripe": destripe,
                              "checksums": checksums,
                              "astrometry": None if ap_ is None else str(rel(ap_)),
                              "stripes": None if sp is None else str(rel(sp)),
                              "cosmic": None if cp is None else str(rel(cp)),
                              "convolve": None if vp is None else str(rel(vp)),
                              "groups": None if gp is None else str(rel(gp)),
                              "chain": None if hp is None else str(rel(hp)),
                              "mem_budget_mb": args.mem_budget_mb or args.default_budget_mb}, indent=1))
    write_report(args, facts, results, rel(jp), quality, None if qp is None else rel(qp), destripe,
                 astrometry, None if ap_ is None else rel(ap_), stripes, None if sp is None else rel(sp),
                 checksums, cosmic, None if cp is None else rel(cp), convolve, None if vp is None else rel(vp),
                 groups, None if gp is None else rel(gp), chain, None if hp is None else rel(hp))
    log(f"wrote {args.out} and {jp}" + (f" and {qp}" if qp else ""))
    for res in results:
        print(f"\n## {res['scene']}")
        print(res.get("skipped") or scene_table(res, args.ranks))
    if quality is not None:
        print("\n## Level matching quality")
        for sc in quality.get("scenes", []):
            print(f"\n### {sc['scene']['name']}\n{sc['table_md']}")
        if quality.get("error"):
            print(f"not measured: {quality['error']}")
    if astrometry is not None:
        print("\n## Absolute astrometry against TweakRegStep")
        print(astrometry.get("table_md") or f"not measured: {astrometry.get('error')}")
    if stripes is not None:
        print("\n## NIRCam stripe power left in the final mosaic")
        print(stripes.get("table_md") or f"not measured: {stripes.get('error')}")
    if cosmic is not None:
        print("\n## Cosmic rays left in the final mosaic")
        print(cosmic.get("table_md") or f"not measured: {cosmic.get('error')}")
    if convolve is not None:
        print("\n## PSF-matching convolution against astropy")
        print(convolve.get("table_md") or f"not measured: {convolve.get('error')}")
    if chain is not None:
        print("\n## The whole chain against JWST stage 3")
        print(chain.get("table_md") or f"not measured: {chain.get('error')}")
    if groups is not None:
        print("\n## Campaign groups")
        print(groups.get("table_md") or f"not measured: {groups.get('error')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

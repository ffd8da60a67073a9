"""Pieces shared by the bench's table scripts (astrometry.py, stripes.py): a cached simulated scene and
the atomic write of a script's JSON."""
import json
import shutil
import subprocess
from pathlib import Path


def simulate(tessera, sets, sim, log):
    """`tessera --set S... simulate --out SIM`, unless SIM already holds a finished scene (truth.json is
    written last)."""
    if (sim / "truth" / "truth.json").exists():
        return
    if sim.exists():
        shutil.rmtree(sim)
    cmd = [tessera]
    for s in sets:
        cmd += ["--set", s]
    cmd += ["simulate", "--out", str(sim)]
    log(" ".join(cmd))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def write_json(path, out):
    """`out` to `path` as JSON through a temporary name, so that a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1, default=str))
    tmp.replace(path)


def run_sections(path, items, run, table):
    """`run` on each item in turn, timed; the rows, the total time and `table` of them written to
    `path` as JSON (through `write_json`) and the table printed: a section script's main loop."""
    import time
    t0 = time.perf_counter()
    scenes = [run(i) for i in items]
    res = {"scenes": scenes, "total_s": time.perf_counter() - t0, "table_md": table(scenes)}
    write_json(path, res)
    print(res["table_md"])
    return 0

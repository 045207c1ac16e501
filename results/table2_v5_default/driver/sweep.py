"""GPU-box sweep driver (not part of the package): evaluate jobs run concurrently on one GPU, sharing one FP video
folder and the sensitivity cache; resumable across calls (warm /tmp, or a restored state.tgz); records packed into
$OUT every 40 s so a cut-short call keeps them.

    python .device_carry/sweep.py JOBS.json WORK PARALLEL THREADS DEADLINE_S RESTORE_DIR -- <common overrides>
"""
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

t_start = time.time()
jobs = json.loads(Path(sys.argv[1]).read_text())
work, parallel, threads = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
deadline = t_start + float(sys.argv[5])
restore = Path(sys.argv[6])
common = sys.argv[sys.argv.index("--") + 1:]
out = Path(os.environ["OUT"])
status_path = work / "status.json"
if not work.exists() and (restore / "state.tgz").exists():
    work.mkdir(parents=True)
    with tarfile.open(restore / "state.tgz") as tar:
        tar.extractall(work)
    print("restored state from", restore, flush=True)
work.mkdir(parents=True, exist_ok=True)
status = json.loads(status_path.read_text()) if status_path.exists() else {}
procs: dict[str, subprocess.Popen] = {}
env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


def log(*a):
    print(f"[{time.time() - t_start:6.0f}s]", *a, flush=True)


def run(name, args, nthreads=threads):
    t0 = time.time()
    e = dict(env, OMP_NUM_THREADS=str(nthreads), MKL_NUM_THREADS=str(nthreads))
    with open(work / f"{name}.log", "a") as f:
        p = subprocess.Popen([sys.executable, *args], stdout=f, stderr=subprocess.STDOUT, env=e, start_new_session=True)
        procs[name] = p
        rc = p.wait()
        procs.pop(name, None)
    s = round(time.time() - t0, 1)
    status[name] = {"rc": rc, "seconds": s, "prev": status.get(name)}
    log(name, "rc", rc, "seconds", s)
    return rc


GROUPS = {"records_t2.tgz": lambda n: n.startswith("t2_") and "published" not in n,
          "records_pub.tgz": lambda n: "published" in n,
          "records_t345.tgz": lambda n: n[:3] in ("t3_", "t4_", "t5_")}


def pack_records():
    for fname, pick in GROUPS.items():
        with tarfile.open(out / (fname + ".tmp"), "w:gz") as tar:
            for d in sorted((work / "jobs").glob("*")) if (work / "jobs").exists() else []:
                if not pick(d.name):
                    continue
                for p in sorted(d.rglob("*")):
                    if "videos" in p.parts or "calib_cache" in p.parts or "samples" in p.parts:
                        continue
                    if p.is_file() and (p.suffix in (".json", ".log", ".yaml") or p.name == "fvd_features.safetensors"):
                        tar.add(p, arcname=str(p.relative_to(work)))
                lg = work / f"{d.name}.log"
                if lg.exists():
                    tar.add(lg, arcname=lg.name)
        os.replace(out / (fname + ".tmp"), out / fname)
    status_path.write_text(json.dumps(status, indent=1))
    (out / "status.json").write_text(json.dumps(status, indent=1))


def pack_state():
    with tarfile.open(out / "state.tgz.tmp", "w:gz") as tar:
        for sub in ("fp", "logs", "sens_w4a8", "sens_w8a8", "sens_w4a6", "gen_fp"):
            if (work / sub).exists():
                tar.add(work / sub, arcname=sub)
        for ck in (work / "jobs").glob("*/calibration/calib_cache"):  # unfinished jobs: lock-step checkpoints
            if not (ck.parent.parent / "record.json").exists():
                tar.add(ck, arcname=str(ck.relative_to(work)))
        for p in work.glob("*.log"):
            if not p.name.startswith(("t2_", "t3_", "t4_", "t5_")):
                tar.add(p, arcname=p.name)
        tar.add(status_path, arcname="status.json")
    os.replace(out / "state.tgz.tmp", out / "state.tgz")


stop = threading.Event()


def packer():
    while not stop.wait(40):
        try:
            pack_records()
        except Exception as e:  # noqa: BLE001
            log("pack failed", e)


def killer():
    while not stop.wait(2):
        if time.time() > deadline:
            for name, p in list(procs.items()):
                log("deadline: stopping", name)
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            return


threading.Thread(target=packer, daemon=True).start()
threading.Thread(target=killer, daemon=True).start()
fp = work / "fp"
prep = []
if status.get("gen_fp", {}).get("rc") != 0:
    prep.append(("gen_fp", ["scripts/generate.py", *common, f"eval.fp_dir={fp}", f"hydra.run.dir={work}/gen_fp"]))
for bits in ("w4a8", "w4a6", "w8a8"):
    if status.get(f"sens_{bits}", {}).get("rc") != 0:
        prep.append((f"sens_{bits}", ["scripts/sensitivity.py", *[c for c in common if not c.startswith("eval.")],
                                      f"bits={bits}", f"hydra.run.dir={work}/sens_{bits}"]))
if prep:
    with ThreadPoolExecutor(len(prep)) as ex:
        list(ex.map(lambda a: run(*a, nthreads=max(threads, 16 // len(prep))), prep))
    pack_records()
    pack_state()


def job(item):
    name, overrides = item
    if (work / "jobs" / name / "record.json").exists():
        return
    if time.time() > deadline - 30:
        status[name] = {"rc": None, "skipped": "deadline", "prev": status.get(name)}
        return
    run(name, ["scripts/evaluate.py", *common, *overrides, f"eval.fp_dir={fp}", f"hydra.run.dir={work}/jobs/{name}"])


with ThreadPoolExecutor(parallel) as ex:
    list(ex.map(job, jobs.items()))
stop.set()
pack_records()
pack_state()
done = sorted(d.name for d in (work / "jobs").glob("*") if (d / "record.json").exists())
log("done", len(done), "of", len(jobs), "records")

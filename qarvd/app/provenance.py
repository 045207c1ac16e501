"""Where a result came from: run labels, the identity of the weight files, and the record of a run's provenance.

Labels are derived, never typed twice: ``bits`` is named from its bit widths, ``method`` from the method config.
Weight files are identified by sha256 (path, size and time say nothing about contents), so a result names its exact
model and a cache or artifact made from other weights at the same path is refused.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterable, Optional

import torch
from omegaconf import DictConfig, OmegaConf


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, hashed once per process for an unchanged file (a 1.3B checkpoint takes seconds, and
    the artifact, the sensitivity cache and the FP-folder cache all key on it)."""
    p = Path(path).resolve()
    st = p.stat()
    return _file_sha256(str(p), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


SOURCE_SUFFIXES = (".py", ".yaml", ".cu", ".cuh", ".cpp", ".h")


def source_sha256(roots: Iterable[str | Path]) -> str:
    """sha256 over the source files below ``roots`` (relative names and contents, in sorted order): the same code
    hashes the same on any machine, a copied tree without ``.git`` included."""
    h = hashlib.sha256()
    for root in map(Path, roots):
        if not root.is_dir():
            continue
        for p in sorted(q for q in root.rglob("*") if q.suffix in SOURCE_SUFFIXES and q.is_file()
                        and "__pycache__" not in q.parts):
            h.update(f"{root.name}/{p.relative_to(root).as_posix()}".encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _git(root: Path, *args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_identity() -> dict:
    """The code a run executed: the git commit and whether tracked files had edits (where a checkout exists), and
    ``source_sha256`` of the packages and configs, which also names code copied without its ``.git``."""
    import eval as eval_pkg
    import kernels
    import qarvd

    pkgs = [Path(m.__file__).parent for m in (qarvd, eval_pkg, kernels)]
    root = pkgs[0].parent
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status),
            "source_sha256": source_sha256([*pkgs, root / "conf"])}


def device_name(device: str | torch.device) -> str:
    """What ran the tensors: the GPU's name, or the CPU's with the thread count (tiny-model results differ between
    the two in the last bits, which quantization can amplify, so tables name the device of every row)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return f"cpu {platform.machine()} ({torch.get_num_threads()} threads)" if device.type == "cpu" else str(device)


def environment(device: str | torch.device) -> dict:
    """Where and with what a result was computed: device, library versions, host, time and code identity."""
    return {"device": device_name(device), "torch": torch.__version__, "python": platform.python_version(),
            "host": socket.gethostname(), "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "code": code_identity()}


def experiment_preset() -> str | None:
    """The ``experiment=`` preset of the running Hydra job (which table the record belongs to), or None."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get("experiment") if HydraConfig.initialized() else None


def calibration_seed(cfg: DictConfig) -> int:
    """The base seed of a calibration's draws: ``calib.seed``, or the run's ``seed`` when it is null. Separate from the
    held-out videos' seeds, so repeated calibrations of one cell (its run-to-run spread) are scored on the same videos."""
    s = OmegaConf.select(cfg, "calib.seed", default=None)
    return int(cfg.seed) if s is None else int(s)


def run_identity(cfg: DictConfig) -> dict:
    """What a result row needs to say where it came from."""
    random_init = bool(cfg.model.checkpoint.get("random_init", False))
    return {"model": cfg.model.name, "method": cfg.method.name, "bits": cfg.bits.name, "calib": cfg.calib.name,
            "seed": int(cfg.seed), "calib_seed": calibration_seed(cfg), "random_init": random_init,
            "experiment": experiment_preset(),
            "checkpoint": None if random_init else str(cfg.model.checkpoint.path)}


def weights_identity(cfg: DictConfig) -> dict:
    """sha256 of every weight file the run reads (DiT checkpoint, text encoder); {} for seeded random weights."""
    out = {}
    for key in ("checkpoint", "text_encoder"):
        node = cfg.model.get(key)
        if node is None or node.get("random_init", False) or not node.get("path"):
            continue
        p = Path(str(node.path))
        out[f"model.{key}"] = {"path": str(p), "sha256": file_sha256(p) if p.is_file() else None}
    return out


class ProvenanceError(RuntimeError):
    """A reuse or a label that does not match what it claims to be (artifact, video folder, run folder)."""


def base_weights(cfg: DictConfig) -> dict:
    """What an artifact is calibrated on: the sha256 of every weight file, or the seeded random init and its
    architecture. Paths are left out: a moved file is the same model, a retrained one at the same path is not."""
    if cfg.model.checkpoint.get("random_init", False):
        return {"random_init": True, "init_seed": int(cfg.model.init_seed),
                "arch": OmegaConf.to_container(cfg.model.arch, resolve=True)}
    return {key: v["sha256"] for key, v in weights_identity(cfg).items()}


def check_base_weights(cfg: DictConfig, artifact_run: dict, artifact: str) -> None:
    """The artifact was calibrated on the weights ``cfg`` loads, or a ProvenanceError naming both."""
    recorded = artifact_run.get("base_weights")
    if recorded is None:
        raise ProvenanceError(f"artifact '{artifact}' records no base weights (written before provenance was kept); "
                              "re-run its calibration")
    mine = base_weights(cfg)
    if recorded != mine:
        raise ProvenanceError(f"artifact '{artifact}' was calibrated on other weights than model.checkpoint loads: "
                              f"artifact {recorded}, this config {mine}")


def explicit_choices() -> dict:
    """Config groups the user chose on the command line (``method=...``), from Hydra's overrides; {} without Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return {}
    out = {}
    for o in HydraConfig.get().overrides.task:
        key, _, value = o.partition("=")
        out[key.lstrip("+~")] = value
    return out


def labels_from_artifact(cfg: DictConfig, artifact_run: dict, artifact: str) -> dict:
    """The identity of results made from an artifact: its own model / method / bits / calib / seed / tags. A config
    that names another method, bits or model on the command line, or another model in any way, is refused."""
    identity = {k: artifact_run.get(k) for k in ("model", "method", "bits", "calib", "seed", "calib_seed", "random_init",
                                                 "checkpoint", "experiment")}
    chosen = explicit_choices()
    clash = {}
    if cfg.model.name != identity["model"]:
        clash["model"] = (cfg.model.name, identity["model"])
    for group in ("method", "bits"):
        if group in chosen and OmegaConf.select(cfg, f"{group}.name") != identity[group]:
            clash[group] = (OmegaConf.select(cfg, f"{group}.name"), identity[group])
    if clash:
        raise ProvenanceError(f"the config contradicts artifact '{artifact}': " + ", ".join(
            f"{k}={mine!r} but the artifact is {theirs!r}" for k, (mine, theirs) in clash.items())
            + "; drop those overrides (results are labelled from the artifact) or pass the artifact you meant")
    identity["experiment"] = experiment_preset() or identity["experiment"]
    return {**identity, "tags": artifact_run.get("tags", {})}


@contextlib.contextmanager
def run_lock(folder: str | Path):
    """Hold ``<folder>/.run.lock`` while a run writes into ``folder``; a second run into the same folder stops at
    once, naming the process that holds it (two runs would overwrite each other's files)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".run.lock"
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ProvenanceError(f"run folder '{folder}' is in use by {holder}: two runs must not write into one "
                                  "folder; give this run its own (hydra.run.dir=...)") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        yield folder
    finally:
        f.close()  # releases the lock


MANIFEST = "manifest.json"


def video_manifest(cfg: DictConfig, jobs, artifact: Optional[str], deploy: Optional[dict] = None) -> dict:
    """What a folder of videos is: the weights, the artifact (sha256 of its tensors and its run labels; None for FP),
    the rollout and model settings, the encoding, the real-kernel backend if deployed, and every video's prompt and
    seed."""
    from qarvd.quant.artifact import TENSORS_FILE, read_config

    art, labels = None, None
    if artifact:
        p = Path(artifact)
        art = file_sha256(p / TENSORS_FILE if p.is_dir() else p)
        labels = read_config(p)["run"]
    return {"base_weights": base_weights(cfg), "artifact_sha256": art, "labels": labels, "deploy": deploy,
            "model": {k: OmegaConf.to_container(cfg.model[k], resolve=True) for k in ("arch", "rollout", "latent")}
            | {"name": cfg.model.name, "dtype": cfg.model.dtype},
            "encoding": OmegaConf.to_container(cfg.eval.video, resolve=True),
            "videos": {j.name: {"prompt": j.prompt, "seed": j.seed} for j in jobs}}


def check_or_write_manifest(folder: str | Path, manifest: dict) -> None:
    """Reuse a video folder only if it was made the same way: its manifest matches on everything but the video list
    (a resumed or extended run may add videos), and every video both lists has the same prompt and seed. A folder
    with videos but no manifest is refused. The merged manifest is written before any new video."""
    from eval.video_io import VIDEO_SUFFIX
    from qarvd.utils.io import atomic_write_json

    folder = Path(folder)
    path = folder / MANIFEST
    if path.exists():
        old = json.loads(path.read_text())
        diff = sorted(k for k in (set(old) | set(manifest)) - {"videos"} if old.get(k) != manifest.get(k))
        if diff:
            raise ProvenanceError(f"video folder '{folder}' was made differently ({', '.join(diff)} differ from this "
                                  f"run's): use another eval.video_dir, or delete the folder to regenerate")
        moved = sorted(n for n, v in manifest["videos"].items() if n in old["videos"] and old["videos"][n] != v)
        if moved:
            raise ProvenanceError(f"video folder '{folder}' holds {moved[:3]} for other prompts or seeds than this run")
        manifest = {**manifest, "videos": {**old["videos"], **manifest["videos"]}}
        if manifest == old:
            return
    elif folder.is_dir() and any(folder.glob(f"*{VIDEO_SUFFIX}")):
        raise ProvenanceError(f"video folder '{folder}' has videos but no {MANIFEST}: nothing says how they were made; "
                              "use another eval.video_dir, or delete the folder to regenerate")
    atomic_write_json(path, manifest)

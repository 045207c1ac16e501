"""Copy finished sweep jobs into results/<dest>/runs/<job>/ (record, FVD features, overrides), adding the
provenance.environment these records predate, marked as backfilled, with the device the run log names."""
import json, shutil, sys
from pathlib import Path
src, dest, device = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
commit = "a78a5e5b9a8acde7ec3511c748f797ee2526c228"
for job in sorted(p for p in src.iterdir() if (p / "record.json").exists()):
    out = dest / "runs" / job.name
    out.mkdir(parents=True, exist_ok=True)
    rec = json.loads((job / "record.json").read_text())
    rec.setdefault("provenance", {})["environment"] = {
        "device": device, "code": {"git_commit": commit, "git_dirty": False},
        "backfilled": "written after the run from the run's driver log; the record predates provenance.environment"}
    (out / "record.json").write_text(json.dumps(rec, indent=1))
    shutil.copy(job / "fvd_features.safetensors", out / "fvd_features.safetensors")
    shutil.copy(job / ".hydra" / "overrides.yaml", out / "overrides.yaml")
    print(job.name, rec["metrics"])

"""W&B logging: an offline run holds the resolved config, metrics and results file; every run is finished (the
records of real jobs in an offline run: tests/test_job_outputs.py)."""
from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from qarvd.app.wandb_logger import NullLogger, WandbLogger, logging_run
from wandb_records import read_run


class _Recorder(NullLogger):
    def __init__(self):
        self.calls = []

    def start(self, cfg):
        self.calls.append("start")

    def finish(self, exit_code=0):
        self.calls.append(("finish", exit_code))


def test_logging_run_always_finishes():
    ok, bad = _Recorder(), _Recorder()
    with logging_run(ok, OmegaConf.create()):
        pass
    with pytest.raises(RuntimeError, match="job failed"):
        with logging_run(bad, OmegaConf.create()):
            raise RuntimeError("job failed")
    assert ok.calls == ["start", ("finish", 0)] and bad.calls == ["start", ("finish", 1)]


def test_offline_run_files(tmp_path):
    cfg = OmegaConf.create({"task_name": "evaluate", "x": "${y}", "y": 3})
    (tmp_path / "record.json").write_text(json.dumps({"metrics": {"fvd_fp": 1.5}}))
    logger = WandbLogger(project="qarvd-test", entity=None, mode="offline", dir=str(tmp_path), group=None,
                         job_type="evaluate", tags=["extra"])
    with logging_run(logger, cfg):
        assert logger.run.config["x"] == 3  # the resolved config
        assert logger.run.group == "evaluate" and logger.run.name == "evaluate"  # outside Hydra: the task name
        logger.log_metrics({"fvd_fp": 1.5})
        logger.log_table("per_item", ["video", "lpips_fp"], [["a-0.mp4", 0.1]])
        logger.log_file(tmp_path / "record.json")
        logger.set_labels({"model": "tiny", "method": "qarvd", "bits": "w4a8"})
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and logger.run is None
    assert json.loads((runs[0] / "files" / "record.json").read_text())["metrics"]["fvd_fp"] == 1.5
    assert list(runs[0].glob("*.wandb"))  # the run record itself (config, history, summary, exit code)
    assert read_run(runs[0])["run"]["tags"] == ["tiny", "qarvd", "w4a8", "extra"]
    with pytest.raises(ValueError, match="logger.mode"):
        WandbLogger("qarvd", None, "sometimes", None, None, None, [])

"""`bench run / status / report` end to end: jobs in their own processes, failures recorded without stopping the
others, finished jobs never run again, and the report built from the results store."""
import json
import sys
import textwrap

import pytest

from benchmarks.cli import main
from benchmarks.harness import run as harness_run
from benchmarks.harness.run import store_path, suite_results
from benchmarks.harness.store import ResultsStore
from benchmarks.harness.suite import expand_jobs, load_suite
from benchmarks.synthetic import synthesize
from benchmarks.synthetic.ramps import write_direction_task

FAKE_JOB = """
import json, pathlib, sys
work_dir, ran, fail = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3] == "fail"
with open(ran, "a") as out:
    out.write(work_dir.name + "\\n")
print("training ... step 1 of 1")
if fail:
    sys.exit("CUDA out of memory (pretend)")
work_dir.mkdir(parents=True, exist_ok=True)
(work_dir / "metrics.json").write_text(json.dumps({"last": {"mIoU": 41.5, "aAcc": 80.25}}))
"""


def write_suite(tmp_path, checkpoints, benchmarks, data):
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(f"""
        name: test-suite
        work_dir: {tmp_path / "bench"}
        synthetic: true
        data: {json.dumps(data)}
        checkpoints: {json.dumps(checkpoints)}
        benchmarks: {json.dumps(benchmarks)}
        """))
    return path


@pytest.fixture
def fake_suite(tmp_path, monkeypatch):
    ran = tmp_path / "ran.txt"

    def fake_command(job, backend):
        fail = "broken" in job.checkpoint.label
        return [sys.executable, "-c", FAKE_JOB, str(job.work_dir), str(ran), "fail" if fail else "ok"]

    monkeypatch.setattr(harness_run, "job_command", fake_command)
    checkpoints = [{"label": "DropPos 200ep", "random_init": True, "reference": "tab6:DropPos 200"},
                   {"label": "broken", "random_init": True}, {"label": "MAE 200ep", "random_init": True}]
    suite = write_suite(tmp_path, checkpoints, [{"name": "seg", "config": "upernet_tiny_synth"}], {"ade": "/data"})
    return suite, ran


def test_a_failing_job_is_recorded_and_the_others_run_once(fake_suite, capsys):
    suite_path, ran = fake_suite
    assert main(["bench", "run", str(suite_path)]) == 2
    output = capsys.readouterr()
    assert "1 of 3 jobs failed" in output.err and "broken.seg." in output.err
    assert "CUDA out of memory (pretend)" in output.out  # the failure's log tail in the status table
    assert len(ran.read_text().splitlines()) == 3

    assert main(["bench", "run", str(suite_path)]) == 2  # only the failed job runs again
    assert [line.split(".")[0] for line in ran.read_text().splitlines()] == [
        "droppos-200ep", "broken", "mae-200ep", "broken"]
    suite = load_suite(suite_path)
    with ResultsStore(store_path(suite)) as store:
        states = {record.checkpoint: (record.state, record.attempts) for record in store.jobs()}
        done = store.get(expand_jobs(suite)[0].job_id)
    assert states == {"DropPos 200ep": ("done", 1), "broken": ("failed", 2), "MAE 200ep": ("done", 1)}
    assert done.metrics == {"mIoU": 41.5, "aAcc": 80.25}

    assert main(["bench", "status", str(suite_path)]) == 0
    assert "failed" in capsys.readouterr().out
    suite_path.write_text(suite_path.read_text() + "chance: {mIoU: 0.66}\n")
    assert main(["bench", "report", str(suite_path), "--out", str(suite_path.parent / "report")]) == 0
    markdown = (suite_path.parent / "report" / "report.md").read_text()
    assert "| DropPos 200ep | 41.50 | 80.25 |" in markdown and "| MAE 200ep | 41.50 | 80.25 |" in markdown
    assert "| chance level | 0.66 | - |" in markdown
    assert "(40.70" not in markdown  # a synthetic suite: no paper numbers beside tiny models
    assert (suite_path.parent / "report" / "report.html").is_file()


@pytest.mark.parametrize(("backend", "expected"), [
    (None, {"type": "torchrun", "gpus": 4}),
    ({"type": "docker", "image": "droppos-bench", "gpus": 8},
     {"type": "docker", "image": "droppos-bench", "gpus": 4, "docker": "docker"}),
])
def test_run_gpus_sets_the_gpus_of_every_job(tmp_path, monkeypatch, backend, expected):
    seen = []

    def fake_command(job, backend):
        seen.append(backend)
        return [sys.executable, "-c", FAKE_JOB, str(job.work_dir), str(tmp_path / "ran.txt"), "ok"]

    monkeypatch.setattr(harness_run, "job_command", fake_command)
    monkeypatch.setattr(harness_run, "launch_command", lambda job, suite: harness_run.job_command(job, suite.backend))
    suite_path = write_suite(tmp_path, [{"label": "a", "random_init": True}],
                             [{"name": "seg", "config": "upernet_tiny_synth"}], {"ade": "/data"})
    if backend:
        suite_path.write_text(suite_path.read_text() + f"backend: {json.dumps(backend)}\n")
    assert main(["bench", "run", str(suite_path), "--gpus", "4"]) == 0
    assert seen == [expected]


def test_a_real_segmentation_job_goes_from_suite_to_report(tmp_path):
    synthesize(tmp_path / "data", num_images=12, size=64, seed=0)
    ade = tmp_path / "data" / "ade" / "ADEChallengeData2016"
    overrides = {"schedule.iterations": 2, "schedule.warmup_iters": 1, "batch_size": 4, "effective_batch": 4,
                 "data.scale": [256, 64]}
    suite_path = write_suite(tmp_path, [{"label": "random init", "random_init": True}],
                             [{"name": "seg", "config": "upernet_tiny_synth", "overrides": overrides}],
                             {"ade": str(ade)})
    assert main(["bench", "run", str(suite_path)]) == 0
    suite = load_suite(suite_path)
    with ResultsStore(store_path(suite)) as store:
        (record,) = store.jobs()
    written = json.loads((expand_jobs(suite)[0].work_dir / "metrics.json").read_text())["last"]
    assert record.state == "done" and record.metrics == {"mIoU": written["mIoU"], "aAcc": written["aAcc"]}
    (result,) = suite_results(suite)
    assert [step for step, _ in result.curves["seg"]] == [2]  # the tiny config logs at the last iteration
    assert main(["bench", "report", str(suite_path)]) == 0
    assert "random init" in (suite.work_dir / "report" / "report.md").read_text()
    assert (suite.work_dir / "report" / "plots" / "synthetic" / "loss_seg.png").is_file()


def test_the_frozen_protocols_go_from_suite_to_report_and_share_their_features(tmp_path):
    write_direction_task(tmp_path / "ramps", 8, 4, seed=0)
    synthesize(tmp_path / "data", num_images=12, size=64, seed=0)
    ade = tmp_path / "data" / "ade" / "ADEChallengeData2016"
    cache = {"features.cache_dir": str(tmp_path / "cache")}
    suite_path = write_suite(tmp_path, [{"label": "random init", "random_init": True}], [
        {"name": "cls.knn", "config": "knn_tiny_ramps", "overrides": cache},
        {"name": "cls.linear", "config": "linear_tiny_ramps", "overrides": cache},
        {"name": "seg.linear", "config": "linear_tiny_synth",
         "overrides": {"schedule.iterations": 2, "schedule.warmup_iters": 1}},
    ], {"imagenet": str(tmp_path / "ramps"), "ade": str(ade)})
    assert main(["bench", "run", str(suite_path)]) == 0
    suite = load_suite(suite_path)
    (result,) = suite_results(suite)
    written = {job.benchmark: json.loads((job.work_dir / "metrics.json").read_text()) for job in expand_jobs(suite)}
    assert result.metrics == {"knn_top1": written["cls.knn"]["last"]["top1"],
                              "linear_top1": written["cls.linear"]["last"]["top1"],
                              "linseg_mIoU": written["seg.linear"]["last"]["mIoU"],
                              "linseg_aAcc": written["seg.linear"]["last"]["aAcc"]}
    assert written["cls.knn"]["features"] == written["cls.linear"]["features"]  # extracted once, read twice
    assert len(list((tmp_path / "cache").iterdir())) == 2  # train and val
    assert main(["bench", "report", str(suite_path)]) == 0
    report = (suite.work_dir / "report" / "report.md").read_text()
    assert "| checkpoint | knn_top1 | linear_top1 | linseg_mIoU | linseg_aAcc |" in report

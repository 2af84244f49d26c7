"""The SLURM backend: jobs submitted all at once through submitit (its local cluster, and SLURM itself played by
stand-ins for sbatch / srun / sacct) and run in parallel, multi-node jobs (torchrun agents meeting at the first
node; a real fine-tune over two stand-in nodes), failures recorded with their log tail, the suite's
resources in the batch script, SLURM jobs a killed harness left waited for instead of submitted again, the results
store's external ids and its schema 1 -> 2 migration, and suite errors for bad SLURM settings."""
import json
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.cli import main
from benchmarks.harness import run as harness_run
from benchmarks.harness import slurm
from benchmarks.harness.run import job_command, store_path
from benchmarks.harness.store import ResultsStore
from benchmarks.harness.suite import CheckpointEntry, Job, SuiteError, expand_jobs, load_suite
from benchmarks.synthetic import synthesize

ROOT = Path(__file__).resolve().parents[2]


def python(script, *args):
    """Run a Python script in a process of its own, with this test's environment (PATH included)."""
    subprocess.run([sys.executable, "-c", script, *map(str, args)], check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})

# Appends its work dir's name to `ran`, then (unless it fails) waits until `ran` has 3 lines: three jobs finish
# only if they run at the same time, not one after another.
FAKE_JOB = """
import json, pathlib, sys, time
work_dir, ran, fail = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3] == "fail"
with open(ran, "a") as out:
    out.write(work_dir.name + "\\n")
print("training ... step 1 of 1")
if fail:
    sys.exit("CUDA out of memory (pretend)")
deadline = time.monotonic() + 20
while len(ran.read_text().splitlines()) < 3:
    if time.monotonic() > deadline:
        sys.exit("the other jobs never started: not run in parallel")
    time.sleep(0.05)
(work_dir / "metrics.json").write_text(json.dumps({"last": {"mIoU": 41.5, "aAcc": 80.25}}))
"""

SUITE = """name: slurm-suite
work_dir: {work_dir}
data: {{ade: /data/ade}}
backend:
  type: slurm
  timeout_min: 60
  gpus: 8
  partition: gpu
  cluster: {cluster}
checkpoints: {checkpoints}
benchmarks:
  - {{name: seg, config: upernet_tiny_synth}}
"""


def write_suite(tmp_path, labels, cluster="local"):
    checkpoints = json.dumps([{"label": label, "random_init": True} for label in labels])
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(work_dir=tmp_path / "bench", cluster=cluster, checkpoints=checkpoints))
    return path


@pytest.fixture
def fake_jobs(tmp_path, monkeypatch):
    """Jobs are FAKE_JOB (checkpoints labelled 'broken' fail); polling every 50 ms; returns the `ran` file."""
    ran = tmp_path / "ran.txt"

    def fake_command(job, backend):
        assert backend["type"] == "slurm"
        fail = "broken" in job.checkpoint.label
        return [sys.executable, "-c", FAKE_JOB, str(job.work_dir), str(ran), "fail" if fail else "ok"]

    monkeypatch.setattr(harness_run, "job_command", fake_command)
    monkeypatch.setattr(slurm, "POLL_S", 0.05)
    return ran


def records(suite_path):
    with ResultsStore(store_path(load_suite(suite_path))) as store:
        return {record.checkpoint: record for record in store.jobs()}


def test_jobs_run_in_parallel_and_a_failure_keeps_its_log_tail(tmp_path, fake_jobs, capsys):
    suite_path = write_suite(tmp_path, ["DropPos 200ep", "broken", "MAE 200ep"])
    assert main(["bench", "run", str(suite_path)]) == 2
    output = capsys.readouterr()
    assert "1 of 3 jobs failed" in output.err and "broken.seg." in output.err
    assert output.out.count("submitted as local job") == 3
    assert "broken / seg: failed" in output.out and "still out" in output.out  # progress lines
    before = records(suite_path)
    assert {label: r.state for label, r in before.items()} == {
        "DropPos 200ep": "done", "broken": "failed", "MAE 200ep": "done"}
    assert before["broken"].log_tail.splitlines()[-2:] == ["CUDA out of memory (pretend)",
                                                           "RuntimeError: exit status 1"]
    done = before["DropPos 200ep"]
    assert done.metrics == {"mIoU": 41.5, "aAcc": 80.25} and done.wall_time_s > 0
    assert done.external_id is None  # a local-cluster job ends with the harness: nothing to wait for later
    work_dir = load_suite(suite_path).work_dir
    assert list((work_dir / "slurm").glob("*_log.out"))  # submitit's files

    assert main(["bench", "run", str(suite_path)]) == 2  # only the failed job is submitted again
    assert sorted(line.split(".")[0] for line in fake_jobs.read_text().splitlines()) == [
        "broken", "broken", "droppos-200ep", "mae-200ep"]
    after = records(suite_path)
    assert after["broken"].attempts == 2 and after["MAE 200ep"] == before["MAE 200ep"]


class LeftSlurmJob:
    """A SLURM job a stopped harness left: running for two polls, then over as `outcome` says."""

    def __init__(self, work_dir, outcome):
        self.job_id, self.work_dir, self.outcome, self.polls = "4242", work_dir, outcome, 0
        self.paths = SimpleNamespace(stderr=Path("slurm/4242_0_log.err"))

    @property
    def state(self):
        return "RUNNING" if self.polls < 3 else "TIMEOUT" if self.outcome == "killed" else "COMPLETED"

    def done(self):
        self.polls += 1
        return self.polls >= 3

    def results(self):
        if self.outcome == "killed":
            raise RuntimeError("has not produced any output")
        if self.outcome == "metrics":
            (self.work_dir / "metrics.json").write_text(json.dumps({"last": {"mIoU": 50.0, "aAcc": 90.0}}))
        return [(0, 12.5)]


def in_a_gone_harness(db, calls):
    """Make store calls (`s.claim('a')`) in a process that then exits: what a killed harness leaves behind."""
    python(f"import sys; from benchmarks.harness.store import ResultsStore; s = ResultsStore(sys.argv[1]); {calls}", db)


@pytest.mark.parametrize(("outcome", "state", "tail"), [
    ("metrics", "done", None),
    ("no metrics", "failed", "FileNotFoundError: .*metrics.json: the job finished without writing its metrics"),
    ("killed", "failed", r"RuntimeError: scheduler job 4242 ended without a result \(state TIMEOUT\)"),
])
def test_a_slurm_job_left_by_a_stopped_harness_is_waited_for_not_submitted_again(tmp_path, fake_jobs, monkeypatch,
                                                                                  outcome, state, tail):
    suite_path = write_suite(tmp_path, ["DropPos 200ep"])
    suite = load_suite(suite_path)
    (job,) = expand_jobs(suite)
    with ResultsStore(store_path(suite)) as store:
        store.add_jobs([(job.job_id, suite.name, job.checkpoint.label, job.benchmark, job.config, str(job.work_dir))])
    in_a_gone_harness(store_path(suite), f"s.claim({job.job_id!r}); s.set_external_id({job.job_id!r}, '4242')")
    job.work_dir.mkdir(parents=True)
    attached = []
    monkeypatch.setattr(slurm, "attach_job", lambda folder, external_id: attached.append((folder, external_id))
                        or LeftSlurmJob(job.work_dir, outcome))

    assert main(["bench", "run", str(suite_path)]) == (0 if state == "done" else 2)
    assert attached == [(suite.work_dir / "slurm", "4242")] and not fake_jobs.exists()  # never submitted again
    record = records(suite_path)["DropPos 200ep"]
    assert (record.state, record.attempts, record.external_id) == (state, 1, "4242")
    assert record.pid == os.getpid()  # this harness took the job over
    if state == "done":
        assert record.metrics == {"mIoU": 50.0, "aAcc": 90.0} and record.wall_time_s == 12.5
    else:
        assert re.search(tail, record.log_tail.splitlines()[-1])


def test_a_job_with_a_scheduler_id_is_left_to_the_scheduler(tmp_path):
    path = tmp_path / "results.db"
    with ResultsStore(path) as store:
        store.add_jobs([(job_id, "s", "ckpt", "seg", {}, f"/w/{job_id}") for job_id in ("slurm", "local", "mine")])
    in_a_gone_harness(path, "s.claim('slurm'); s.set_external_id('slurm', '77'); s.claim('local')")
    with ResultsStore(path) as store:
        assert store.reset_interrupted() == ["local"]  # the SLURM job still runs, whatever became of its harness
        assert not store.claim("slurm") and store.get("slurm").state == "running"
        with pytest.raises(RuntimeError, match="'mine'.*not running in this process"):
            store.set_external_id("mine", "78")
        assert not store.adopt("local")  # no scheduler runs it
        assert store.adopt("slurm") and store.get("slurm").pid == os.getpid() and store.get("slurm").attempts == 1
        assert not store.adopt("slurm")  # a live harness (this one) waits for it now
        store.fail("slurm", "DUE TO TIME LIMIT", 3600.0)
        assert store.claim("slurm")  # a failed job is submitted again, as a new attempt with no scheduler id yet
        assert (store.get("slurm").attempts, store.get("slurm").external_id) == (2, None)


V1_SCHEMA = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    suite TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    benchmark TEXT NOT NULL,
    config TEXT NOT NULL,
    work_dir TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed')),
    metrics TEXT,
    wall_time_s REAL,
    log_tail TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT NOT NULL,
    pid INTEGER,
    host TEXT
)"""


def test_a_version_1_store_is_migrated_keeping_its_rows(tmp_path):
    path = tmp_path / "v1.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute(V1_SCHEMA)
        db.execute("INSERT INTO jobs (job_id, suite, checkpoint, benchmark, config, work_dir, state, metrics, "
                   "wall_time_s, attempts, updated_at) VALUES ('a', 's', 'ckpt', 'seg', '{}', '/w/a', 'done', "
                   "'{\"mIoU\": 47.5}', 3600.0, 1, '2026-01-01T00:00:00.000+00:00')")
        db.execute("INSERT INTO jobs (job_id, suite, checkpoint, benchmark, config, work_dir, state, updated_at) "
                   "VALUES ('b', 's', 'ckpt', 'det', '{}', '/w/b', 'pending', '2026-01-01T00:00:00.000+00:00')")
        db.execute("PRAGMA user_version = 1")
        db.commit()
    for _ in range(2):  # migrated once; opening it again changes nothing
        with ResultsStore(path) as store:
            done = store.get("a")
            assert (done.state, done.metrics, done.wall_time_s, done.attempts) == ("done", {"mIoU": 47.5}, 3600.0, 1)
            assert done.external_id is None and [r.job_id for r in store.jobs()] == ["a", "b"]
        with closing(sqlite3.connect(path)) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    with ResultsStore(path) as store:
        assert store.claim("b")
        store.set_external_id("b", "1234")
        assert store.get("b").external_id == "1234"


# A stand-in for SLURM on this machine: sbatch runs the batch script in the background as job <sbatch's pid> (and
# keeps a copy of it) with the variables of an N-node job, every node being localhost; srun starts one task per node
# with the output files it was given; sacct tells running from completed.
FAKE_SBATCH = """#!{python}
import os, pathlib, re, shutil, subprocess, sys
state, job_id = pathlib.Path(os.environ["FAKE_SLURM"]), str(os.getpid())
script = shutil.copy(sys.argv[-1], state / f"{job_id}.sbatch")
nodes = re.search(r"--nodes=(\\d+)", pathlib.Path(script).read_text()).group(1)
env = {**os.environ, "SLURM_JOB_ID": job_id, "SLURM_NTASKS": nodes, "SLURM_JOB_NUM_NODES": nodes,
       "SLURM_JOB_NODELIST": ",".join(["localhost"] * int(nodes))}
batch = subprocess.Popen(["bash", script], env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
(state / f"{job_id}.pid").write_text(str(batch.pid))
print(f"Submitted batch job {job_id}")
"""
FAKE_SRUN = """#!{python}
import os, subprocess, sys
args, files = sys.argv[1:], {}
while args[0].startswith("--"):
    option = args.pop(0)
    if option in ("--output", "--error"):
        files[option] = args.pop(0).replace("%j", os.environ["SLURM_JOB_ID"])
tasks = []
for node in range(int(os.environ["SLURM_JOB_NUM_NODES"])):
    env = {**os.environ, "SLURM_NODEID": str(node), "SLURM_PROCID": str(node), "SLURM_LOCALID": "0"}
    out, err = (open(files[o].replace("%t", str(node)), "a") for o in ("--output", "--error"))
    tasks.append(subprocess.Popen(args, env=env, stdout=out, stderr=err))
sys.exit(max(task.wait() for task in tasks))
"""
FAKE_SACCT = """#!{python}
import os, pathlib, sys
state = pathlib.Path(os.environ["FAKE_SLURM"])
print("JobID|State|NodeList")
for job_id in (sys.argv[i + 1] for i, arg in enumerate(sys.argv) if arg == "-j"):
    if (state / f"{job_id}.pid").exists():
        running = pathlib.Path("/proc", (state / f"{job_id}.pid").read_text()).exists()
        print(f"{job_id}|{'RUNNING' if running else 'COMPLETED'}|node1")
"""

# A harness killed once it has submitted the suite's jobs (before it waits for any)
FIRST_HARNESS = """
import os, sys
from benchmarks.harness import slurm
from benchmarks.harness.store import ResultsStore
from benchmarks.harness.suite import expand_jobs, load_suite
suite, ran, fake_job = load_suite(sys.argv[1]), sys.argv[2], sys.argv[3]
jobs = {job.job_id: job for job in expand_jobs(suite)}
slurm._wait = lambda *args: os._exit(0)
with ResultsStore(suite.work_dir / "results.sqlite") as store:
    store.add_jobs((job.job_id, suite.name, job.checkpoint.label, job.benchmark, job.config, str(job.work_dir))
                   for job in jobs.values())
    slurm.run_on_scheduler(store, jobs, suite, lambda job: [
        sys.executable, "-c", fake_job, str(job.work_dir), ran, "fail" if "broken" in job.checkpoint.label else "ok"])
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """sbatch, srun and sacct stand-ins first on PATH; returns the folder where sbatch keeps each job's script."""
    tools, state = tmp_path / "slurm-bin", tmp_path / "slurm-state"
    tools.mkdir()
    state.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("sacct", FAKE_SACCT)):
        (tools / name).write_text(text.replace("{python}", sys.executable))
        (tools / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(state))
    return state


def test_a_killed_harness_leaves_its_jobs_to_slurm_and_the_next_one_waits_for_them(tmp_path, fake_jobs, fake_slurm,
                                                                                   capsys):
    text = write_suite(tmp_path, ["DropPos 200ep", "broken", "MAE 200ep"]).read_text()
    suite_path = tmp_path / "suite.yaml"  # no cluster: submitit picks SLURM, having found srun
    suite_path.write_text(text.replace("  cluster: local\n", "  account: vision\n  constraint: a100\n"
                                                               "  cpus_per_task: 16\n  mem_gb: 64\n"))
    python(FIRST_HARNESS, suite_path, fake_jobs, FAKE_JOB)
    scripts = {path.stem: path.read_text() for path in fake_slurm.glob("*.sbatch")}
    before = records(suite_path)
    assert {r.external_id for r in before.values()} == set(scripts) and len(scripts) == 3
    assert {r.state for r in before.values()} == {"running"}
    sbatch = scripts[before["MAE 200ep"].external_id]
    for line in ("--job-name=mae-200ep.seg.", "--time=60", "--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=8",
                 "--cpus-per-task=16", "--mem=64GB", "--partition=gpu", "--account=vision", "--constraint=a100"):
        assert f"#SBATCH {line}" in sbatch

    assert main(["bench", "run", str(suite_path)]) == 2
    assert len(list(fake_slurm.glob("*.sbatch"))) == 3  # none submitted again
    assert capsys.readouterr().out.count("waiting again for SLURM job") == 3
    after = records(suite_path)
    assert {label: (r.state, r.attempts, r.external_id) for label, r in after.items()} == {
        label: ("failed" if label == "broken" else "done", 1, r.external_id) for label, r in before.items()}
    assert after["MAE 200ep"].metrics == {"mIoU": 41.5, "aAcc": 80.25}
    assert after["broken"].log_tail.splitlines()[-2:] == ["CUDA out of memory (pretend)", "RuntimeError: exit status 1"]


def test_a_slurm_job_runs_torchrun_with_its_gpus_and_posacc_in_one_process():
    checkpoint = CheckpointEntry("c", "c.pth")
    seg = Job("c.seg.1", checkpoint, "seg", ("seg", "train", "upernet"), Path("w"))
    posacc = Job("c.posacc.1", checkpoint, "posacc", ("posacc", "c.pth"), Path("w"))
    backend = {"type": "slurm", "timeout_min": 60, "gpus": 4}
    assert job_command(seg, backend) == [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                         "--nproc_per_node=4", "-m", "benchmarks.cli", "seg", "train", "upernet"]
    assert job_command(posacc, backend) == [sys.executable, "-m", "benchmarks.cli", "posacc", "c.pth"]


@pytest.mark.parametrize(("old", "new", "line", "message"), [
    ("  gpus: 8", "  gpus: 0", 7, "backend.gpus must be a positive integer"),
    ("  gpus: 8", "  gpus: 8\n  nodes: 0", 8, "backend.nodes must be a positive integer"),
    ("  timeout_min: 60", "  timeout_min: 1.5", 6, "backend.timeout_min must be a positive integer"),
    ("  timeout_min: 60", "  timeout_min: true", 6, "backend.timeout_min must be a positive integer"),
    ("  gpus: 8", "  gpus: 8\n  mem_gb: lots", 8, "backend.mem_gb must be a positive number"),
    ("  partition: gpu", "  partition: [gpu, cpu]", 8, "backend.partition must be a non-empty string"),
    ("  cluster: local", "  cluster: pbs", 9, "unknown submitit cluster 'pbs'"),
    ("  gpus: 8", "  gpus: 8\n  partitions: gpu", 8, "unknown key 'partitions' in the slurm backend"),
    ("  timeout_min: 60\n", "", 5, "the slurm backend needs 'timeout_min'"),
    ("  type: slurm", "  type: sge", 5, "unknown backend 'sge'"),
    ("  type: slurm", "  type: torchrun", 6, "unknown key 'timeout_min' in the torchrun backend"),
])
def test_bad_slurm_settings_name_the_line(tmp_path, old, new, line, message):
    text = write_suite(tmp_path, ["a"]).read_text()
    assert old in text
    (tmp_path / "suite.yaml").write_text(text.replace(old, new))
    with pytest.raises(SuiteError, match=rf"suite\.yaml:{line}: {message}"):
        load_suite(tmp_path / "suite.yaml")


def test_a_good_slurm_backend_is_read_as_written(tmp_path):
    path = write_suite(tmp_path, ["a"], cluster="debug")
    path.write_text(path.read_text().replace("  gpus: 8\n", "  gpus: 8\n  nodes: 4\n"))
    assert load_suite(path).backend == {"type": "slurm", "timeout_min": 60, "gpus": 8, "nodes": 4, "partition": "gpu",
                                        "cluster": "debug"}


ORDERED_JOB = """
import json, pathlib, sys, time
work_dir, ran = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
if work_dir.name.split(".")[2] == "finetune":
    time.sleep(1.0)  # run at the same time, the probe would finish first
with open(ran, "a") as out:
    out.write(work_dir.name.split(".")[2] + "\\n")
work_dir.mkdir(parents=True, exist_ok=True)
(work_dir / "metrics.json").write_text(json.dumps({"last": {"top1": 50.0}}))
"""


def test_a_job_that_reads_another_jobs_model_is_submitted_after_it(tmp_path, monkeypatch):
    ran = tmp_path / "ran.txt"
    monkeypatch.setattr(harness_run, "job_command",
                        lambda job, backend: [sys.executable, "-c", ORDERED_JOB, str(job.work_dir), str(ran)])
    monkeypatch.setattr(slurm, "POLL_S", 0.05)
    text = SUITE.format(work_dir=tmp_path / "bench", cluster="local",
                        checkpoints=json.dumps([{"label": "a", "random_init": True}]))
    text = text.replace("{ade: /data/ade}", "{imagenet: /data/in1k}").replace(
        "  - {name: seg, config: upernet_tiny_synth}",
        "  - {name: cls.posprobe, config: posprobe_tiny_synth}\n"
        "  - {name: cls.finetune, config: finetune_tiny_synth}\n"
        "  - {name: cls.posprobe_finetuned, config: posprobe_tiny_synth}")
    text = text.replace('"random_init": true}', '"random_init": true, "benchmarks": '
                                                 '["cls.finetune", "cls.posprobe_finetuned"]}')
    (tmp_path / "suite.yaml").write_text(text)
    assert main(["bench", "run", str(tmp_path / "suite.yaml")]) == 0
    assert ran.read_text().splitlines() == ["finetune", "posprobe_finetuned"]  # the second wave after the first
    with ResultsStore(store_path(load_suite(tmp_path / "suite.yaml"))) as store:
        assert [(r.benchmark, r.state) for r in store.jobs()] == [("cls.finetune", "done"),
                                                                  ("cls.posprobe_finetuned", "done")]


def test_a_two_node_job_trains_once_over_both_nodes(tmp_path, fake_slurm, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(slurm, "POLL_S", 0.5)
    synthesize(tmp_path / "data", num_images=40, size=64, seed=0)  # 32 train images
    suite = tmp_path / "suite.yaml"
    suite.write_text(textwrap.dedent(f"""
        name: two-nodes
        work_dir: {tmp_path / "bench"}
        synthetic: true
        backend: {{type: slurm, nodes: 2, gpus: 1, timeout_min: 30}}
        data: {{imagenet: {tmp_path / "data" / "imagenet"}}}
        checkpoints: [{{label: random init, random_init: true}}]
        benchmarks:
          - name: cls.finetune
            config: finetune_tiny_synth
            overrides: {{model.img_size: 64, schedule.epochs: 2, batch_size: 8, effective_batch: 16}}
        """))
    assert main(["bench", "run", str(suite)]) == 0
    (script,) = fake_slurm.glob("*.sbatch")
    assert "#SBATCH --nodes=2" in script.read_text() and "#SBATCH --ntasks-per-node=1" in script.read_text()
    (job,) = ResultsStore(tmp_path / "bench" / "results.sqlite").jobs()
    assert job.state == "done" and job.attempts == 1 and list(job.metrics) == ["ft_top1"]
    work_dir = Path(job.work_dir)
    first, second = (work_dir / "job.log").read_text(), (work_dir / "job.node1.log").read_text()
    assert "--nnodes=2 --node_rank=0 --master_addr=localhost" in first
    assert "--nnodes=2 --node_rank=1 --master_addr=localhost" in second
    assert "Distributed training: True" in first
    (run_dir,) = [path for path in work_dir.iterdir() if path.is_dir()]
    assert sorted(path.stem.rsplit("_", 1)[-1] for path in run_dir.glob("*.log")) == ["rank0", "rank1"]
    assert [row["epoch"] for row in json.loads((work_dir / "metrics.json").read_text())["history"]] == [1, 2]
    assert sorted(path.name for path in work_dir.glob("epoch_*.pth")) == ["epoch_2.pth"]


def test_each_node_gets_its_part_of_the_command():
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8", "-m",
                "benchmarks.cli", "seg", "train", "upernet_vit_base_80k"]
    assert slurm.node_command(torchrun, 0, ["gpu7"], "12345") == torchrun  # one node: torchrun's own rendezvous
    second = slurm.node_command(torchrun, 1, ["gpu7", "gpu8", "gpu9"], "12345")
    port = second[6].removeprefix("--master_port=")
    assert second == [sys.executable, "-m", "torch.distributed.run", "--nnodes=3", "--node_rank=1",
                      "--master_addr=gpu7", f"--master_port={port}", "--nproc_per_node=8", "-m", "benchmarks.cli",
                      "seg", "train", "upernet_vit_base_80k"]
    assert 20000 <= int(port) < 40000 and slurm.node_command(torchrun, 0, ["gpu7", "gpu8"], "12345")[6] == second[6]
    assert slurm.node_command(torchrun, 0, ["gpu7", "gpu8"], "12346")[6] != second[6], "another job, another port"
    posacc = [sys.executable, "-m", "benchmarks.cli", "posacc", "droppos.pth"]
    assert slurm.node_command(posacc, 0, ["gpu7", "gpu8"], "1") == posacc
    assert slurm.node_command(posacc, 1, ["gpu7", "gpu8"], "1") is None, "a one-process evaluation runs on one node"

"""The docker backend: each job in `docker run` with the suite's folders mounted at their own paths, the current
folder as working directory and this user's ids, one job after another; a fake docker executable records its
arguments and runs the command after the image here, so fake jobs go through end to end."""
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from benchmarks.cli import main
from benchmarks.harness import run as harness_run
from benchmarks.harness.run import job_command, store_path
from benchmarks.harness.store import ResultsStore
from benchmarks.harness.suite import CheckpointEntry, Job, SuiteError, load_suite

IMAGE = "droppos-bench:test"

FAKE_DOCKER = """#!{python}
import json, subprocess, sys
args = sys.argv[1:]
with open({record!r}, "a") as out:
    out.write(json.dumps(args) + "\\n")
sys.exit(subprocess.run(args[args.index({image!r}) + 1:], cwd=args[args.index("-w") + 1]).returncode)
"""

FAKE_JOB = """
import json, pathlib, sys
work_dir = pathlib.Path(sys.argv[1])
print("training ... step 1 of 1")
if sys.argv[2] == "fail":
    sys.exit("CUDA out of memory (pretend)")
(work_dir / "metrics.json").write_text(json.dumps({"last": {"mIoU": 41.5, "aAcc": 80.25}}))
"""


@pytest.fixture
def layout(tmp_path, monkeypatch):
    """A project folder (the current one) holding the work dir, nested data roots, a checkpoint in a folder of its
    own and one linked from a third folder, and a fake docker that runs the jobs here."""
    root = tmp_path.resolve()
    for folder in ("project", "data/ade", "ckpts", "links", "store"):
        (root / folder).mkdir(parents=True)
    (root / "ckpts" / "droppos.pth").write_bytes(b"x")
    (root / "store" / "mae.pth").write_bytes(b"y")
    (root / "links" / "mae.pth").symlink_to(root / "store" / "mae.pth")
    docker = root / "fake-docker"
    docker.write_text(FAKE_DOCKER.format(python=sys.executable, record=str(root / "docker-args.jsonl"), image=IMAGE))
    docker.chmod(0o755)
    monkeypatch.chdir(root / "project")
    monkeypatch.setattr(harness_run, "job_command", lambda job, backend: [
        sys.executable, "-c", FAKE_JOB, str(job.work_dir), "fail" if "broken" in job.checkpoint.label else "ok"])
    return root


def write_suite(root, backend):
    path = root / "suite.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: docker-suite
        work_dir: bench
        data: {{imagenet: {root / "data"}, ade: {root / "data" / "ade"}}}
        backend: {json.dumps(backend)}
        checkpoints:
          - {{label: DropPos, path: {root / "ckpts" / "droppos.pth"}}}
          - {{label: MAE, path: {root / "links" / "mae.pth"}}}
          - {{label: broken, random_init: true}}
        benchmarks:
          - {{name: seg, config: upernet_tiny_synth}}
        """))
    return path


def test_jobs_run_in_the_image_with_the_suite_folders_mounted(layout):
    backend = {"type": "docker", "image": IMAGE, "gpus": 2, "docker": str(layout / "fake-docker")}
    suite_path = write_suite(layout, backend)
    assert main(["bench", "run", str(suite_path)]) == 2
    with ResultsStore(store_path(load_suite(suite_path))) as store:
        records = {record.checkpoint: record for record in store.jobs()}
    assert {label: r.state for label, r in records.items()} == {"DropPos": "done", "MAE": "done", "broken": "failed"}
    assert records["MAE"].metrics == {"mIoU": 41.5, "aAcc": 80.25}
    assert Path(records["MAE"].work_dir, "metrics.json").is_file()  # under project/bench, written "in the container"
    assert records["broken"].log_tail.splitlines()[-2:] == ["CUDA out of memory (pretend)",
                                                           "RuntimeError: exit status 1"]

    calls = [json.loads(line) for line in (layout / "docker-args.jsonl").read_text().splitlines()]
    assert len(calls) == 3
    for args, record in zip(calls, records.values(), strict=True):
        image = args.index(IMAGE)
        assert args[:5] == ["run", "--rm", "--ipc=host", "--gpus", "all"]
        mounts = [args[i + 1] for i, arg in enumerate(args[:image]) if arg == "-v"]
        # data/ade sits inside data, the work dir inside the project: each mounted once, with its parent
        assert mounts == [f"{layout / f}:{layout / f}" for f in ("ckpts", "data", "links", "project", "store")]
        assert args[image - 6:image] == ["-w", str(layout / "project"), "--user", f"{os.getuid()}:{os.getgid()}",
                                         "-e", "PYTHONUNBUFFERED=1"]
        assert args[image + 1:image + 3] == [sys.executable, "-c"] and args[image + 4] == record.work_dir


def test_existing_absolute_paths_in_overrides_are_mounted(layout):
    """A benchmark's own data root and a file a checkpoint's override names are mounted; a relative or missing path
    is not (the current folder holds the first, nothing can be read from the second)."""
    (layout / "aligned").mkdir()
    (layout / "extra").mkdir()
    (layout / "extra" / "head.pth").write_bytes(b"z")
    suite_path = write_suite(layout, {"type": "docker", "image": IMAGE, "docker": str(layout / "fake-docker")})
    text = suite_path.read_text().replace(
        "{name: seg, config: upernet_tiny_synth}",
        f"{{name: seg, config: upernet_tiny_synth, overrides: {{data.root: {layout / 'aligned'}, "
        f"note: relative/x, missing: {layout / 'nowhere'}}}}}")
    droppos = f"path: {layout / 'ckpts' / 'droppos.pth'}"
    text = text.replace(f"{droppos}}}", f"{droppos}, overrides: {{seg: {{head: {layout / 'extra' / 'head.pth'}}}}}}}")
    suite_path.write_text(text)
    mounts = harness_run.docker_mounts(load_suite(suite_path))
    assert mounts == [layout / f for f in ("aligned", "ckpts", "data", "extra", "links", "project", "store")]


def test_no_gpus_no_gpu_flag(layout):
    suite_path = write_suite(layout, {"type": "docker", "image": IMAGE, "docker": str(layout / "fake-docker")})
    main(["bench", "run", str(suite_path)])
    calls = [json.loads(line) for line in (layout / "docker-args.jsonl").read_text().splitlines()]
    assert len(calls) == 3 and not any("--gpus" in args for args in calls)


def test_in_the_container_jobs_run_the_image_entry_point_and_torchrun_for_several_gpus():
    checkpoint = CheckpointEntry("c", "c.pth")
    seg = Job("c.seg.1", checkpoint, "seg", ("seg", "train", "upernet"), Path("w"))
    posacc = Job("c.posacc.1", checkpoint, "posacc", ("posacc", "c.pth"), Path("w"))
    several = {"type": "docker", "image": IMAGE, "docker": "docker", "gpus": 4}
    assert job_command(seg, several) == ["torchrun", "--standalone", "--nproc_per_node=4", "-m", "benchmarks.cli",
                                         "seg", "train", "upernet"]
    assert job_command(posacc, several) == ["droppos-bench", "posacc", "c.pth"]
    assert job_command(seg, {**several, "gpus": 1}) == ["droppos-bench", "seg", "train", "upernet"]


@pytest.mark.parametrize(("backend", "message"), [
    ({"type": "docker", "gpus": 1}, "the docker backend needs 'image'"),
    ({"type": "docker", "image": ""}, "backend.image must be a non-empty string"),
    ({"type": "docker", "image": IMAGE, "docker": 3}, "backend.docker must be a non-empty string"),
    ({"type": "docker", "image": IMAGE, "partition": "gpu"}, "unknown key 'partition' in the docker backend"),
    ({"type": "torchrun", "image": IMAGE}, "unknown key 'image' in the torchrun backend"),
])
def test_bad_docker_settings_name_the_line(layout, backend, message):
    with pytest.raises(SuiteError, match=rf"suite\.yaml:4: {message}"):
        load_suite(write_suite(layout, backend))


def test_the_docker_executable_defaults_to_docker(layout):
    assert load_suite(write_suite(layout, {"type": "docker", "image": IMAGE})).backend == {
        "type": "docker", "image": IMAGE, "docker": "docker"}

"""Suite files: errors that name the line, and the expansion into jobs."""
import hashlib
import json
import textwrap
from pathlib import Path

import pytest

from backbone import FORMATS
from benchmarks.harness.reference import ReportedRow
from benchmarks.harness.suite import SuiteError, expand_jobs, load_suite, resolve_suite
from engine import load_config
from pretrain.train import CONFIGS_DIR as PRETRAIN_CONFIGS


def write(tmp_path, text):
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "droppos.pth"
    path.write_bytes(b"x")
    return path


GOOD = """
name: small
data: {{imagenet: /data/in1k, ade: /data/ade}}
checkpoints:
  - label: DropPos 200ep (ours)
    path: {ckpt}
    epochs: 200
    reference: "tab6:DropPos 200"
    overrides: {{seg: {{optim.lr: 0.0007}}}}
  - label: random init
    random_init: true
benchmarks:
  - name: seg
    config: upernet_vit_base_80k
    overrides: {{schedule.iterations: 100, data.scale: [2048, 512]}}
  - name: posacc
"""


def test_a_good_suite_expands_into_jobs(tmp_path, checkpoint):
    suite = load_suite(write(tmp_path, GOOD.format(ckpt=checkpoint)))
    jobs = expand_jobs(suite)
    assert [(j.checkpoint.label, j.benchmark) for j in jobs] == [
        ("DropPos 200ep (ours)", "seg"), ("DropPos 200ep (ours)", "posacc"), ("random init", "seg")]
    seg = jobs[0]
    assert seg.job_id.startswith("droppos-200ep-ours.seg.") and seg.work_dir.parent == suite.work_dir
    assert seg.args == ("seg", "train", "upernet_vit_base_80k", "data.root=/data/ade", "schedule.iterations=100",
                        "data.scale=(2048,512)", "optim.lr=0.0007", f"ckpt={checkpoint}", f"work_dir={seg.work_dir}")
    assert jobs[1].args[:4] == ("posacc", str(checkpoint), "--data", "/data/in1k")
    assert not any(a.startswith("ckpt=") for a in jobs[2].args)
    again = expand_jobs(load_suite(write(tmp_path, GOOD.format(ckpt=checkpoint))))
    assert [j.job_id for j in again] == [j.job_id for j in jobs]  # ids are stable
    changed = expand_jobs(load_suite(write(tmp_path, GOOD.format(ckpt=checkpoint).replace("100,", "200,"))))
    assert changed[0].job_id != seg.job_id  # a changed recipe is a new job


def test_text_override_values_expand_environment_variables(tmp_path, checkpoint, monkeypatch):
    """As the suite's paths do: `data.root: $DATA/...` in a benchmark's or a checkpoint's overrides."""
    monkeypatch.setenv("DATA", "/data/here")
    text = GOOD.format(ckpt=checkpoint).replace("{optim.lr: 0.0007}", "{optim.lr: 0.0007, data.root: $DATA/ade3}")
    text = text.replace("{schedule.iterations: 100,", "{schedule.iterations: 100, data.root: $DATA/ade2,")
    seg, _, random_seg = expand_jobs(load_suite(write(tmp_path, text)))
    assert "data.root=/data/here/ade3" in seg.args and "optim.lr=0.0007" in seg.args  # the checkpoint's wins
    assert "data.root=/data/here/ade2" in random_seg.args and "schedule.iterations=100" in random_seg.args


@pytest.mark.parametrize(("old", "new", "line", "message"), [
    ("    epochs: 200", "    epoch: 200", 6, "unknown key 'epoch' in a checkpoint"),
    ("  - name: posacc", "  - name: posac", 15, "unknown benchmark 'posac'"),
    ("name: small", "name: small\ncolour: red", 2, "unknown key 'colour' in the suite"),
    ('"tab6:DropPos 200"', '"tab6:DropPos 300"', 7, "DropPos 300"),
    ("    random_init: true", "    path: missing.pth", 10, "checkpoint file not found: missing.pth"),
    ("{seg: {optim.lr", "{segm: {optim.lr", 8, "overrides for unknown benchmark 'segm'"),
    ("ade: /data/ade", "coco: /data/coco", 12, "needs data.ade"),
    ("    config: upernet_vit_base_80k\n", "", 12, "needs a 'config'"),
])
def test_errors_name_the_line(tmp_path, checkpoint, old, new, line, message):
    text = GOOD.format(ckpt=checkpoint)
    assert old in text
    path = write(tmp_path, text.replace(old, new))
    with pytest.raises(SuiteError, match=rf"suite\.yaml:{line}: .*{message}"):
        load_suite(path)


def test_duplicate_labels_and_bad_yaml(tmp_path, checkpoint):
    text = GOOD.format(ckpt=checkpoint).replace("label: random init", "label: DropPos 200ep (ours)")
    with pytest.raises(SuiteError, match="labels must differ"):
        load_suite(write(tmp_path, text))
    with pytest.raises(SuiteError, match="not valid YAML"):
        load_suite(write(tmp_path, "name: [unclosed"))
    with pytest.raises(FileNotFoundError, match="suite file not found"):
        load_suite(tmp_path / "nowhere.yaml")


@pytest.mark.parametrize("name", ["paper-table6", "ablations", "position-methods", "zoo-vit-base",
                                  "zoo-vit-base-frozen", "check-dinov2-extraction"])
def test_shipped_suites_are_valid_once_their_checkpoints_exist(name, tmp_path, monkeypatch):
    path = resolve_suite(name)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SuiteError, match="checkpoint file not found"):
        load_suite(path)
    base = resolve_suite("zoo-vit-base")  # zoo-vit-base-frozen's checkpoints_from
    for line in path.read_text().splitlines() + base.read_text().splitlines():
        if line.strip().startswith("path:"):
            checkpoint = tmp_path / line.split(":", 1)[1].strip()
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.touch()
    suite = load_suite(path)
    jobs = expand_jobs(suite)
    unreferenced = ("MAE+", "AdPE", "BEiT v2", "CAE", "DeiT III", "DINOv2", "CLIP")  # no row of the paper's tables
    assert all(c.reference for c in suite.checkpoints if not any(part in c.label for part in unreferenced))
    assert len(jobs) == sum(len(c.benchmarks or suite.benchmarks) for c in suite.checkpoints)
    if name == "zoo-vit-base":  # every family by its format name, each through the three recipes
        assert {c.format for c in suite.checkpoints} == {
            "droppos", "mae", "mocov3", "dino", "ibot", "beit", "simmim", "beitv2", "cae", "deit3"}
        assert {c.format for c in suite.checkpoints} <= set(FORMATS) and len(jobs) == 10 * 3
    elif name == "zoo-vit-base-frozen":  # zoo-vit-base's ten, DINOv2 twice and CLIP, each through the three
        assert [c.label for c in suite.checkpoints[:10]] == [c.label for c in load_suite(base).checkpoints]
        assert [c.format for c in suite.checkpoints[10:]] == ["dinov2", "dinov2", "clip"] and len(jobs) == 13 * 3
        assert {b.name for b in suite.benchmarks} == {"cls.knn", "cls.linear", "seg.linear"}
    elif name == "check-dinov2-extraction":  # the released head scores, nothing is trained
        assert [j.benchmark for j in jobs] == ["cls.linear", "seg.linear"]
        assert "linear.head=checkpoints/zoo/dinov2_vitb14_linear4_head.pth" in jobs[0].args
        assert "head=checkpoints/zoo/dinov2_vitb14_ade20k_linear_head.pth" in jobs[1].args
    elif name == "paper-table6":
        lrs = {j.checkpoint.label: next((a for a in j.args if a.startswith("optim.lr=")), None)
               for j in jobs if j.benchmark == "seg"}
        assert lrs == {"DropPos 200ep (ours)": None, "MAE 200ep (ours)": "optim.lr=0.0001",
                       "MoCo v3 (release)": "optim.lr=0.0001", "MAE (release)": "optim.lr=0.0001",
                       "DropPos 800ep (release)": None}  # None: the config's 7e-4 for DropPos
    elif name == "position-methods":  # each encoder where a shipped pre-training config writes it
        assert len(jobs) == 15
        for checkpoint in suite.checkpoints:
            config = Path(checkpoint.path).parent.name
            assert (PRETRAIN_CONFIGS / f"{config}.py").is_file(), config
            assert load_config(PRETRAIN_CONFIGS / f"{config}.py").schedule.epochs == checkpoint.epochs
    else:
        assert len(suite.checkpoints) == 16 and {b.name for b in suite.benchmarks} == {
            "cls.finetune", "posacc", "det", "seg"}


def test_a_named_format_reaches_the_jobs_that_read_the_file(tmp_path, checkpoint):
    """`format:` is passed on as ckpt_format to the jobs that read the checkpoint file, not to a job that reads
    another job's training run (the fine-tuned model of Tab. 7's second probe)."""
    suite_text = GOOD.format(ckpt=checkpoint).replace("    epochs: 200\n", "    epochs: 200\n    format: beit\n", 1)
    classification = ("benchmarks:\n  - {name: cls.finetune, config: finetune_tiny_synth}\n"
                      "  - {name: cls.posprobe_finetuned, config: posprobe_tiny_synth}\n")
    suite_text = suite_text.replace("benchmarks:\n", classification, 1)
    jobs = {(j.checkpoint.label, j.benchmark): j for j in expand_jobs(load_suite(write(tmp_path, suite_text)))}
    assert "ckpt_format=beit" in jobs["DropPos 200ep (ours)", "cls.finetune"].args
    assert "ckpt_format=beit" in jobs["DropPos 200ep (ours)", "seg"].args
    assert not any(a.startswith("ckpt_format=") for a in jobs["DropPos 200ep (ours)", "cls.posprobe_finetuned"].args)
    assert not any(a.startswith("ckpt_format=") for a in jobs["random init", "seg"].args)


def test_a_rewritten_file_that_an_override_names_is_a_new_job(tmp_path, checkpoint):
    """A released head named in a checkpoint's overrides is part of the job's identity; a job without such a file
    keeps the id it had before files in overrides counted."""
    head = tmp_path / "head.pth"
    head.write_bytes(b"head")
    text = GOOD.format(ckpt=checkpoint).replace("{optim.lr: 0.0007}", f"{{optim.lr: 0.0007, head: {head}}}")
    path = write(tmp_path, text)
    before = expand_jobs(load_suite(path))
    head.write_bytes(b"another head")
    after = expand_jobs(load_suite(path))
    assert before[0].job_id != after[0].job_id  # DropPos's seg job names the head
    assert [j.job_id for j in before[1:]] == [j.job_id for j in after[1:]]
    plain = expand_jobs(load_suite(write(tmp_path, GOOD.format(ckpt=checkpoint))))[0]
    identity = [list(plain.args[:-1]), str(checkpoint), "auto", [checkpoint.stat().st_size,
                                                                 checkpoint.stat().st_mtime_ns]]
    assert plain.job_id.endswith(hashlib.sha1(json.dumps(identity).encode()).hexdigest()[:8])


def test_a_rewritten_checkpoint_is_a_new_job(tmp_path, checkpoint):
    path = write(tmp_path, GOOD.format(ckpt=checkpoint))
    before = expand_jobs(load_suite(path))[0].job_id
    checkpoint.write_bytes(b"retrained")
    assert expand_jobs(load_suite(path))[0].job_id != before


def test_the_fine_tuned_probe_reads_the_fine_tuning_job_of_its_checkpoint(tmp_path, checkpoint):
    text = GOOD.format(ckpt=checkpoint).replace("{imagenet: /data/in1k, ade: /data/ade}", "{imagenet: /data/in1k}")
    text = text[:text.index("benchmarks:")] + textwrap.dedent("""
        benchmarks:
          - {name: cls.finetune, config: finetune_tiny_synth}
          - {name: cls.posprobe_finetuned, config: posprobe_tiny_synth}
        """).lstrip("\n")
    jobs = expand_jobs(load_suite(write(tmp_path, text)))
    finetune, probe = jobs[0], jobs[1]
    assert (finetune.benchmark, probe.benchmark) == ("cls.finetune", "cls.posprobe_finetuned")
    assert f"ckpt={finetune.work_dir}" in probe.args and probe.after == finetune.job_id and finetune.after is None
    assert jobs[3].after == jobs[2].job_id  # random init: its own fine-tuned model
    first, second = "cls.finetune, config", "cls.posprobe_finetuned, config"
    swapped = text.replace(first, "X").replace(second, first).replace("X", second)
    with pytest.raises(SuiteError, match=r"suite\.yaml:12: .*list 'cls.finetune' before it"):
        load_suite(write(tmp_path, swapped))


def test_chance_levels_are_read_by_report_metric(tmp_path, checkpoint):
    text = GOOD.format(ckpt=checkpoint)
    assert load_suite(write(tmp_path, text)).chance == {}
    suite = load_suite(write(tmp_path, text + "chance: {mIoU: 0.66, position: 6.25, linprobe_top1: 25}\n"))
    assert suite.chance == {"mIoU": 0.66, "position": 6.25, "linprobe_top1": 25.0}


@pytest.mark.parametrize(("chance", "line", "message"), [
    ("chance:\n  ft_top1: 25.0\n  top1: 25.0\n", 18, "unknown key 'top1' in chance"),
    ("chance:\n  ft_top1: 25.0\n  position: 100.5\n", 18, "chance.position must be a percent from 0 to 100"),
    ("chance: {APb: -1}\n", 16, "chance.APb must be a percent from 0 to 100"),
    ("chance: {mIoU: yes}\n", 16, "chance.mIoU must be a percent"),
    ("chance: {mIoU: .nan}\n", 16, "chance.mIoU must be a percent"),
    ("chance: [ft_top1]\n", 16, "chance .* must be a mapping"),
])
def test_chance_errors_name_the_line(tmp_path, checkpoint, chance, line, message):
    with pytest.raises(SuiteError, match=rf"suite\.yaml:{line}: {message}"):
        load_suite(write(tmp_path, GOOD.format(ckpt=checkpoint) + chance))


REPORTED = """
    reported:
      - {source: "DINO (Caron et al., ICCV 2021), Tab. 2", knn_top1: 76.1, linear_top1: 78.2}
      - source: "iBOT (Zhou et al., ICLR 2022), Tab. 3"
        ft_top1: 82.8
"""


def with_reported(checkpoint, reported):
    return GOOD.format(ckpt=checkpoint).replace('    reference: "tab6:DropPos 200"\n',
                                                '    reference: "tab6:DropPos 200"\n' + reported.strip("\n") + "\n")


def test_reported_numbers_are_read_with_their_source(tmp_path, checkpoint):
    suite = load_suite(write(tmp_path, with_reported(checkpoint, REPORTED)))
    assert suite.checkpoints[0].reported == (
        ReportedRow("DINO (Caron et al., ICCV 2021), Tab. 2", {"knn_top1": 76.1, "linear_top1": 78.2}),
        ReportedRow("iBOT (Zhou et al., ICLR 2022), Tab. 3", {"ft_top1": 82.8}))
    assert suite.checkpoints[1].reported == ()


@pytest.mark.parametrize(("reported", "line", "message"), [
    ("    reported:\n      - {knn_top1: 76.1}\n", 9, "a reported entry needs a 'source'"),
    ("    reported:\n      - {source: DINO}\n", 9, "reported entry 'DINO' gives no metric"),
    ("    reported:\n      - {source: DINO, knn: 76.1}\n", 9, "unknown key 'knn' in a reported entry"),
    ("    reported:\n      - {source: DINO, knn_top1: 761}\n", 9, "reported.knn_top1 must be a percent"),
    ("    reported: {source: DINO}\n", 8, "reported must be a non-empty list"),
])
def test_reported_errors_name_the_line(tmp_path, checkpoint, reported, line, message):
    with pytest.raises(SuiteError, match=rf"suite\.yaml:{line}: {message}"):
        load_suite(write(tmp_path, with_reported(checkpoint, reported)))


def test_checkpoints_from_takes_another_suites_checkpoints_and_data(tmp_path, checkpoint):
    base = write(tmp_path, GOOD.format(ckpt=checkpoint))
    other = tmp_path / "frozen.yaml"
    other.write_text(f"name: frozen\ncheckpoints_from: {base}\nbenchmarks:\n"
                     "  - {name: cls.knn, config: knn_vit_base}\n")
    suite = load_suite(other)
    assert [c.label for c in suite.checkpoints] == ["DropPos 200ep (ours)", "random init"]
    assert suite.data == {"imagenet": "/data/in1k", "ade": "/data/ade"} and suite.name == "frozen"
    knn = [job.args for job in expand_jobs(suite)]
    assert knn[0][:3] == ("cls", "knn", "knn_vit_base") and "data.root=/data/in1k" in knn[0]
    more = "checkpoints:\n  - {label: random init, random_init: true}\n"
    other.write_text(other.read_text() + more)
    with pytest.raises(SuiteError, match=r"frozen\.yaml:6: checkpoint labels must differ: \['random init'\]"):
        load_suite(other)
    other.write_text(f"name: frozen\ncheckpoints_from: {other}\nbenchmarks:\n  - {{name: cls.knn, config: k}}\n")
    with pytest.raises(SuiteError, match=r"frozen\.yaml:2: checkpoints_from names this suite itself"):
        load_suite(other)
    other.write_text("name: frozen\ncheckpoints_from: nowhere\nbenchmarks:\n  - {name: cls.knn, config: k}\n")
    with pytest.raises(SuiteError, match=r"frozen\.yaml:2: no suite file 'nowhere'"):
        load_suite(other)

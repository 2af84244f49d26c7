"""A file system that refuses a write (read-only, full, a file where a folder should be) stops with one line naming the
path and the reason (exit 2), and the temporary files of killed writes do not pile up. Real mounts, not mocks."""
import contextlib
import gc
import os
import subprocess
import threading
import time
from contextlib import contextmanager

import pytest
import torch

from backbone import build_vit, export_checkpoint
from benchmarks.cli import main
from benchmarks.synthetic import synthesize
from engine.errors import OutputWriteError
from engine.runner import prepare_work_dir
from engine.safe_io import atomic_path, write_json_atomic

PRETRAIN = ["model.img_size=64", "schedule.epochs=2", "batch_size=16", "effective_batch=16"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, num_images=40, size=64, seed=0)
    return root


@contextmanager
def tmpfs(folder, options):
    """A tmpfs mounted on `folder` with `options` (e.g. 'size=64k', 'size=1m,ro'); skips the test where this process
    may not mount (not root, or a container without CAP_SYS_ADMIN)."""
    folder.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or mounted.returncode}): the file system "
                    "error this test checks needs a real read-only or full file system")
    try:
        yield folder
    finally:
        gc.collect()  # a failed torch.save holds its file open until its writer is collected
        # lazily: a failed run's loggers keep their files in the mount open
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def pretrain(data, work_dir):
    return main(["pretrain", "droppos_tiny_synth", f"data.root={data}", f"work_dir={work_dir}", *PRETRAIN])


def error_line(capsys):
    """The one line of the error; mmengine's loggers may add lines of their own before it (pytest closes the streams
    they were built with), never a traceback of the error."""
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("droppos-bench: error: ") and "Error(" not in err and "Errno" not in err, err
    return last


def dead_pid():
    """The pid of a child that has exited (and been reaped)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_work_dir_below_a_file_stops_before_training(data, tmp_path, capsys):
    (tmp_path / "somefile").write_text("not a folder")
    assert pretrain(data, tmp_path / "somefile" / "run") == 2
    err = error_line(capsys)
    assert f"{tmp_path / 'somefile' / 'run'}: cannot create this folder ({tmp_path / 'somefile'} is a file" in err
    with pytest.raises(OutputWriteError, match="is a file, not a folder"):
        write_json_atomic(tmp_path / "somefile" / "metrics.json", {})


def test_a_read_only_work_dir_stops_before_training(data, tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "size=1m,ro") as ro:
        assert pretrain(data, ro / "run") == 2
        assert error_line(capsys).endswith(f"{ro / 'run'}: cannot write (read-only file system)")
        with pytest.raises(OutputWriteError, match="read-only file system"):
            write_json_atomic(ro / "metrics.json", {})


@pytest.mark.parametrize("writer", ["torch", "bytes"])
def test_a_full_disk_names_the_file_and_leaves_no_temporary(tmp_path, writer):
    """torch.save says only 'unexpected pos' on a full disk; a plain write raises ENOSPC: both read the same."""
    with tmpfs(tmp_path / "small", "size=64k") as small:
        with pytest.raises(OutputWriteError) as raised, atomic_path(small / "big.pth") as tmp:
            if writer == "torch":
                torch.save({"w": torch.zeros(100_000)}, tmp)
            else:
                tmp.write_bytes(bytes(200_000))
        assert str(raised.value) == (f"{small}: no space left on device while writing big.pth; free space or "
                                     "choose another folder (work_dir)")
        assert list(small.iterdir()) == []


@pytest.mark.parametrize("out", ["out.safetensors", "out.pth"])
def test_convert_onto_a_full_disk_is_one_line(tmp_path, capsys, out):
    src = export_checkpoint(build_vit("tiny", img_size=32, depth=2), tmp_path / "tiny.safetensors")
    with tmpfs(tmp_path / "small", "size=64k") as small:
        to = ["--to", "timm"] if out.endswith(".pth") else []
        assert main(["convert", str(src), str(small / out), *to]) == 2
        assert f"{small}: no space left on device while writing {out}" in error_line(capsys)
        assert list(small.iterdir()) == []


def test_a_full_disk_while_pretraining_is_one_line(data, tmp_path, capsys):
    """The logs fit in 4 MB, the first checkpoint (weights and AdamW state) does not."""
    with tmpfs(tmp_path / "small", "size=4m") as small:
        assert pretrain(data, small / "run") == 2
        assert f"{small / 'run'}: no space left on device while writing epoch_1.pth" in error_line(capsys)
        assert not list((small / "run").glob(".*.tmp"))


def test_a_disk_that_fills_up_under_mmengines_own_writes_is_one_line(data, tmp_path, capsys):
    """Something else fills the disk once training has started: mmengine's next append to scalars.json (or its log)
    fails, not one of our checkpoint writes (the first one would come after the last epoch)."""
    with tmpfs(tmp_path / "small", "size=4m") as small:
        run = small / "run"
        filler = threading.Thread(target=fill_when_created, args=(run, small / "filler"), daemon=True)
        filler.start()
        assert main(["pretrain", "droppos_tiny_synth", f"data.root={data}", f"work_dir={run}", "model.img_size=64",
                     "schedule.epochs=3", "batch_size=2", "effective_batch=2", "log_interval=1",
                     "checkpoint.interval=3"]) == 2
        filler.join()
        line = error_line(capsys)
        assert "no space left on device while writing" in line and str(run) in line, line
        assert not list(run.glob("epoch_*.pth"))


def fill_when_created(work_dir, filler):
    """Once training logs its first scalars under work_dir, write `filler` until the file system is full."""
    deadline = time.monotonic() + 120
    while not list(work_dir.glob("*/vis_data/scalars.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        while True:
            f.write(bytes(1 << 16))
            f.flush()


def test_stale_temporary_files_of_killed_writes_are_removed_at_the_next_start(tmp_path):
    dead = tmp_path / f".epoch_1.pth.{dead_pid()}.abcd1234.tmp"
    live = tmp_path / f".epoch_2.pth.{os.getpid()}.abcd1234.tmp"
    others = [tmp_path / ".notes.tmp", tmp_path / f".epoch_1.pth.{dead_pid()}.not-hex.tmp", tmp_path / "epoch_1.pth"]
    for path in (dead, live, *others):
        path.write_bytes(b"partial")
    prepare_work_dir(str(tmp_path))
    assert not dead.exists()
    assert live.exists() and all(path.exists() for path in others)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (live, *others))

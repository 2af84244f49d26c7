"""The Dockerfile installs exactly the project's pins (read from pyproject.toml), passes hadolint, and docker/run.sh
starts the image as the user, on all GPUs, with the folders mounted at their own paths."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def pins() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def test_the_image_installs_exactly_the_pinned_dependencies(tmp_path):
    text = DOCKERFILE.read_text()
    assert not re.search(r"pip install (?!-r /tmp/requirements.txt|--no-deps \.)", text)  # no other installs
    assert "==" not in text  # no version of its own
    script = re.search(r'RUN python -c "(.+?)" \\\n\s+> /tmp/requirements.txt', text).group(1)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    listed = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    assert listed == pins() and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.]+", pin.split(";")[0].strip())
                                    for pin in listed)


def test_entrypoint_is_the_console_script_and_the_user_is_not_root():
    text = DOCKERFILE.read_text()
    assert 'ENTRYPOINT ["droppos-bench"]' in text
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["droppos-bench"]
    assert re.search(r"^USER 1000:1000$", text, re.M)
    assert text.index("COPY pyproject.toml") < text.index("pip install -r") < text.index("COPY . .")  # deps first


def test_hadolint_finds_no_errors():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "--failure-threshold", "error", str(DOCKERFILE)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_run_sh_mounts_folders_and_runs_as_the_user(tmp_path):
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    fake.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    env = dict(os.environ, PATH=f"{fake.parent}:{os.environ['PATH']}", DROPPOS_MOUNTS=str(data),
               DROPPOS_IMAGE="droppos-bench:test")
    result = subprocess.run([str(ROOT / "docker" / "run.sh"), "bench", "run", "paper-table6"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, check=True)
    argv = result.stdout.splitlines()
    assert argv[:4] == ["run", "--rm", "--gpus", "all"]
    assert argv[argv.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    assert argv[argv.index("--shm-size") + 1] == "32g"
    mounts = [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]
    assert mounts == [f"{tmp_path}:{tmp_path}", f"{data}:{data}"]
    assert argv[argv.index("-w") + 1] == str(tmp_path)
    assert argv[-4:] == ["droppos-bench:test", "bench", "run", "paper-table6"]


def test_the_build_context_holds_the_packages_and_nothing_else():
    """.dockerignore lets through exactly pyproject's packages (and the two files pip reads): no .venv, data or
    work_dirs go to the daemon, and no package is missing from the image."""
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*", "ignore everything, then let through what the install needs"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    found = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert allowed == {"pyproject.toml", "README.md"} | {pattern.rstrip("*") for pattern in found}
    assert all((ROOT / name).exists() for name in allowed)

"""`pip install .` (not editable) into a fresh virtual environment outside the repository gives a working `unmask`:
the built-in model and everything else the commands read are package data. The dependencies come from the project's
own environment (a path file) so that the test downloads nothing; the package itself only from the wheel built here."""

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_wheel_installed_outside_the_checkout_runs_the_commands(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    [wheel] = wheels.glob("unmask-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the dependencies (torch, ray, ...) from this environment, after the new one's own site-packages: its `unmask`
    # is the wheel's (this environment's editable install is a finder its .pth would add, which a path line does not)
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import unmask, unmask.envs.dllm as d; print(d.BUILTIN_MODEL_DIR)"],
                           capture_output=True, text=True, cwd=elsewhere, check=True).stdout.strip()
    assert where.startswith(site) and (Path(where) / "model.safetensors").is_file()
    unmask = venv / "bin" / "unmask"
    res = subprocess.run([str(unmask), "eval", "num_examples=5", "env.block_length=24", "out_dir=out",
                          "progress=false"], capture_output=True, text=True, cwd=elsewhere, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads((elsewhere / "out" / "eval.json").read_text())["num_examples"] == 5
    helped = subprocess.run([str(unmask), "train", "--help"], capture_output=True, text=True, cwd=elsewhere)
    assert helped.returncode == 0 and "init_from" in helped.stdout

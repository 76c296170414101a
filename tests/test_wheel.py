"""The shipped configs travel in the wheel: `--config ct_spleen` works from an installed package, outside the
source tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# builds a wheel and installs it into a folder: about 6 s here (pip wheel --no-build-isolation)
def test_config_by_name_from_an_installed_wheel(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path / "dist"), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("medseg_attn-*.whl"))
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target",
                              str(tmp_path / "site"), str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    script = ("import medseg_attn, sys; from medseg_attn.config import load_config; "
              "from medseg_attn.config.shipped import resolve_config_path; "
              "print(medseg_attn.__file__); print(resolve_config_path('ct_spleen')); "
              "print(load_config('ct_spleen').data.intensity)")
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env,
                           timeout=300)
    assert shown.returncode == 0, shown.stderr
    module, path, patch = shown.stdout.splitlines()
    assert module.startswith(str(tmp_path / "site")) and path.startswith(str(tmp_path / "site")), shown.stdout
    assert patch == "ct"  # configs/ct_spleen.yaml sets data.intensity: ct (the default is auto)
    cli = subprocess.run([sys.executable, "-m", "medseg_attn.cli", "config", "show", "mr_hippocampus"],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert cli.returncode == 0 and cli.stdout.startswith("# Hippocampus"), cli.stderr

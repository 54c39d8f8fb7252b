"""The Python images' builder stage, executed here without Docker: the Dockerfile's own COPY sources are
copied into a scratch build context and its RUN steps run as written (only /wheels and /opt/venv are
moved under the scratch folder), once per part given as the SERVICE build argument (expanded in COPY,
in the environment of RUN, from where the stage declares it, as Docker does), then the chart's commands
are checked inside the resulting virtualenv.
This catches what hadolint cannot: requirements that do not resolve, a package that does not build, a
console script missing from the image.

Needs PyPI (as a real image build does), so it runs with the integration tests, not `make chart-test`."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import ROOT, find, pod_spec
from .test_images import PYTHON_DOCKERFILE, expand, stage

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("part", ["registry", "query", "aggregator"])
def test_the_builder_stage_should_produce_a_virtualenv_that_runs_the_chart_commands(part, render, tmp_path):
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the images are Python 3.11")
    dockerfile = PYTHON_DOCKERFILE.read_text()
    build_args, declared = {"SERVICE": part}, {}
    context, wheels, venv = tmp_path / "src", tmp_path / "wheels", tmp_path / "venv"
    context.mkdir()
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for name in ("PIP_NO_CACHE_DIR", *build_args):
        env.pop(name, None)
    for kind, args in stage(dockerfile, "builder")["ins"]:
        if kind == "ARG":
            name, _, default = args.partition("=")
            declared[name] = build_args.get(name, default)
        elif kind == "COPY":
            source, dest = expand(args, declared).split()[-2:]
            target = context / dest
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "tests", ".venv"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, target)
        elif kind == "RUN":
            command = args.replace("/wheels", str(wheels)).replace("/opt/venv", str(venv))
            command = re.sub(r"(^|&& )pip ", rf"\1{sys.executable} -m pip ", command)
            command = re.sub(r"(^|&& )python ", rf"\1{sys.executable} ", command)
            proc = subprocess.run(["bash", "-c", command], cwd=context, env={**env, **declared}, capture_output=True,
                                  text=True, timeout=900)
            assert proc.returncode == 0, f"RUN {args}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert (venv / "bin" / "vt-entrypoint").exists()
    assert not (venv / "bin" / "pip").exists(), "pip stays out of the image's virtualenv"

    deployments = {"registry": ["registry"], "query": ["query"], "aggregator": ["worker", "beat"]}[part]
    for name in deployments:
        container = pod_spec(find(render("default"), "Deployment", f"vt-visiontrack-{name}"))["containers"][0]
        program, *rest = container["args"]
        assert (venv / "bin" / program).exists(), f"{program} is not in the {part} image"
        check = ["--check-config", *rest] if program == "gunicorn" else rest[:2] + ["report"]
        run_env = {"PATH": f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin", "VT_ADMIN_TOKENS": "a" * 20,
                   "HOME": str(tmp_path)}
        proc = subprocess.run([str(venv / "bin" / "vt-entrypoint"), str(venv / "bin" / program), *check],
                              env=run_env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{name}: {proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
    # Every Deployment's wait-for-schema init container runs from its own image (the migration Job from the
    # aggregator's): the command is there and the image ships the migrations it waits for.
    for name in deployments:
        init, = pod_spec(find(render("default"), "Deployment", f"vt-visiontrack-{name}"))["initContainers"]
        program, *rest = init["args"]
        proc = subprocess.run([str(venv / "bin" / "vt-entrypoint"), str(venv / "bin" / program), *rest, "--help"],
                              env={"PATH": f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin", "HOME": str(tmp_path)},
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"{name}/{init['name']}: {proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
    shipped = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "from visiontrack import migrate; print(len(migrate.available()))"],
                             env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert shipped.returncode == 0 and int(shipped.stdout) > 0, shipped.stderr

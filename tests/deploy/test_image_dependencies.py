"""What the CUDA image's `pip install` steps resolve to on PyPI, asked of PyPI itself (metadata only,
nothing installed): every package a wheel for the image's Python and platform (the builder has no
compiler), and a torch built for CUDA 12.8 or newer (the first CUDA with Blackwell sm_120 kernels)."""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys

import pytest

from tests.deploy.dockerfile import split_assignments

pytestmark = pytest.mark.skipif(
    (sys.platform, platform.machine()) != ("linux", "x86_64"), reason="resolves for the image's platform: linux x86_64"
)
CUDA_RUNTIME = re.compile(r"^(?:cuda-toolkit\[[^\]]*cudart[^\]]*\]|nvidia-cuda-runtime(?:-cu\d+)?)\s*==\s*([\d.]+)")


@pytest.fixture(scope="module")
def resolved(dockerfile, context) -> list[dict]:
    """pip's report for `install torch==TORCH_VERSION .` from PyPI alone (--isolated: no local wheels)."""
    version = split_assignments(dockerfile.stage("builder").first("ARG").args)["TORCH_VERSION"]
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--only-binary=:all:", "--report", "-", f"torch=={version}", "."],
        cwd=context, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["install"]


def test_every_dependency_of_the_image_is_a_prebuilt_wheel(resolved):
    built_here = [r["metadata"]["name"] for r in resolved if not r["download_info"]["url"].endswith(".whl")]
    assert built_here == ["sm1"]


def test_the_cuda_image_gets_a_torch_built_for_cuda_12_8_or_newer(resolved):
    (torch,) = [r for r in resolved if r["metadata"]["name"] == "torch"]
    runtimes = [m.group(1) for d in torch["metadata"]["requires_dist"] if (m := CUDA_RUNTIME.match(d))]
    assert runtimes, f"PyPI's torch has no CUDA runtime: {torch['metadata']['requires_dist']}"
    assert tuple(int(x) for x in runtimes[0].split(".")[:2]) >= (12, 8)

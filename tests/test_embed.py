"""The MiniLM encoder loads from its PyPI package without touching the process's hub settings."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_loading_the_encoder_leaves_the_hub_settings_alone():
    # HF_HUB_OFFLINE set for the whole process would force a later `hf:ORG/MODEL` load offline too; conftest
    # sets it for the test process, so this runs in a child without it.
    code = ("import os\n"
            "from thinkrm.embed import get_encoder\n"
            "vecs = get_encoder().encode(['2 + 3 = 5.'])\n"
            "print(os.environ.get('HF_HUB_OFFLINE'), vecs.shape)\n")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["None", "(1,", "384)"]

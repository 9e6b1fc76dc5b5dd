"""What the suites of the Docker-engine backends (docker, swarm) share.

Every job they start carries the label ``TEST_LABEL=SESSION``, unique to this
test session, by which their fixtures remove what a failed test left behind.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from chris_sdk.descriptor import PluginType

from pman.schema import JobSpec
from pman.settings import BackendName, PmanSettings

TEST_LABEL = "org.chrisproject.test-session"
SESSION = uuid.uuid4().hex[:12]


def engine_settings(tmp_path: Path, backend: BackendName, **overrides: Any) -> PmanSettings:
    """Settings of a pman on ``backend`` with its data under ``tmp_path``."""
    values: dict[str, Any] = {
        "backend": backend,
        "storebase": tmp_path / "store",
        "data_dir": tmp_path / "pman",
        "job_labels": {TEST_LABEL: SESSION, "team": "neuro"},
        "kill_grace_seconds": 1,
    }
    values.update(overrides)
    return PmanSettings(**values)


def busybox_job(jid: str, image: str, script: str, **fields: Any) -> JobSpec:
    """A busybox ``sh -c script`` job; ``$0``.. are the appended dirs."""
    values: dict[str, Any] = {
        "jid": jid,
        "image": image,
        "entrypoint": ["sh", "-c", script],
        "type": PluginType.FS,
        "input_dir": f"key-{jid}/incoming",
        "output_dir": f"key-{jid}/outgoing",
        "memory_limit": 64,
        "cpu_limit": 500,
    }
    values.update(fields)
    return JobSpec(**values)

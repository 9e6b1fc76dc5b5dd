"""pman's configuration: one pydantic-settings object, environment prefix ``PMAN_``.

Every field can be set by an environment variable (``PMAN_BACKEND=docker``,
``PMAN_JOB_LABELS='{"site": "bch"}'``) or by ``pman serve`` options.
"""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _json_or_split(v: Any, sep: str, *, strip: bool) -> Any:
    """An environment value as a list: JSON (``[...]``) or ``sep``-separated
    items, empty ones dropped (and each stripped when ``strip``); other values as given."""
    if not isinstance(v, str):
        return v
    text = v.strip()
    if text.startswith("["):
        return json.loads(text)
    items = (p.strip() if strip else p for p in text.split(sep))
    return [p for p in items if p]


class BackendName(StrEnum):
    """The compute backends pman can run jobs on (``container_env`` on the wire)."""

    LOCAL = "local"
    DOCKER = "docker"
    SWARM = "swarm"
    KUBERNETES = "kubernetes"


def _default_local_path() -> list[Path]:
    # console scripts of plugins installed beside pman live next to its interpreter
    return [Path(sys.executable).parent]


class PmanSettings(BaseSettings):
    """Settings of one pman server.

    Paths may be relative; they are made absolute (against the working
    directory at start-up) so that jobs see stable paths.
    """

    model_config = SettingsConfigDict(env_prefix="PMAN_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=5010, ge=0, le=65535)
    backend: BackendName = BackendName.LOCAL

    #: The directory pfioh stores job data in; JobSpec dirs are relative to it.
    storebase: Path = Path("./.pfioh-store")
    #: The storebase as the Docker engine sees it (when pman runs in a container).
    storebase_host_path: Path | None = None
    #: State of the local backend (one directory per job).
    data_dir: Path = Path("./.pman")

    #: Lines of log kept in a job's ``logs``.
    job_logs_tail: int = Field(default=1000, ge=0)
    #: Extra labels put on every container (JSON object, or ``k=v,k2=v2``).
    job_labels: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    #: ``uid:gid`` (or ``uid``) the plugin containers run as.
    container_user: str | None = Field(default=None, pattern=r"^\d+(:\d+)?$")
    #: Do not apply cpu/memory/gpu limits to containers.
    ignore_limits: bool = False
    #: Size of ``/dev/shm`` in containers, in MiB (engine default when unset).
    shm_size_mib: int | None = Field(default=None, ge=1)

    #: Directories searched for local executables, before ``$PATH``
    #: (JSON list or ``os.pathsep``-separated).
    local_path: Annotated[list[Path], NoDecode] = Field(default_factory=_default_local_path)
    #: Apply ``memory_limit`` as RLIMIT_AS to local jobs. Off by default: RLIMIT_AS
    #: caps *virtual* memory, and Python, the JVM or CUDA reserve far more address
    #: space than they use, so a limit in resident MiB makes them fail spuriously.
    local_enforce_memory: bool = False
    #: GPUs local jobs may be given (ids or UUIDs as CUDA_VISIBLE_DEVICES takes
    #: them, JSON list or comma-separated); unset: those ``nvidia-smi`` lists.
    local_gpus: Annotated[list[str] | None, NoDecode] = None
    #: Fork local jobs' runners from one fork server per backend (a ready
    #: ``python -I -S``) instead of starting an interpreter per job (about 18 ms
    #: of CPU each); off, or where it cannot run, runners are spawned.
    local_forkserver: bool = True

    #: Jobs running longer than this many seconds are killed (0: unlimited).
    max_run_seconds: float = Field(default=0, ge=0)
    #: Seconds between SIGTERM and SIGKILL when a job is stopped.
    kill_grace_seconds: float = Field(default=10, ge=0)
    #: Upper bound of a long-poll's ``wait``, in seconds.
    max_wait_seconds: float = Field(default=60, ge=0)

    #: When set, every request but ``/health/`` needs ``Authorization: Bearer <token>``.
    api_token: str | None = None

    # -- images and registries (docker, swarm) ---------------------------------
    #: Pull an image the engine does not have (docker, swarm); off: such jobs are refused.
    pull_images: bool = True
    #: Credentials for pulling from a private registry (docker, swarm).
    registry_username: str | None = None
    registry_password: SecretStr | None = None

    # -- swarm ----------------------------------------------------------------
    #: Placement constraints of every job service, e.g. ``node.labels.gpu==true``
    #: (JSON list or comma-separated).
    swarm_constraints: Annotated[list[str], NoDecode] = Field(default_factory=list)
    #: The generic resource kind GPUs are advertised as by the swarm nodes' dockerd.
    swarm_gpu_resource: str = "NVIDIA-GPU"

    # -- kubernetes -----------------------------------------------------------
    #: Namespace the Jobs are created in.
    kubernetes_namespace: str = "default"
    #: kubeconfig file; unset: ``$KUBECONFIG``/``~/.kube/config``, else in-cluster config.
    kubeconfig: Path | None = None
    #: Node selector of every job pod (JSON object or ``k=v,k2=v2``).
    kubernetes_node_selector: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    #: Tolerations of every job pod (JSON list of Toleration objects), e.g. for tainted GPU nodes.
    kubernetes_tolerations: Annotated[list[dict[str, Any]], NoDecode] = Field(default_factory=list)
    #: The extended resource name GPUs are requested as.
    kubernetes_gpu_resource: str = "nvidia.com/gpu"
    #: How job pods reach the storebase: a hostPath (``storebase_host_path`` or
    #: ``storebase`` on every node) or a PersistentVolumeClaim with subPaths.
    kubernetes_storage: Literal["hostPath", "pvc"] = "hostPath"
    #: The claim holding the storebase when ``kubernetes_storage`` is ``pvc``.
    kubernetes_pvc_name: str | None = None
    #: ``ttlSecondsAfterFinished`` of every Job: the cluster deletes finished Jobs
    #: this long after they end, if pfcon has not deleted them before.
    kubernetes_ttl_seconds: int = Field(default=86400, ge=0)
    #: An image pull secret for private registries.
    kubernetes_image_pull_secret: str | None = None

    @field_validator("storebase", "data_dir", "storebase_host_path")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        return None if v is None else v.expanduser().absolute()

    @field_validator("local_path", mode="before")
    @classmethod
    def _split_path(cls, v: Any) -> Any:
        # items kept verbatim: a directory name may have surrounding blanks
        return _json_or_split(v, os.pathsep, strip=False)

    @field_validator("swarm_constraints", "local_gpus", mode="before")
    @classmethod
    def _split_list(cls, v: Any) -> Any:
        return _json_or_split(v, ",", strip=True)

    @field_validator("kubernetes_tolerations", mode="before")
    @classmethod
    def _json_list(cls, v: Any) -> Any:
        return json.loads(v) if isinstance(v, str) else v

    @field_validator("job_labels", "kubernetes_node_selector", mode="before")
    @classmethod
    def _parse_labels(cls, v: Any) -> Any:
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("{"):
                return json.loads(text)
            labels: dict[str, str] = {}
            for item in filter(None, (p.strip() for p in text.split(","))):
                key, sep, value = item.partition("=")
                if not sep or not key:
                    raise ValueError(f"labels must be key=value, got {item!r}")
                labels[key] = value
            return labels
        return v

    @property
    def engine_storebase(self) -> Path:
        """The storebase path as the container engine sees it."""
        return self.storebase_host_path or self.storebase

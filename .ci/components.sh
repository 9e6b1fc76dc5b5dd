#!/usr/bin/env bash
# Install and start the components the test suite needs (as root):
# a Docker engine (docker.io + dockerd), mmdebstrap to build the Python base
# image without pulling, and busybox-static for the small test image.
set -euo pipefail

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
[[ -x /bin/busybox ]] || need+=(busybox-static)
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "starting dockerd"
  nohup dockerd >/var/log/dockerd-ci.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start"; tail -50 /var/log/dockerd-ci.log; exit 1; }
fi
echo "docker engine: $(docker version --format '{{.Server.Version}}')"

#!/usr/bin/env bash
# Install and start the components the test suite needs (as root):
# a Docker engine (docker.io + dockerd), mmdebstrap to build the Python base
# image without pulling, busybox-static for the small test image, and
# docker-registry + apache2-utils (htpasswd -B) for the registry tests, which
# start their own registry on loopback (none is started here), orthanc +
# dcmtk for the PACS bridge's tests (which start their own Orthanc), and
# postgresql for CUBE's database tests, which start their own throwaway
# cluster as the postgres user (the package's own cluster is stopped: nothing
# uses it).
set -euo pipefail

need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
[[ -x /bin/busybox ]] || need+=(busybox-static)
[[ -x /usr/bin/docker-registry ]] || need+=(docker-registry)
command -v htpasswd >/dev/null || need+=(apache2-utils)
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
# the PACS bridge's tests start their own Orthanc (a test PACS) and drive DCMTK's tools
[[ -x /usr/sbin/Orthanc ]] || need+=(orthanc)
command -v storescu >/dev/null || need+=(dcmtk)
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
if ((${#need[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
  # the package's service would hold :5000 for nothing; tests run their own registry
  if [[ " ${need[*]} " == *" docker-registry "* ]]; then
    service docker-registry stop >/dev/null 2>&1 || true
  fi
  # likewise Orthanc's service (:4242, :8042): the PACS tests run their own
  if [[ " ${need[*]} " == *" orthanc "* ]]; then
    service orthanc stop >/dev/null 2>&1 || true
  fi
  if [[ " ${need[*]} " == *" postgresql "* ]]; then
    service postgresql stop >/dev/null 2>&1 || true
  fi
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

# a one-node swarm on loopback for the swarm backend's tests
if [[ "$(docker info --format '{{.Swarm.LocalNodeState}}')" != "active" ]]; then
  docker swarm init --advertise-addr 127.0.0.1 >/dev/null
fi
echo "swarm: $(docker info --format '{{.Swarm.LocalNodeState}} (manager: {{.Swarm.ControlAvailable}})')"

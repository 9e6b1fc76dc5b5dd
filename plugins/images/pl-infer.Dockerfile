# Recipe of chris-fabric/pl-infer:1.0.0, built by build.py (see README.md), which
# supplies the context: this file plus wheels/ (the project wheel, pydantic, and
# this recipe's extra wheels: torch, numpy, nibabel, pydicom and their
# dependencies, pinned to the host's versions and built or copied from the
# host's pip sources). Classic builder; RUN has no network.
#
# torch is the host's build (the CPU one on our machines): in a container the
# plugin runs on the CPU, and --device auto says so in its report; a GPU in
# the container needs a CUDA build of torch in the wheel directory instead.
ARG BASE=chris-fabric/python-base:bookworm
FROM ${BASE}

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

COPY wheels/ /tmp/wheels/
# The project wheel goes in without its dependencies (the services' aiohttp,
# docker, ...): the plugin needs chris_sdk (pydantic) and its model's stack.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps /tmp/wheels/chris_fabric-*.whl \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels \
        pydantic torch numpy nibabel pydicom \
    && ln -s /opt/venv/bin/infer /usr/local/bin/infer \
    && rm -rf /tmp/wheels

ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /
CMD ["infer", "--help"]

# Recipe of chris-fabric/pl-topologicalcopy:1.0.0, built by build.py (see README.md), which
# supplies the context: this file plus wheels/ (the project wheel and the
# pydantic wheels, built on the host). Classic builder; RUN has no network.
ARG BASE=chris-fabric/python-base:bookworm
FROM ${BASE}

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

COPY wheels/ /tmp/wheels/
# The project wheel goes in without its dependencies (the services' aiohttp,
# docker, ...): a plugin needs only chris_sdk, whose one dependency is pydantic.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps /tmp/wheels/chris_fabric-*.whl \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels pydantic \
    && ln -s /opt/venv/bin/topologicalcopy /usr/local/bin/topologicalcopy \
    && rm -rf /tmp/wheels

ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /
CMD ["topologicalcopy", "--help"]

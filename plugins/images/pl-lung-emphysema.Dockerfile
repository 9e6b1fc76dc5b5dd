# Recipe of chris-fabric/pl-lung-emphysema:1.0.0, built by build.py (see README.md), which
# supplies the context: this file plus wheels/ (the project wheel, the pydantic
# wheels and the recipe's requirements, built on the host). Classic builder;
# RUN has no network.
ARG BASE=chris-fabric/python-base:bookworm
FROM ${BASE}

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1

COPY wheels/ /tmp/wheels/
# The project wheel goes in without its dependencies (the services' aiohttp,
# docker, ...): the plugin needs chris_sdk (pydantic), pydicom, numpy, scipy,
# nibabel and pillow.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps /tmp/wheels/chris_fabric-*.whl \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels \
        pydantic numpy scipy nibabel pillow pydicom \
    && ln -s /opt/venv/bin/lungemphysema /usr/local/bin/lungemphysema \
    && rm -rf /tmp/wheels

ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /
CMD ["lungemphysema", "--help"]

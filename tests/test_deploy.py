"""The Docker deployment, checked where no Docker engine runs: docker-compose.yml, docker-compose.gpu.yml,
the Dockerfile and .dockerignore are parsed and held to what an operator relies on, and the commands
that they run are run here."""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import yaml

from service.cli import build_parser
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
GPU = yaml.safe_load((REPO / "docker-compose.gpu.yml").read_text())
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def deep_merge(base: object, override: object) -> object:
    """Compose's merge of a later file into an earlier one, for mappings; anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = deep_merge(base[key], value) if key in base else value
        return merged
    return copy.deepcopy(override)


def gpu_services() -> dict[str, dict]:
    """Every service of `-f docker-compose.yml -f docker-compose.gpu.yml` with all profiles on."""
    services = copy.deepcopy(BASE["services"])
    for name, service in GPU["services"].items():
        own = {key: value for key, value in service.items() if key != "extends"}
        if "extends" in service:
            assert service["extends"]["file"] == "docker-compose.yml"
            services[name] = deep_merge(BASE["services"][service["extends"]["service"]], own)
        else:
            services[name] = deep_merge(services[name], own)
    return services


def is_worker(service: dict) -> bool:
    return service.get("command", [])[:2] == ["classcomp", "worker"]


def gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


class Dockerfile:
    """The instructions of the Dockerfile that matter here, with its ENV values substituted (build
    arguments are left as $NAME, to see where they are used)."""

    def __init__(self, text: str):
        lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        joined = re.sub(r"\\\n", " ", "\n".join(lines))
        self.instructions = [line.strip().split(None, 1) for line in joined.splitlines() if line.strip()]
        self.variables: dict[str, str] = {}
        self.build_args: dict[str, str] = {}
        self.commands: list[list[str]] = []  # each shell command of each RUN, split into words
        self.user = "root"
        for keyword, rest in self.instructions:
            keyword = keyword.upper()
            if keyword in ("ENV", "ARG"):
                for assignment in shlex.split(rest):
                    name, _, value = assignment.partition("=")
                    (self.variables if keyword == "ENV" else self.build_args)[name] = self.expand(value)
            elif keyword == "RUN":
                self.commands += self.shell_commands(self.expand(rest))
            elif keyword == "USER":
                self.user = rest.split(":")[0]

    def expand(self, text: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.variables.get(m[1], m[0]), text)

    @staticmethod
    def shell_commands(script: str) -> list[list[str]]:
        lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        commands, words = [], []
        for token in lexer:
            if token in ("&&", "||", ";", "|"):
                commands.append(words)
                words = []
            else:
                words.append(token)
        return [*commands, words]

    def uid(self, user: str) -> str:
        """A user name as the uid that `useradd --uid` gave it; a number as itself."""
        for words in self.commands:
            if words[:1] == ["useradd"] and words[-1] == user:
                flag = "--uid" if "--uid" in words else "-u"
                return words[words.index(flag) + 1]
        return user

    def created_dirs(self) -> set[str]:
        return {word for words in self.commands if words[:1] == ["mkdir"] for word in words[1:] if not word.startswith("-")}

    def owners(self) -> dict[str, str]:
        """Each path that a RUN chowns, with the uid it gives it."""
        owned = {}
        for words in self.commands:
            if words[:1] == ["chown"]:
                owner, *paths = [word for word in words[1:] if not word.startswith("-")]
                owned.update((path, self.uid(owner.split(":")[0])) for path in paths)
        return owned

    def pins(self) -> dict[str, str]:
        """The exact versions that a pip install in a RUN names."""
        return dict(
            word.split("==", 1) for words in self.commands if words[:2] == ["pip", "install"] for word in words
            if "==" in word
        )


DOCKERFILE = Dockerfile((REPO / "Dockerfile").read_text())


def test_every_service_has_a_healthcheck_and_restarts_after_a_crash():
    for services in (BASE["services"], gpu_services()):
        for name, service in services.items():
            test = service.get("healthcheck", {}).get("test")
            assert test and test != ["NONE"] and not service["healthcheck"].get("disable"), name
            assert service.get("restart") in ("always", "unless-stopped", "on-failure"), name


def test_the_base_file_runs_on_a_host_without_a_gpu():
    for name, service in BASE["services"].items():
        assert not gpu_devices(service) and "gpus" not in service and service.get("runtime") != "nvidia", name
        assert "CLASSCOMP_DEVICE" not in service.get("environment", {}), name


def test_the_gpu_override_gives_each_worker_one_gpu_of_its_own():
    services = gpu_services()
    workers = {name: service for name, service in services.items() if is_worker(service)}
    assert set(workers) == {name for name in GPU["services"]}, "every GPU-file service is a worker and vice versa"
    ids = []
    for name, worker in workers.items():
        (device,) = gpu_devices(worker)
        assert "count" not in device and "gpu" in device["capabilities"], name
        (device_id,) = device["device_ids"]
        ids.append(device_id)
        assert worker["environment"]["CLASSCOMP_DEVICE"].startswith("cuda"), name
        assert worker.get("deploy", {}).get("replicas", 1) == 1 and "scale" not in worker, name
    assert len(set(ids)) == len(ids), f"workers share a GPU: {ids}"
    # Without profiles, a one-GPU host starts only the worker on GPU 0.
    unprofiled = [gpu_devices(w)[0]["device_ids"] for w in workers.values() if not w.get("profiles")]
    assert unprofiled == [["0"]]
    assert "docker compose -f docker-compose.yml -f docker-compose.gpu.yml" in (REPO / "docker-compose.gpu.yml").read_text()


def test_every_named_volume_of_the_image_is_writable_by_its_user():
    runtime_uid = DOCKERFILE.uid(DOCKERFILE.user)
    assert runtime_uid != "0", "the image runs as root"
    owners = DOCKERFILE.owners()
    for name, service in gpu_services().items():
        if "build" not in service:
            continue
        for mount in service.get("volumes", []):
            source, target = mount.split(":")[:2]
            if source in BASE["volumes"]:
                # A new named volume takes the owner of its mount point in the image.
                assert target in DOCKERFILE.created_dirs(), (name, target)
                assert owners.get(target) == runtime_uid, (name, target, owners.get(target))


def test_the_build_context_leaves_out_local_state_but_not_the_sources():
    patterns = [line.strip().strip("/").removeprefix("./") for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert {".venv", ".git"} <= set(patterns)

    def excluded(path: Path) -> bool:
        parts = path.relative_to(REPO).parts
        return any(fnmatch.fnmatch("/".join(parts[:i]), p) for i in range(1, len(parts) + 1) for p in patterns)

    copied = [REPO / word for keyword, rest in DOCKERFILE.instructions if keyword == "COPY" for word in rest.split()[:-1]]
    for source in copied:
        files = [source] if source.is_file() else [f for f in source.rglob("*") if f.is_file() and "__pycache__" not in f.parts]
        assert files, source
        assert not [f for f in files if excluded(f)], source


def test_torch_is_pinned_and_the_api_image_takes_the_cpu_build():
    pins = DOCKERFILE.pins()
    assert re.fullmatch(r"\d+\.\d+\.\d+", pins["torch"]) and re.fullmatch(r"\d+\.\d+\.\d+", pins["torchvision"])
    torch_minor, vision_minor = int(pins["torch"].split(".")[1]), int(pins["torchvision"].split(".")[1])
    assert vision_minor == torch_minor + 15, "torchvision is released in step with torch, 0.(N+15) for 2.N"
    # pyproject keeps a range, for installs other than the image.
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    requirement = next(r for r in dependencies if re.match(r"torch\b", r))
    assert ">=" in requirement and "==" not in requirement

    assert "TORCH_INDEX_URL" in DOCKERFILE.build_args
    torch_installs = [w for w in DOCKERFILE.commands if w[:2] == ["pip", "install"] and any("torch==" in x for x in w)]
    assert all("--index-url" in w for w in torch_installs) and torch_installs
    assert "$TORCH_INDEX_URL" in [w[w.index("--index-url") + 1] for w in torch_installs]

    api, worker = BASE["services"]["api"], BASE["services"]["worker"]
    assert api["build"]["args"]["TORCH_INDEX_URL"] == CPU_INDEX
    assert api["image"] != worker["image"], "the CPU build and the CUDA build would overwrite each other's tag"
    assert CPU_INDEX not in json.dumps(worker.get("build"))


def test_the_api_is_published_on_this_host_only_and_passes_its_token_through():
    published = [(name, port) for name, service in BASE["services"].items() for port in service.get("ports", [])]
    assert [name for name, _ in published] == ["api"]
    for _, port in published:
        host_ip = port["host_ip"] if isinstance(port, dict) else str(port).rsplit(":", 2)[0]
        assert host_ip == "127.0.0.1", port
    # No value: compose passes the variable on only when it is set, as an empty token stops the API.
    environment = BASE["services"]["api"]["environment"]
    assert environment["CLASSCOMP_API_TOKEN"] is None and environment["CLASSCOMP_API_TOKENS"] is None


def test_mnist_goes_where_the_comments_say():
    from torchvision.datasets import MNIST

    text = (REPO / "docker-compose.yml").read_text()
    for name in ("api", "worker"):
        data_dir = BASE["services"][name]["environment"]["CLASSCOMP_DATA_DIR"]
        assert data_dir in [mount.split(":")[1] for mount in BASE["services"][name]["volumes"]], name
        # Where classcomp points torchvision (settings.mnist_dir), and where torchvision then reads.
        mnist = MNIST.__new__(MNIST)
        mnist.root = str(Settings(data_dir=data_dir).mnist_dir)
        commented = {path.rstrip("/") for path in re.findall(r"#.*?(/[\w/.-]*MNIST[\w/.-]*)", text)}
        assert commented == {mnist.raw_folder}, (commented, mnist.raw_folder)


def test_every_command_is_a_real_classcomp_command():
    parser = build_parser()
    commands = [service["command"] for service in gpu_services().values() if "build" in service]
    commands.append(json.loads(next(rest for keyword, rest in DOCKERFILE.instructions if keyword == "CMD")))
    assert len(commands) > 2
    for command in commands:
        assert command[0] == "classcomp"
        parser.parse_args(command[1:])  # exits (fails the test) on an unknown command or flag


def worker_env(home: Path, **settings: str) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CLASSCOMP_")}
    return {**inherited, "CLASSCOMP_HOME": str(home), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            **settings}


def test_a_gpu_worker_without_a_usable_gpu_exits_at_once_with_the_reason(tmp_path):
    env = worker_env(tmp_path, CLASSCOMP_DEVICE="cuda", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run([sys.executable, "-m", "service.cli", "worker"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "classcomp: device 'cuda' was requested, but" in done.stderr and "Traceback" not in done.stderr


def test_checking_the_device_leaves_cuda_usable_in_the_pool_process_celery_forks():
    # Asking CUDA anything in the worker's main process would make torch refuse CUDA in every
    # process forked from it (its "bad fork" state), i.e. in the pool process that trains.
    script = """
import os, sys, torch
from service.cli import check_device
try:
    check_device("cuda")
except SystemExit:
    pass
pid = os.fork()
if pid == 0:
    os._exit(3 if torch.cuda._is_in_bad_fork() else 0)
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_worker_healthcheck_passes_while_the_worker_runs_and_fails_once_it_is_gone(tmp_path):
    kind, command = BASE["services"]["worker"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL" and "classcomp-1@" in command
    # In its container the worker is PID 1; here it is not, so its node name has its own pid.
    env = worker_env(tmp_path, HOSTNAME=socket.gethostname())
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=env, cwd=REPO, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    probe = command.replace("$$", "$").replace("classcomp-1@", f"classcomp-{worker.pid}@")
    try:
        deadline = time.monotonic() + 120
        while " ready." not in log.read_text(errors="replace"):
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.5)
        alive = subprocess.run(["sh", "-c", probe], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert alive.returncode == 0, alive.stdout + alive.stderr
    finally:
        worker.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            worker.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)  # whatever its group still holds
        worker.wait()
    gone = subprocess.run(["sh", "-c", probe], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert gone.returncode != 0

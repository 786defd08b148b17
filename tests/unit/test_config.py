"""lbtrain/config.py: every environment variable is read here, and `to_env` reproduces a Config."""

from __future__ import annotations

import pytest

from lbtrain.config import DEFAULT_MIN_EXAMPLES, Config, from_env, to_env


def test_from_empty_env_is_the_defaults() -> None:
    cfg = from_env({})
    assert cfg == Config()
    assert cfg.deployment_name == "dev"
    assert cfg.job_backend == "local" and cfg.labelbox_backend == "file" and cfg.push_auth == "none"
    assert dict(cfg.min_examples) == DEFAULT_MIN_EXAMPLES
    assert cfg.max_body_bytes == 1 << 20
    assert cfg.secrets() == []


def test_from_env_does_not_read_os_environ_when_given_a_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOYMENT_NAME", "from-os-environ")
    assert from_env({}).deployment_name == "dev"
    assert from_env().deployment_name == "from-os-environ"


def test_empty_values_mean_unset() -> None:
    assert from_env({"DEPLOYMENT_NAME": "", "JOB_BACKEND": "", "LBTRAIN_MIN_EXAMPLES": ""}) == Config()


def test_from_env_reads_the_documented_names() -> None:
    env = {
        "DEPLOYMENT_NAME": "prod", "GOOGLE_CLOUD_PROJECT": "my-proj", "REGION": "europe-west4",
        "ARTIFACT_ROOT": "gs://bucket/lbtrain", "JOB_BACKEND": "vertex", "LABELBOX_BACKEND": "sdk",
        "LABELBOX_DIR": "/lb", "LABELBOX_API_KEY": "key-1", "LABELBOX_WEBHOOK_SECRET": "whs-1",
        "API_TOKEN": "tok-1", "PUSH_AUTH": "oidc", "PUSH_AUDIENCE": "https://svc",
        "PUSH_SERVICE_ACCOUNT": "push@p.iam.gserviceaccount.com", "PUSH_CERTS_URL": "http://certs",
        "PUBSUB_EMULATOR_HOST": "h:1",
        "FIRESTORE_EMULATOR_HOST": "h:2", "STORAGE_EMULATOR_HOST": "h:3", "VERTEX_API_ENDPOINT": "h:4",
        "LBTRAIN_MAX_BODY_BYTES": "2048", "LBTRAIN_STALE_AFTER_SECONDS": "7.5", "LBTRAIN_JOB_PYTHON": "/py",
        "LBTRAIN_JOB_MODULE": "lbtrain.noop_job", "LBTRAIN_API_URL": "http://x:1", "LBTRAIN_STATE_DIR": "/st",
        "STAGE": "train",
    }
    cfg = from_env(env)
    assert cfg == Config(
        deployment_name="prod", project="my-proj", region="europe-west4", artifact_root="gs://bucket/lbtrain",
        job_backend="vertex", labelbox_backend="sdk", labelbox_dir="/lb", labelbox_api_key="key-1",
        labelbox_webhook_secret="whs-1", api_token="tok-1", push_auth="oidc", push_audience="https://svc",
        push_service_account="push@p.iam.gserviceaccount.com", push_certs_url="http://certs",
        pubsub_emulator_host="h:1", firestore_emulator_host="h:2", storage_emulator_host="h:3",
        vertex_api_endpoint="h:4", max_body_bytes=2048, stale_after_seconds=7.5, job_python="/py",
        job_module="lbtrain.noop_job", api_url="http://x:1", state_dir="/st", stage="train",
    )
    assert sorted(cfg.secrets()) == ["key-1", "tok-1", "whs-1"]


def test_topic_names_are_prefixed_with_the_deployment() -> None:
    cfg = Config(deployment_name="blue")
    assert cfg.topic("runs") == "blue-runs"
    assert cfg.topic("step-etl") == "blue-step-etl"


# -- LBTRAIN_MIN_EXAMPLES ------------------------------------------------------------------

@pytest.mark.parametrize("raw,expected", [
    ("train=3", {"train": 3, "validation": 1, "test": 1}),
    ("train=10,validation=2,test=4", {"train": 10, "validation": 2, "test": 4}),
    (" train=7 , test= 0 ", {"train": 7, "validation": 1, "test": 0}),
    ("validation=5,", {"train": 5, "validation": 5, "test": 1}),
])
def test_min_examples_parsing(raw: str, expected: dict[str, int]) -> None:
    assert dict(from_env({"LBTRAIN_MIN_EXAMPLES": raw}).min_examples) == expected


@pytest.mark.parametrize("raw", ["holdout=3", "train", "train=", "train=x", "train=-1", "train=1.5", "=3",
                                 "train:3"])
def test_min_examples_errors_name_the_variable_and_the_entry(raw: str) -> None:
    with pytest.raises(ValueError, match="LBTRAIN_MIN_EXAMPLES") as info:
        from_env({"LBTRAIN_MIN_EXAMPLES": raw})
    bad_entry = raw.split(",")[0].strip()
    assert repr(bad_entry) in str(info.value)


def test_min_examples_default_is_not_shared_between_configs() -> None:
    a, b = Config(), Config()
    assert a.min_examples == b.min_examples and a.min_examples is not b.min_examples


# -- enumerated values -----------------------------------------------------------------------

@pytest.mark.parametrize("var,value", [("JOB_BACKEND", "kubernetes"), ("JOB_BACKEND", "Local"),
                                       ("LABELBOX_BACKEND", "api"), ("PUSH_AUTH", "basic"),
                                       ("PUSH_AUTH", "OIDC"), ("PUSH_AUTH", "cloudrun_iam")])
def test_bad_enumerated_value_is_refused_naming_the_variable(var: str, value: str) -> None:
    with pytest.raises(ValueError, match=var) as info:
        from_env({var: value})
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("env,missing", [
    ({"PUSH_AUTH": "oidc"}, "PUSH_SERVICE_ACCOUNT and PUSH_AUDIENCE"),
    ({"PUSH_AUTH": "oidc", "PUSH_SERVICE_ACCOUNT": "push@p.iam.gserviceaccount.com"}, "PUSH_AUDIENCE"),
    ({"PUSH_AUTH": "oidc", "PUSH_AUDIENCE": "p/dep/ingress"}, "PUSH_SERVICE_ACCOUNT"),
    ({"PUSH_AUTH": "cloudrun-iam", "PUSH_AUDIENCE": "p/dep/launcher-etl"}, "PUSH_SERVICE_ACCOUNT"),
])
def test_push_auth_without_the_identity_to_check_is_a_startup_error(env: dict[str, str], missing: str) -> None:
    """An empty audience or service account would let any Google-signed token through."""
    with pytest.raises(ValueError, match=f"PUSH_AUTH={env['PUSH_AUTH']} needs {missing}$"):
        from_env(env)


def test_push_auth_modes_with_their_identity_are_accepted() -> None:
    sa = "push@p.iam.gserviceaccount.com"
    assert from_env({"PUSH_AUTH": "cloudrun-iam", "PUSH_SERVICE_ACCOUNT": sa}).push_auth == "cloudrun-iam"
    cfg = from_env({"PUSH_AUTH": "oidc", "PUSH_SERVICE_ACCOUNT": sa, "PUSH_AUDIENCE": "p/dep/ingress"})
    assert (cfg.push_auth, cfg.push_service_account, cfg.push_audience, cfg.push_certs_url) == \
        ("oidc", sa, "p/dep/ingress", "")


@pytest.mark.parametrize("var,value", [("LBTRAIN_MAX_BODY_BYTES", "1MB"), ("LBTRAIN_STALE_AFTER_SECONDS", "soon")])
def test_bad_numbers_are_refused(var: str, value: str) -> None:
    with pytest.raises(ValueError):
        from_env({var: value})


# -- to_env round trip -------------------------------------------------------------------------

ROUND_TRIP_CONFIGS = [
    Config(),
    Config(deployment_name="prod", project="p-1", region="europe-west1", artifact_root="gs://b/x",
           job_backend="vertex", labelbox_backend="sdk", labelbox_dir="/data/lb", labelbox_api_key="lb-key",
           labelbox_webhook_secret="wh-secret", api_token="api-tok", push_auth="oidc",
           push_audience="https://ingress.example", push_service_account="push@p-1.iam.gserviceaccount.com",
           pubsub_emulator_host="127.0.0.1:8085",
           firestore_emulator_host="127.0.0.1:8086", storage_emulator_host="127.0.0.1:9023",
           vertex_api_endpoint="127.0.0.1:9999", min_examples={"train": 9, "validation": 3, "test": 2},
           max_body_bytes=12345, stale_after_seconds=0.25, job_python="/usr/bin/python3",
           job_module="lbtrain.noop_job", stage="evaluate", state_dir="/tmp/st", api_url="http://127.0.0.1:9"),
    Config(stale_after_seconds=0.1, max_body_bytes=1, min_examples={"train": 0, "validation": 0, "test": 0}),
]


@pytest.mark.parametrize("cfg", ROUND_TRIP_CONFIGS)
def test_to_env_round_trip(cfg: Config) -> None:
    env = to_env(cfg)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    assert from_env(env) == cfg


def test_to_env_uses_the_documented_names() -> None:
    env = to_env(Config(project="p-1", deployment_name="d", api_token="t"))
    assert env["GOOGLE_CLOUD_PROJECT"] == "p-1"
    assert env["DEPLOYMENT_NAME"] == "d"
    assert env["API_TOKEN"] == "t"
    assert env["LBTRAIN_MIN_EXAMPLES"] == "train=5,validation=1,test=1"
    assert "PROJECT" not in env and "MIN_EXAMPLES" not in env


def test_with_overrides_returns_a_new_config() -> None:
    a = Config()
    b = a.with_overrides(deployment_name="x")
    assert a.deployment_name == "dev" and b.deployment_name == "x"


# -- secrets ---------------------------------------------------------------------------------

SECRETS = {"labelbox_api_key": "LBKEY-a1b2c3d4e5", "labelbox_webhook_secret": "WHSEC-f6g7h8i9",
           "api_token": "APITOK-j0k1l2m3"}


def test_secret_values_never_appear_in_repr_or_str() -> None:
    cfg = Config(**SECRETS)
    for text in (repr(cfg), str(cfg), f"{cfg}", f"{cfg!r}"):
        for value in SECRETS.values():
            assert value not in text
    # ...while the non-secret fields are still there to help debugging.
    assert "deployment_name='dev'" in repr(cfg)


def test_secrets_lists_exactly_the_secret_values() -> None:
    cfg = Config(**SECRETS)
    assert sorted(cfg.secrets()) == sorted(SECRETS.values())
    assert Config(api_token="only").secrets() == ["only"]


def test_secrets_read_from_env_are_not_in_repr() -> None:
    env = {k.upper(): v for k, v in SECRETS.items()}
    cfg = from_env(env)
    for value in SECRETS.values():
        assert value not in repr(cfg)

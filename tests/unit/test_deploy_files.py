"""The production deployment files (deploy/) stay consistent with the code: no servers needed."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas import index_templates
from streams.devstack import topic_specs
from streams.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NDJSON = DEPLOY / "kibana" / "earful.ndjson"
EARFUL_VAR = re.compile(r"\bEARFUL_[A-Z0-9_]+\b")


def _default_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    import os

    for name in list(os.environ):
        if name.startswith("EARFUL_"):
            monkeypatch.delenv(name)
    return Settings()


def _known_env_names() -> set[str]:
    names = {f"EARFUL_{field.upper()}" for field in Settings.model_fields}
    # Secrets that the config file names by env var (read by connectors/config.py).
    from connectors.config import IngestConfig

    names.add(IngestConfig.model_fields["secret_env"].default)
    return names | set(_source_credentials()) | set(_subscription_variables())


def _source_credentials() -> list[str]:
    """The env vars the shipped config file's sources read their credentials from."""
    sources = yaml.safe_load((DEPLOY / "earful.yaml").read_text())["sources"]
    return [value for source in sources for key, value in source.items() if key.endswith("_env")]


def _subscription_variables() -> list[str]:
    """The ``${NAME}``s the shipped config file's subscriptions use (its examples are comments)."""
    text = (DEPLOY / "earful.yaml").read_text().split("\nsubscriptions:", 1)[1]
    return re.findall(r"\$\{(EARFUL_[A-Z0-9_]+)\}", text)


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def _k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _ndjson_objects() -> list[dict[str, Any]]:
    return [json.loads(line) for line in NDJSON.read_text().splitlines() if line.strip()]


# --- every file parses --------------------------------------------------------------------


def test_there_are_yaml_files_to_check() -> None:
    names = {p.name for p in _yaml_files()}
    assert {"docker-compose.yml", "kafka-topics.yaml", "worker.yaml"} <= names


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert any(doc for doc in docs), f"{path} holds no document"


def test_every_ndjson_line_parses() -> None:
    lines = NDJSON.read_text().splitlines()
    assert lines, "no saved objects"
    for number, line in enumerate(lines, 1):
        obj = json.loads(line)  # raises with the position on a broken line
        assert {"id", "type", "attributes"} <= obj.keys(), f"line {number}"


# --- Kibana saved objects ------------------------------------------------------------------


def test_data_views_use_the_template_time_fields() -> None:
    views = {o["id"]: o["attributes"] for o in _ndjson_objects() if o["type"] == "index-pattern"}
    assert views["earful-mentions"]["title"] == "earful-mentions*"
    assert views["earful-mentions"]["timeFieldName"] == "created_at"
    assert views["earful-alerts"]["title"] == "earful-alerts*"
    assert views["earful-alerts"]["timeFieldName"] == "opened_at"
    templates = index_templates()
    for view, template in (("earful-mentions", "earful-mentions"), ("earful-alerts", "earful-alerts")):
        fields = templates[template]["template"]["mappings"]["properties"]
        assert fields[views[view]["timeFieldName"]]["type"] == "date"


def _lens_fields(panel: dict[str, Any]) -> list[str]:
    layers = panel["embeddableConfig"]["attributes"]["state"]["datasourceStates"]["formBased"]["layers"]
    return [c["sourceField"] for layer in layers.values() for c in layer["columns"].values()
            if c["sourceField"] != "___records___"]


def test_references_resolve_and_fields_exist() -> None:
    objects = _ndjson_objects()
    ids = {(o["type"], o["id"]) for o in objects}
    mention_fields = index_templates()["earful-mentions"]["template"]["mappings"]["properties"]
    for obj in objects:
        for ref in obj.get("references", []):
            assert (ref["type"], ref["id"]) in ids, f"{obj['id']} refers to missing {ref}"
    dashboard = next(o for o in objects if o["type"] == "dashboard")
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    ref_names = {r["name"] for r in dashboard["references"]}
    for panel in panels:
        if "panelRefName" in panel:
            assert f"{panel['panelIndex']}:{panel['panelRefName']}" in ref_names
        if panel["type"] == "lens":
            for field in _lens_fields(panel):
                assert field in mention_fields, f"panel {panel['title']!r}: no field {field!r}"
    titles = {p["title"] for p in panels}
    assert {"Mentions per minute by tag", "Mentions by source", "Top tags", "Sentiment over time",
            "Open alerts", "Recent alerts"} <= titles


# --- docker compose ------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_has_every_service() -> None:
    services = _compose()["services"]
    assert {"kafka", "elasticsearch", "kibana", "setup", "worker", "connect", "ingest",
            "kibana-setup"} <= services.keys()
    assert services["setup"]["command"] == ["setup"]
    assert services["worker"]["command"] == ["worker"]


def test_compose_earful_variables_are_settings() -> None:
    known = _known_env_names()
    used: set[str] = set()
    for name, service in _compose()["services"].items():
        env = service.get("environment") or {}
        keys = env.keys() if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        for key in keys:
            if key.startswith("EARFUL_"):
                used.add(key)
                assert key in known, f"service {name}: {key} is not a setting of streams.settings.Settings"
    assert "EARFUL_KAFKA_BOOTSTRAP" in used and "EARFUL_ES_URL" in used


def _compose_env(service: str) -> dict[str, Any]:
    return _compose()["services"][service].get("environment") or {}


def test_compose_hands_each_service_the_credentials_the_config_file_names() -> None:
    # Without them a source stays "missing credentials" and a subscription stops the worker.
    assert _source_credentials() and _subscription_variables()
    connect, worker, ingest = _compose_env("connect"), _compose_env("worker"), _compose_env("ingest")
    for name in _source_credentials():
        assert connect.get(name) == f"${{{name}:-}}", f"connect does not get {name}"
    for name in _subscription_variables():
        assert worker.get(name) == f"${{{name}:-}}", f"worker does not get {name}"
    for env in (connect, ingest):  # the two that pseudonymise author handles
        assert env.get("EARFUL_AUTHOR_HASH_KEY") == "${EARFUL_AUTHOR_HASH_KEY:-}"
    assert "EARFUL_X_BEARER_TOKEN" not in worker  # each container gets only its own
    example = (DEPLOY / ".env.example").read_text()
    for name in [*_source_credentials(), *_subscription_variables(), "EARFUL_AUTHOR_HASH_KEY"]:
        assert re.search(rf"^{name}=$", example, re.MULTILINE), f".env.example has no empty {name}="


def test_compose_secrets_are_not_inline() -> None:
    for name, service in _compose()["services"].items():
        env = service.get("environment") or {}
        for key, value in env.items():
            if any(word in key for word in ("PASSWORD", "SECRET", "API_KEY", "ENCRYPTIONKEY")):
                assert str(value).startswith("${"), f"service {name}: {key} has an inline value"


def test_env_example_names_settings() -> None:
    known = _known_env_names()
    text = (DEPLOY / ".env.example").read_text()
    for line in text.splitlines():
        if line.startswith("EARFUL_"):
            name, _, value = line.partition("=")
            assert name in known, name
            if "PASSWORD" in name or "SECRET" in name:
                assert value == "", f"{name} must stay empty in the example"


# --- Kubernetes ----------------------------------------------------------------------------


def test_kafka_topics_match_topic_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = topic_specs(_default_settings(monkeypatch))
    topics = {}
    for doc in _k8s_docs():
        if doc["kind"] == "KafkaTopic":
            name = doc["spec"].get("topicName") or doc["metadata"]["name"]
            assert name not in topics, f"{name} declared twice"
            topics[name] = doc["spec"]["partitions"]
    assert topics == specs


def test_worker_replicas_within_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _default_settings(monkeypatch)
    worker = next(d for d in _k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "earful-worker")
    assert 1 <= worker["spec"]["replicas"] <= topic_specs(settings)[settings.topic_raw]
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
    assert worker["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]


def test_k8s_earful_variables_are_settings() -> None:
    known = _known_env_names()
    for doc in _k8s_docs():
        if doc["kind"] == "ConfigMap":
            for key in doc.get("data", {}):
                if key.startswith("EARFUL_"):
                    assert key in known, f"ConfigMap {doc['metadata']['name']}: {key}"
        for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            for item in container.get("env", []):
                if item["name"].startswith("EARFUL_"):
                    assert item["name"] in known, item["name"]


def test_connectors_run_once() -> None:
    connect = next(d for d in _k8s_docs() if d["kind"] == "Deployment" and d["metadata"]["name"] == "earful-connect")
    assert connect["spec"]["replicas"] == 1
    assert connect["spec"]["strategy"]["type"] == "Recreate"


# --- Elasticsearch ILM ---------------------------------------------------------------------


def test_ilm_policy_rolls_over_and_deletes() -> None:
    policy = json.loads((DEPLOY / "elasticsearch" / "ilm-earful-mentions.json").read_text())
    phases = policy["policy"]["phases"]
    assert "rollover" in phases["hot"]["actions"]
    assert "delete" in phases["delete"]["actions"]
    assert int(phases["delete"]["min_age"].removesuffix("d")) >= 366


def test_ilm_template_keeps_the_mapping_and_adds_the_lifecycle() -> None:
    spec = importlib.util.spec_from_file_location("install_ilm", DEPLOY / "elasticsearch" / "install_ilm.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    base = index_templates()["earful-mentions"]
    body = module.ilm_template(base, alias="earful-mentions")
    assert body["index_patterns"] == ["earful-mentions-*"]
    assert body["priority"] > base["priority"]
    assert body["template"]["mappings"] == base["template"]["mappings"]
    settings = body["template"]["settings"]
    assert settings["index.lifecycle.name"] == "earful-mentions"
    assert settings["index.lifecycle.rollover_alias"] == "earful-mentions"
    assert "index.lifecycle.name" not in base["template"]["settings"]  # the base is not modified


# --- Kibana alerting rules -----------------------------------------------------------------


def test_rule_bodies_in_rules_md_parse() -> None:
    text = (DEPLOY / "kibana" / "rules.md").read_text()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", text, flags=re.S)]
    rules = {b["rule_type_id"]: b for b in blocks if "rule_type_id" in b}
    assert set(rules) == {".es-query", ".index-threshold"}
    es_query = rules[".es-query"]["params"]
    json.loads(es_query["esQuery"])
    mention_fields = index_templates()["earful-mentions"]["template"]["mappings"]["properties"]
    alert_fields = index_templates()["earful-alerts"]["template"]["mappings"]["properties"]
    assert mention_fields[es_query["timeField"]]["type"] == "date"
    threshold = rules[".index-threshold"]["params"]
    assert alert_fields[threshold["timeField"]]["type"] == "date"
    assert threshold["termField"] in alert_fields

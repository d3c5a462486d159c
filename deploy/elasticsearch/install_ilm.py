"""Install the ILM policy for earful-mentions and switch the index to rollover behind an alias.

Production only: the embedded dev search server has no ILM, so ``earful setup`` does not
do this. Run it once on a fresh cluster *before* the first ``earful setup`` (with compose,
before the first ``up -d --build``, which runs setup at once: see deploy/README.md), and again
after upgrading earful (it re-reads the mapping from ``schemas/``); it is idempotent.

    python deploy/elasticsearch/install_ilm.py            # same EARFUL_ES_* settings as earful

What it does:
  1. PUT _ilm/policy/earful-mentions                    (ilm-earful-mentions.json)
  2. PUT _index_template/earful-mentions-ilm            earful-mentions-* with the mapping of
     schemas/elasticsearch/earful-mentions.json plus index.lifecycle.*; a higher priority than
     the earful-mentions template that ``earful setup`` installs, so re-running setup never
     takes the lifecycle off new rollover indices.
  3. PUT earful-mentions-000001 with alias earful-mentions as its write index, unless the
     alias exists. The worker writes to ``earful-mentions`` and so writes through the alias.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

POLICY_FILE = Path(__file__).with_name("ilm-earful-mentions.json")
POLICY_NAME = "earful-mentions"
ILM_TEMPLATE_NAME = "earful-mentions-ilm"
ILM_TEMPLATE_PRIORITY = 300  # above the 200 of schemas/elasticsearch/*.json


def ilm_template(base: dict[str, Any], *, alias: str, policy: str = POLICY_NAME) -> dict[str, Any]:
    """The rollover template: the base template's mapping and settings plus the lifecycle."""
    body = copy.deepcopy(base)
    body["index_patterns"] = [f"{alias}-*"]
    body["priority"] = ILM_TEMPLATE_PRIORITY
    settings = body.setdefault("template", {}).setdefault("settings", {})
    settings["index.lifecycle.name"] = policy
    settings["index.lifecycle.rollover_alias"] = alias
    body.setdefault("_meta", {})["ilm"] = f"policy {policy}, rollover alias {alias}"
    return body


def first_index(alias: str) -> str:
    return f"{alias}-000001"


def main() -> int:
    from elasticsearch import Elasticsearch

    from schemas import index_templates
    from streams.settings import es_client_kwargs, load_settings

    try:
        settings = load_settings()
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    alias = settings.index_mentions
    es = Elasticsearch(**es_client_kwargs(settings))
    try:
        es.ilm.put_lifecycle(name=POLICY_NAME, policy=json.loads(POLICY_FILE.read_text())["policy"])
        print(f"ILM policy {POLICY_NAME} installed")
        body = ilm_template(index_templates()["earful-mentions"], alias=alias)
        es.indices.put_index_template(name=ILM_TEMPLATE_NAME, **body)
        print(f"index template {ILM_TEMPLATE_NAME} installed ({alias}-*)")
        if es.indices.exists_alias(name=alias):
            print(f"alias {alias} exists: nothing to bootstrap")
            return 0
        if es.indices.exists(index=alias):
            print(
                f"{alias} is a plain index (created by an earlier `earful setup`), so it cannot become "
                f"the rollover alias. Stop the workers, reindex it into {first_index(alias)}, delete "
                f"{alias}, then run this again; it will add the alias to {first_index(alias)}.",
                file=sys.stderr,
            )
            return 1
        if es.indices.exists(index=first_index(alias)):
            es.indices.update_aliases(actions=[{"add": {"index": first_index(alias), "alias": alias,
                                                        "is_write_index": True}}])
        else:
            es.indices.create(index=first_index(alias), aliases={alias: {"is_write_index": True}})
        print(f"{first_index(alias)} is the write index of alias {alias}")
        return 0
    finally:
        es.close()


if __name__ == "__main__":
    sys.exit(main())

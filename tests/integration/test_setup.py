"""Setup on a cluster that already has earful's indices: their mappings are brought up to date."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

import pytest
from elasticsearch import BadRequestError

from schemas import index_templates
from streams import devstack
from tests.integration.conftest import Stack


def test_setup_adds_a_newer_templates_fields_to_an_existing_index(stack: Stack) -> None:
    name, template = "earful-deliveries", index_templates()["earful-deliveries"]
    older = copy.deepcopy(template)
    del older["template"]["mappings"]["properties"]["first_attempt_at"]
    index = stack.settings.index_deliveries
    doc = {"id": "k1", "status": "pending", "first_attempt_at": datetime.now(UTC).isoformat()}
    es = stack.es()
    try:
        es.indices.put_index_template(name=name, **older)  # the index was created by an older release
        es.indices.create(index=index)
        with pytest.raises(BadRequestError):  # its strict mapping refuses the new field
            es.index(index=index, id="k1", document=doc)

        devstack.install_templates(stack.settings)

        es.index(index=index, id="k1", document=doc, refresh=True)
        assert es.get(index=index, id="k1")["_source"]["first_attempt_at"] == doc["first_attempt_at"]
    finally:
        devstack.install_templates(stack.settings)
        es.close()

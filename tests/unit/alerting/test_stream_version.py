"""An alert names the rules it was raised under, the taxonomy of the moment included."""

from __future__ import annotations

import faust

from streams.alerting.stream import AlertingStream
from streams.settings import Settings


def test_alerts_raised_after_a_taxonomy_reload_name_the_new_taxonomy() -> None:
    app = faust.App("earful-unit-version", broker="kafka://127.0.0.1:1")
    taxonomy = ["tax-agency@1111"]
    stream = AlertingStream(app, Settings(), topics=dict, taxonomy_version=lambda: taxonomy[0])
    before = stream.cfg.lifecycle.config_version
    assert before is not None and before.startswith("alerting-") and before.endswith("+tax-agency@1111")
    stream._follow_taxonomy()
    assert stream.cfg.lifecycle.config_version == before
    taxonomy[0] = "tax-agency@2222"
    stream._follow_taxonomy()
    assert stream.cfg.lifecycle.config_version == before.replace("@1111", "@2222")

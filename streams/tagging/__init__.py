"""Topic tagging: taxonomy rules compiled into one matcher, plus an optional learned tier.

    from streams.tagging import Tagger, TagResult
    tagger = Tagger.load(settings.taxonomy, settings.model, enrich=True)
    result = tagger.tag(mention.text, mention.lang)
    tagger.maybe_reload()   # between batches: picks up an edited taxonomy file

Modules: ``taxonomy`` (the YAML file), ``normalize`` (matching form of a text),
``matcher`` (compiled rules), ``model`` (learned tier), ``enrich`` (language, sentiment),
``tagger`` (how they combine), ``dataset`` (files and the train/held-out split),
``evaluate`` (scores), ``cli`` (``earful tag`` / ``eval`` / ``train``).
"""

from __future__ import annotations

from streams.tagging.tagger import Tagger, TagResult

__all__ = ["TagResult", "Tagger"]

"""The naive worker, for comparison: one event at a time, as a first Faust agent is written.

One Kafka record per mention; per event it validates and tags the mention, ``await``s a
``topic.send()`` of the tagged mention and writes a table (a count per topic). With
``EARFUL_BENCH_NAIVE_INDEX=1`` it also indexes each mention with one ``await es.index()``,
so it does the whole job of ``earful worker``.

Run as ``python -m bench.naive`` with the same EARFUL_* settings as the real worker.
"""

from __future__ import annotations

import os

import faust
import orjson

from schemas import Mention
from streams.app import create_app
from streams.settings import es_client_kwargs, load_settings
from streams.sinks.elasticsearch import make_client
from streams.tagging import Tagger


def main() -> None:
    settings = load_settings()  # a bad value says which variable, never the value
    tagger = Tagger.load(settings.taxonomy, settings.model)
    app = create_app(settings)
    es = make_client(es_client_kwargs(settings))
    source = app.topic(settings.topic_raw, value_serializer="raw", partitions=settings.raw_partitions)
    out = app.topic(settings.topic_counts, value_serializer="raw", partitions=settings.raw_partitions)
    counts = app.Table("naive-counts", default=int, partitions=settings.raw_partitions)
    index_each = bool(os.environ.get("EARFUL_BENCH_NAIVE_INDEX"))

    @app.agent(source)
    async def tag_each(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            mention = Mention.model_validate_json(value)
            result = tagger.tag(mention.text, mention.lang)
            doc = mention.model_dump(mode="json") | {"tags": result.tags}
            if index_each:
                await es.index(index=settings.index_mentions, id=mention.id, document=doc)
            await out.send(key=mention.id.encode(), value=orjson.dumps(doc))
            for tag in result.tags or ["untagged"]:
                counts[tag] += 1

    @app.on_before_shutdown.connect
    async def close(app: faust.App, **kwargs: object) -> None:
        await es.close()

    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()

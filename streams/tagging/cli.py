"""``earful tag`` / ``eval`` / ``train``: the stream's tagger, run over files.

All three read CSV or JSONL and share the row split of :mod:`streams.tagging.dataset`;
``train`` uses ``--split train`` unless told otherwise, so ``eval --split test`` scores
posts the model and its thresholds never saw.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
from tqdm import tqdm

from streams.settings import Settings
from streams.tagging import dataset, evaluate
from streams.tagging import model as model_mod
from streams.tagging import taxonomy as taxonomy_mod
from streams.tagging.matcher import Matcher
from streams.tagging.normalize import normalize
from streams.tagging.tagger import Tagger

BATCH = 512
T = TypeVar("T")


def _chunks(items: Iterator[T], size: int) -> Iterator[list[T]]:
    while chunk := list(islice(items, size)):
        yield chunk


def _progress(desc: str) -> tqdm[Any]:
    # stdout carries the results; the bar goes to stderr and hides itself when not a terminal.
    return tqdm(desc=desc, unit=" rows", file=sys.stderr, disable=None, mininterval=0.5)


def _load_tagger(taxonomy: Path, model: Path | None, enrich: bool, explain: bool = True) -> Tagger:
    try:
        return Tagger.load(taxonomy, model, enrich=enrich, explain=explain)
    except (taxonomy_mod.TaxonomyError, model_mod.ModelError) as exc:
        raise click.ClickException(str(exc)) from exc


def _rows(path: Path, text_col: str, **kwargs: Any) -> Iterator[dataset.Row]:
    try:
        yield from dataset.read_rows(path, text_col, **kwargs)
    except dataset.DataError as exc:
        raise click.ClickException(str(exc)) from exc


_taxonomy_opt = click.option(
    "--taxonomy", type=click.Path(path_type=Path), default=None,
    help="Taxonomy YAML (default: EARFUL_TAXONOMY).",
)
_model_opt = click.option(
    "--model", "model_path", type=click.Path(path_type=Path), default=None,
    help="Model from 'earful train' (default: EARFUL_MODEL, if set).",
)
_split_opt = click.option(
    "--split", type=click.Choice(["train", "test", "all"]), default="all", show_default=True,
    help="Rows to use, by the hash of --id-col (else the row number): train 80%, test 20%.",
)


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--text-col", required=True, help="Column holding the post text.")
@click.option("--id-col", default=None, help="Column holding the row id (default: row number).")
@click.option("--lang-col", default=None, help="Column holding the source's language tag.")
@_taxonomy_opt
@_model_opt
@click.option("--enrich/--no-enrich", default=True, show_default=True, help="Language and sentiment.")
@click.pass_obj
def tag(settings: Settings, path: Path, text_col: str, id_col: str | None, lang_col: str | None,
        taxonomy: Path | None, model_path: Path | None, enrich: bool) -> None:
    """Tag every row of a CSV or JSONL file; one JSON line per row on stdout."""
    tagger = _load_tagger(taxonomy or settings.taxonomy, model_path or settings.model, enrich)
    langs: dict[str, str | None] = {}
    if lang_col:
        langs = {r.id: r.text or None for r in _rows(path, lang_col, id_col=id_col)}
    out = sys.stdout.buffer
    with _progress("tagging") as bar:
        for chunk in _chunks(_rows(path, text_col, id_col=id_col), BATCH):
            results = tagger.tag_many([r.text for r in chunk], [langs.get(r.id) for r in chunk])
            for row, res in zip(chunk, results, strict=True):
                line: dict[str, Any] = {
                    "id": row.id,
                    "tags": res.tags,
                    "scores": res.scores,
                    "why": [w.model_dump(exclude_none=True) for w in res.why],
                }
                if enrich:
                    line["detected_lang"] = res.detected_lang
                    line["sentiment"] = res.sentiment
                out.write(orjson.dumps(line) + b"\n")
            bar.update(len(chunk))
    out.flush()


@click.command(name="eval")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--text-col", required=True)
@click.option("--label-col", required=True, help="Column of topic labels; empty means no topic.")
@click.option("--id-col", default=None, help="Row id column; decides the split.")
@click.option("--label-sep", default=None, help="Separator when a row has several labels.")
@click.option("--topics", default=None, help="Comma-separated topic ids to score (default: labels in the taxonomy).")
@_taxonomy_opt
@_model_opt
@_split_opt
@click.pass_obj
def eval_(settings: Settings, path: Path, text_col: str, label_col: str, id_col: str | None,
          label_sep: str | None, topics: str | None, taxonomy: Path | None, model_path: Path | None,
          split: dataset.Split) -> None:
    """Precision, recall and F1 per topic, and macro-F1, of the tagger against labels."""
    tagger = _load_tagger(taxonomy or settings.taxonomy, model_path or settings.model, enrich=False, explain=False)
    predicted: list[list[str]] = []
    gold: list[frozenset[str]] = []
    rows = _rows(path, text_col, id_col=id_col, label_col=label_col, label_sep=label_sep, split=split)
    with _progress("scoring") as bar:
        for chunk in _chunks(rows, BATCH):
            predicted.extend(r.tags for r in tagger.tag_many([row.text for row in chunk]))
            gold.extend(row.labels for row in chunk)
            bar.update(len(chunk))
    if not gold:
        raise click.ClickException(f"{path}: no rows in split {split!r}")
    labels = set().union(*gold)
    if topics:
        scored = [t.strip() for t in topics.split(",") if t.strip()]
    else:
        scored = sorted(labels & set(tagger.taxonomy.topics))
    if not scored:
        raise click.ClickException(
            f"no label is a topic of {tagger.version} (labels: {', '.join(sorted(labels)) or 'none'})"
        )
    ignored = sorted(labels - set(scored))
    click.echo(f"tagger {tagger.version}, split {split}, {len(gold)} rows")
    if ignored:
        click.echo(f"labels not scored (negatives for every topic): {', '.join(ignored)}")
    click.echo(evaluate.format_table(evaluate.score(predicted, gold, scored), len(gold)))


@click.command()
@click.argument("labelled", type=click.Path(path_type=Path))
@click.option("--text-col", required=True)
@click.option("--label-col", required=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Model file to write.")
@click.option("--id-col", default=None, help="Row id column; decides the split.")
@click.option("--label-sep", default=None, help="Separator when a row has several labels.")
@click.option("--split", type=click.Choice(["train", "all"]), default="train", show_default=True,
              help="Rows to learn from; 'all' leaves nothing held out.")
@click.option("--name", default=None, help="Model name in its version (default: the file's stem).")
@click.option("--c", "c_value", type=float, default=None, help="Inverse regularisation strength.")
@click.option("--embedding", type=click.Choice(["minilm"]), default=None,
              help="Blend in a sentence-embedding tier (all-MiniLM-L6-v2, offline; slow to encode).")
@click.option("--embedding-weight", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=None,
              help="Share of the embedding tier in the blended probability (default 0.2).")
@click.option("--fine-tune", "fine_tune", type=click.IntRange(1, 20), default=None, metavar="EPOCHS",
              help="Blend in the sentence encoder fine-tuned on these labels for EPOCHS epochs "
                   "(needs PyTorch: pip install 'earful[finetune]'; minutes per epoch on a CPU).")
@click.option("--fine-tune-weight", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=None,
              help="Share of the fine-tuned encoder in the blended probability (default 0.3).")
@_taxonomy_opt
@click.pass_obj
def train(settings: Settings, labelled: Path, text_col: str, label_col: str, output: Path,
          id_col: str | None, label_sep: str | None, split: dataset.Split, name: str | None,
          c_value: float | None, embedding: str | None, embedding_weight: float | None,
          fine_tune: int | None, fine_tune_weight: float | None, taxonomy: Path | None) -> None:
    """Train the learned tier from labelled posts, for the topics of a taxonomy."""
    tax_path = taxonomy or settings.taxonomy
    try:
        tax = taxonomy_mod.load(tax_path)
    except taxonomy_mod.TaxonomyError as exc:
        raise click.ClickException(str(exc)) from exc
    matcher = Matcher(tax)
    texts: list[str] = []
    labels: list[frozenset[str]] = []
    hits: list[frozenset[str]] = []
    rows = _rows(labelled, text_col, id_col=id_col, label_col=label_col, label_sep=label_sep, split=split)
    with _progress("reading") as bar:
        for row in rows:
            m = matcher.match(row.text)
            texts.append(normalize(row.text).for_model())
            labels.append(row.labels)
            hits.append(frozenset(m.reasons))
            bar.update(1)
    known = set(tax.topics)
    all_labels = set().union(*labels) if labels else set()
    if not all_labels & known:
        raise click.ClickException(
            f"no label is a topic of {tax.version} (labels: {', '.join(sorted(all_labels)) or 'none'})"
        )
    if all_labels - known:
        click.echo(f"labels not in the taxonomy (negatives): {', '.join(sorted(all_labels - known))}", err=True)
    if embedding_weight is not None and not embedding:
        raise click.UsageError("--embedding-weight needs --embedding")
    if fine_tune_weight is not None and not fine_tune:
        raise click.UsageError("--fine-tune-weight needs --fine-tune")
    params: dict[str, Any] = {}
    if c_value is not None:
        params["C"] = c_value
    if embedding:
        params["embedding"] = embedding
    if embedding_weight is not None:
        params["embedding_weight"] = embedding_weight
    if fine_tune:
        params["fine_tune"] = fine_tune
    if fine_tune_weight is not None:
        params["fine_tune_weight"] = fine_tune_weight
    try:
        model = model_mod.train(
            texts, labels, sorted(all_labels & known), rule_hits=hits, taxonomy=tax.name,
            taxonomy_hash=tax.content_hash, name=name or output.stem, params=params,
            progress=lambda msg: click.echo(msg, err=True),
        )
    except model_mod.ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    model.save(output)
    click.echo(f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB), version {model.version}")
    for topic in model.meta.topics:
        click.echo(f"  {topic}: {model.meta.positives[topic]} examples, threshold {model.meta.thresholds[topic]}")


commands: Sequence[click.Command] = [tag, eval_, train]

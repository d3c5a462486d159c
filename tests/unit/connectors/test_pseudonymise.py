"""With an author key configured, a stored mention names its author by a keyed label (``anon:...``), never by handle."""

from __future__ import annotations

from pathlib import Path

import pytest
from cases import CASES, Case, build
from fake_platform import FakePlatform
from pydantic import SecretStr

from connectors.replay_source import LoopingReplay, ReplaySourceConfig
from connectors.text import Pseudonymiser
from schemas import Mention, utcnow

KEY = SecretStr("author-hash-key-for-tests")
ANON = Pseudonymiser(KEY)

# Where a platform's post address itself carries the author's handle (https://aus.social/@kaz/...):
# the link is kept, since an alert's samples must open the post, so the handle may appear there and
# only there. X and Bluesky links open the post without it (x.com/i/web/status/<id>,
# bsky.app/profile/<did>/post/<rkey>), so theirs are checked like every other field.
HANDLE_IN_ADDRESS = {"mastodon": {"url", "native_id"}}
# An RSS "author" is the publisher (or the feed's title), which the headline itself names.
PUBLISHER_IS_AUTHOR = {"rss"}


async def _read(case: Case, author_key: SecretStr | None) -> dict[str, Mention]:
    """The first page of ``case``'s platform, by native id, as read with (or without) an author key."""
    async with FakePlatform() as fake:
        case.setup(fake)
        fake.on(case.route, case.page)
        connector = build(case.entry(fake.url), author_key=author_key)
        try:
            page = await connector.poll(None)
        finally:
            await connector.aclose()
    assert page.mentions
    return {m.native_id: m for m in page.mentions}


def _shown(handle: str) -> set[str]:
    """The handle as the platform gave it, and bare (``@name``, ``u/name`` and ``name@server`` name ``name``)."""
    bare = handle.removeprefix("u/").lstrip("@").split("@")[0]
    return {handle, bare}


async def test_a_configured_key_replaces_every_connectors_author_by_its_label(case: Case) -> None:
    plain = await _read(case, None)
    keyed = await _read(case, KEY)
    assert keyed.keys() == plain.keys()
    for native_id, mention in keyed.items():
        handle = plain[native_id].author
        assert handle and not handle.startswith("anon:")
        assert mention.author == ANON(handle)
        assert mention.author.startswith("anon:")  # type: ignore[union-attr]


@pytest.mark.parametrize("case", [c for c in CASES if c.id not in PUBLISHER_IS_AUTHOR],
                         ids=lambda c: c.id, indirect=True)
async def test_the_handle_appears_nowhere_in_a_pseudonymised_mention_but_its_link(case: Case) -> None:
    plain = await _read(case, None)
    keyed = await _read(case, KEY)
    links = HANDLE_IN_ADDRESS.get(case.id, set())
    for native_id, mention in keyed.items():
        stored = mention.model_dump_json(exclude=links or None)
        for shown in _shown(plain[native_id].author or ""):
            assert shown not in stored, f"{shown!r} in {stored}"


def _replay(tmp_path: Path, *, author_key: SecretStr | None) -> LoopingReplay:
    path = tmp_path / "posts.csv"
    path.write_text("id,created_at,author,text\n"
                    "1,2024-11-20T03:12:00Z,kaz_the_taxpayer,refund late again\n"
                    "2,2024-11-20T03:13:00Z,@sydney_local,myGov down all morning\n")
    config = ReplaySourceConfig(type="replay", name="demo", path=path, as_fast_as_possible=True, loop=True)
    return LoopingReplay(config, author_key=author_key)


async def test_a_replayed_files_author_column_reaches_no_stored_mention_on_any_lap(tmp_path: Path) -> None:
    # The replay reads no author column (and keeps no raw row unless keep_raw is on): with or
    # without a key, the handles in the file are stored nowhere, on the first lap or the next.
    connector = _replay(tmp_path, author_key=KEY)
    cursor = None
    stored: list[Mention] = []
    for _ in range(2):  # the first lap and a relabelled second one
        page = await connector.poll(cursor)
        stored += page.mentions
        cursor = page.next_cursor
    assert [m.native_id for m in stored] == ["1", "2", "1#lap2", "2#lap2"]
    for mention in stored:
        assert mention.author is None or mention.author.startswith("anon:")
        text = mention.model_dump_json()
        assert "kaz_the_taxpayer" not in text and "sydney_local" not in text


@pytest.mark.parametrize("lap", [0, 1])
def test_a_replayed_mention_with_an_author_is_relabelled_with_the_key(tmp_path: Path, lap: int) -> None:
    # The CSV reader keeps no author column today; a mention that has one is still stored by label only.
    connector = _replay(tmp_path, author_key=KEY)
    given = Mention.build(source="demo", native_id="7", text="refund late again", created_at=utcnow(),
                          author="@Kaz_The_Taxpayer")
    relabelled = connector._relabel(given, lap)
    assert relabelled.author == ANON("@Kaz_The_Taxpayer") and relabelled.author.startswith("anon:")  # type: ignore[union-attr]
    assert "kaz_the_taxpayer" not in relabelled.model_dump_json().lower()


@pytest.mark.parametrize("case", [c for c in CASES if c.id in ("x", "bluesky")], ids=lambda c: c.id, indirect=True)
async def test_a_pseudonymised_link_still_opens_the_same_post(case: Case) -> None:
    plain = await _read(case, None)
    keyed = await _read(case, KEY)
    for native_id, mention in keyed.items():
        assert mention.url and plain[native_id].url
        if case.id == "x":
            assert mention.url == f"https://x.com/i/web/status/{native_id}"
        else:  # at://<did>/app.bsky.feed.post/<rkey>
            did, _, rkey = native_id.removeprefix("at://").split("/")
            assert mention.url == f"https://bsky.app/profile/{did}/post/{rkey}"
        # Only the part that named the author changed.
        assert mention.url.rsplit("/", 1)[-1] == plain[native_id].url.rsplit("/", 1)[-1]


@pytest.mark.parametrize(("did", "url"), [
    ("did:plc:abc123", "https://bsky.app/profile/did:plc:abc123/post/3kxyz"),
    (None, None),  # no DID to open it by: no link, rather than one that names the author
])
def test_a_bluesky_post_whose_id_names_its_author_gets_no_handle_in_its_link(did: str | None, url: str | None) -> None:
    from connectors.http import Native

    connector = build({"name": "bsky-test", "type": "bluesky", "base_url": "http://127.0.0.1:9",
                       "pds_url": "http://127.0.0.1:9", "queries": ["myGov"]}, author_key=KEY)
    post = {"uri": "at://kaz.bsky.social/app.bsky.feed.post/3kxyz",
            "author": {"handle": "kaz.bsky.social", **({"did": did} if did else {})},
            "record": {"text": "is myGov down?", "createdAt": "2026-11-23T09:00:00Z"}}
    mention = connector.to_mention(Native(post, "myGov"))  # type: ignore[attr-defined]
    assert mention.url == url and mention.author == ANON("kaz.bsky.social")

"""What YouTube and the Graph API say in their own words: quotas, refused keys, expired tokens, searches."""

from __future__ import annotations

import logging

import pytest
from cases import build
from fake_platform import FakePlatform, Reply, fixture

from connectors.base import FatalError, RetriableError
from connectors.config import parse_sources

YT_KEY = "AIzaSyD-youtube-key-secret-123"
FB_TOKEN = "EAAGm0PX4ZCpsBAfacebook-page-token-secret"


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EARFUL_YOUTUBE_API_KEY", YT_KEY)
    monkeypatch.setenv("EARFUL_FACEBOOK_PAGE_TOKEN", FB_TOKEN)


def youtube(url: str, **options: object) -> dict[str, object]:
    return {"name": "yt", "type": "youtube", "base_url": url, **options}


def facebook(url: str) -> dict[str, object]:
    return {"name": "fb", "type": "facebook", "base_url": url, "pages": ["104958162837"]}


async def _poll_error(entry: dict[str, object], route: str, reply: Reply, fake: FakePlatform) -> Exception:
    fake.on(route, reply)
    connector = build(entry)
    try:
        with pytest.raises((FatalError, RetriableError)) as caught:
            await connector.poll(None)
    finally:
        await connector.aclose()
    return caught.value


async def test_youtube_quota_used_up_is_a_wait_not_a_broken_key() -> None:
    async with FakePlatform() as fake:
        error = await _poll_error(youtube(fake.url, channels=["UCx"]), "/commentThreads",
                                  Reply(fixture("youtube", "quota_exceeded.json"), status=403), fake)
    assert isinstance(error, RetriableError)
    assert error.retry_after and error.retry_after >= 600
    assert "quotaExceeded" in str(error)


async def test_youtube_refused_key_is_fatal_names_the_variable_and_never_shows_the_key(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakePlatform() as fake:
        error = await _poll_error(youtube(fake.url, channels=["UCx"]), "/commentThreads",
                                  Reply(fixture("youtube", "key_invalid.json"), status=400), fake)
        sent = fake.seen("/commentThreads")[0]
    assert isinstance(error, FatalError)
    assert "EARFUL_YOUTUBE_API_KEY" in str(error) and "API key not valid" in str(error)
    assert YT_KEY not in str(error) and YT_KEY not in caplog.text
    # The key goes in a header, so no URL (in a log line or an error) can carry it.
    assert sent.headers.get("X-goog-api-key") == YT_KEY
    assert YT_KEY not in str(sent.query)


async def test_youtube_search_maps_videos_and_asks_only_for_newer_ones() -> None:
    async with FakePlatform() as fake:
        fake.on("/search", Reply(fixture("youtube", "search_videos.json")))
        connector = build(youtube(fake.url, searches=["Australian Taxation Office"], region_code="AU"))
        try:
            first = await connector.poll(None)
            await connector.poll(first.next_cursor)
        finally:
            await connector.aclose()
        requests = fake.seen("/search")
    by_id = {m.native_id: m for m in first.mentions}
    assert set(by_id) == {"video:r4nD0mV1d3o", "video:t4xT1m3Rf0d"}
    video = by_id["video:r4nD0mV1d3o"]
    assert video.text.startswith("ATO data-matching") and "&amp;" not in video.text
    assert video.url == "https://www.youtube.com/watch?v=r4nD0mV1d3o"
    assert video.query == "Australian Taxation Office"
    assert requests[0].query["type"] == "video" and requests[0].query["order"] == "date"
    assert requests[0].query["regionCode"] == "AU" and "publishedAfter" not in requests[0].query
    assert requests[1].query["publishedAfter"] == "2024-11-19T22:00:01Z"


async def test_youtube_comment_links_to_the_comment_on_its_video() -> None:
    async with FakePlatform() as fake:
        fake.on("/commentThreads", Reply(fixture("youtube", "comment_threads.json")))
        connector = build(youtube(fake.url, videos=["dQ1ato2024tx"]))
        try:
            page = await connector.poll(None)
        finally:
            await connector.aclose()
        asked = fake.seen("/commentThreads")[0].query
    assert asked["videoId"] == "dQ1ato2024tx" and asked["order"] == "time"
    mention = next(m for m in page.mentions if m.native_id == "UgzKp0tN7cG3bV5e9Xh4AaABAg")
    assert mention.url == "https://www.youtube.com/watch?v=dQ1ato2024tx&lc=UgzKp0tN7cG3bV5e9Xh4AaABAg"
    assert mention.text == "Lodged my return through myGov in July and still no refund & no update.\nAnyone else?"
    assert mention.author == "@sarahk_melb"
    assert mention.engagement is not None and mention.engagement.likes == 14


COMMENTS_DISABLED = {"error": {"code": 403, "message": "The video identified by the videoId parameter has disabled "
                                                      "comments.",
                                "errors": [{"domain": "youtube.commentThread", "reason": "commentsDisabled",
                                            "location": "videoId", "locationType": "parameter"}]}}


async def test_youtube_video_with_comments_turned_off_is_skipped_and_the_others_are_read(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with FakePlatform() as fake:
        fake.on("/commentThreads", Reply(COMMENTS_DISABLED, status=403),
                Reply(fixture("youtube", "comment_threads.json")))
        connector = build(youtube(fake.url, videos=["off1ato2024x", "dQ1ato2024tx"]))
        try:
            page = await connector.poll(None)
        finally:
            await connector.aclose()
        asked = [r.query["videoId"] for r in fake.seen("/commentThreads")]
    assert asked == ["off1ato2024x", "dQ1ato2024tx"]
    assert "UgzKp0tN7cG3bV5e9Xh4AaABAg" in {m.native_id for m in page.mentions}
    assert page.next_cursor is not None and set(page.next_cursor) == {"video:dQ1ato2024tx"}
    assert "comments are turned off" in page.skipped["video:off1ato2024x"]
    assert "EARFUL_YOUTUBE_API_KEY" not in str(page.skipped)  # the key is fine: nobody should go and check it


def test_youtube_needs_something_to_ask() -> None:
    from connectors.config import ConfigError, parse_sources

    with pytest.raises(ConfigError, match="channels"):
        parse_sources([{"name": "yt", "type": "youtube"}])


async def test_facebook_expired_token_is_fatal_names_the_variable_and_never_shows_the_token(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakePlatform() as fake:
        error = await _poll_error(facebook(fake.url), "/v21.0/104958162837/posts",
                                  Reply(fixture("facebook", "token_expired.json"), status=400), fake)
        sent = fake.seen("/v21.0/104958162837/posts")[0]
    assert isinstance(error, FatalError)
    assert "190" in str(error) and "EARFUL_FACEBOOK_PAGE_TOKEN" in str(error)
    assert FB_TOKEN not in str(error) and FB_TOKEN not in caplog.text
    assert sent.headers.get("Authorization") == f"Bearer {FB_TOKEN}" and "access_token" not in sent.query


async def test_facebook_page_rate_limit_is_retriable() -> None:
    usage = '{"104958162837":[{"type":"pages","call_count":100,"total_cputime":20,"total_time":25,' \
            '"estimated_time_to_regain_access":7}]}'
    async with FakePlatform() as fake:
        error = await _poll_error(facebook(fake.url), "/v21.0/104958162837/posts",
                                  Reply(fixture("facebook", "rate_limited.json"), status=400,
                                        headers={"X-Business-Use-Case-Usage": usage}), fake)
    assert isinstance(error, RetriableError)
    assert error.retry_after == 7 * 60


async def test_facebook_usage_at_the_limit_holds_the_next_request() -> None:
    async with FakePlatform() as fake:
        fake.on("/v21.0/104958162837/posts", Reply(fixture("facebook", "page_posts.json"), headers={
            "X-App-Usage": '{"call_count":100,"total_cputime":10,"total_time":12}'}))
        connector = build(facebook(fake.url))
        try:
            first = await connector.poll(None)
            assert len(first.mentions) == 2  # the answer that reported the limit is still delivered
            with pytest.raises(RetriableError) as caught:
                await connector.poll(first.next_cursor)
        finally:
            await connector.aclose()
        assert len(fake.seen("/v21.0/104958162837/posts")) == 1
    assert caught.value.retry_after is not None and caught.value.retry_after > 0


async def test_facebook_reply_points_at_its_parent_comment() -> None:
    async with FakePlatform() as fake:
        fake.on("/v21.0/104958162837/posts", Reply(fixture("facebook", "page_posts.json")))
        connector = build(facebook(fake.url))
        try:
            page = await connector.poll(None)
        finally:
            await connector.aclose()
        fields = fake.seen("/v21.0/104958162837/posts")[0].query["fields"]
    assert "comments.filter(stream).order(reverse_chronological)" in fields
    by_id = {m.native_id: m for m in page.mentions}
    reply = by_id["1023456789012345_1187654321098799"]
    top = by_id["1023456789012345_1187654321098765"]
    assert reply.reply_to == "1023456789012345_1187654321098765"
    assert top.reply_to == "104958162837_1023456789012345"  # the Page post
    assert top.author == "Priya Raman" and top.created_at.isoformat() == "2024-11-20T03:44:12+00:00"


async def test_a_secret_file_never_shows_in_errors_or_logs(tmp_path, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("EARFUL_FACEBOOK_PAGE_TOKEN")
    secret_file = tmp_path / "facebook-token"
    secret_file.write_text("EAAfile-held-page-token-987\n")
    async with FakePlatform() as fake:
        error = await _poll_error({**facebook(fake.url), "token_env": None, "token_file": str(secret_file)},
                                  "/v21.0/104958162837/posts",
                                  Reply(fixture("facebook", "token_expired.json"), status=400), fake)
        sent = fake.seen("/v21.0/104958162837/posts")[0]
    assert sent.headers["Authorization"] == "Bearer EAAfile-held-page-token-987"
    assert isinstance(error, FatalError) and str(secret_file) in str(error)
    assert "EAAfile-held-page-token-987" not in str(error) + repr(error) + caplog.text


def test_a_secret_file_with_a_second_line_is_refused_without_showing_it(  # type: ignore[no-untyped-def]
        tmp_path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("EARFUL_FACEBOOK_PAGE_TOKEN")
    secret_file = tmp_path / "facebook-token"
    secret_file.write_text("EAAfile-held-page-token-987\nexpires 2026-12-01\n")
    entry = {**facebook("http://127.0.0.1:9"), "token_env": None, "token_file": str(secret_file)}
    [config] = parse_sources([entry])
    [problem] = config.missing_credentials()  # so `earful connect` skips the source, saying why
    assert str(secret_file) in problem and "second line" in problem
    with pytest.raises(FatalError) as caught:
        build(entry)
    assert str(secret_file) in str(caught.value)
    assert "EAAfile-held-page-token-987" not in problem + str(caught.value) + repr(caught.value) + caplog.text

"""One entry per connector for the contract suite: how to build it against the fake
platform, which route lists mentions, and the recorded pages to serve."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fake_platform import FakePlatform, Reply, fixture

from connectors import registry
from connectors.base import Connector
from connectors.config import parse_sources


def build(entry: dict[str, Any], **kwargs: Any) -> Connector:
    (config,) = parse_sources([entry])
    return registry.build(config, **kwargs)


@dataclass
class Case:
    id: str
    entry: Callable[[str], dict[str, Any]]  # base URL of the fake platform -> config entry
    route: str
    page: Reply
    empty: Reply
    malformed: Reply
    expect_ids: set[str]
    cursor_param: tuple[str, str] | None  # (query parameter, value) the second poll must send
    credential: str | None = None  # the env var a 401 must name
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[FakePlatform], None] = lambda fake: None
    # Pagination: after ``page`` set the watermark, newer items arrive over several pages.
    more: list[tuple[str, Reply]] = field(default_factory=list)  # (route, reply), served in order per route
    more_ids: set[str] = field(default_factory=set)
    page_param: tuple[str, str, str] | None = None  # (route, parameter, value) a follow-up request must send


def _json(platform: str, name: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(fixture(platform, name), headers=headers or {})


def _xml(name: str) -> Reply:
    return Reply(fixture("rss", name), content_type="application/rss+xml")


CASES: list[Case] = [
    Case(
        id="mastodon",
        entry=lambda url: {"name": "mastodon-test", "type": "mastodon", "base_url": url, "hashtags": ["ATO"]},
        route="/api/v1/timelines/tag/ATO",
        page=_json("mastodon", "tag_page.json", {
            "Link": '<https://mastodon.social/api/v1/timelines/tag/ATO?max_id=113512345678901234>; rel="next", '
                    '<https://mastodon.social/api/v1/timelines/tag/ATO?min_id=113512345678901235>; rel="prev"'}),
        empty=_json("mastodon", "empty.json"),
        malformed=_json("mastodon", "tag_malformed.json"),
        expect_ids={"https://aus.social/users/kaz/statuses/113512345678901235",
                    "https://mastodon.social/users/taxnerd/statuses/113512345678901234"},
        cursor_param=("min_id", "113512345678901235"),
    ),
    Case(
        id="rss",
        entry=lambda url: {"name": "news-test", "type": "rss", "base_url": url,
                           "feeds": [{"url": "/rss/search", "query": '"Australian Taxation Office"'}]},
        route="/rss/search",
        page=Reply(fixture("rss", "news_search.xml"), content_type="application/rss+xml",
                   headers={"ETag": '"v1"', "Last-Modified": "Wed, 20 Nov 2024 04:01:12 GMT"}),
        empty=_xml("empty.xml"),
        malformed=Reply(fixture("rss", "malformed.xml"), content_type="application/atom+xml"),
        expect_ids={"CBMiAbc123", "CBMiDef456"},
        cursor_param=None,
    ),
    Case(
        id="hackernews",
        entry=lambda url: {"name": "hn-test", "type": "hackernews", "base_url": url,
                           "queries": ['"Australian Taxation Office"']},
        route="/api/v1/search_by_date",
        page=_json("hackernews", "search_page.json"),
        empty=_json("hackernews", "empty.json"),
        malformed=_json("hackernews", "malformed.json"),
        expect_ids={"42170123", "42170001"},
        cursor_param=("numericFilters", "created_at_i>=1732072212"),
    ),
    Case(
        id="bluesky",
        entry=lambda url: {"name": "bsky-test", "type": "bluesky", "base_url": url, "pds_url": url,
                           "queries": ["ATO"], "identifier_env": "TEST_BSKY_ID", "password_env": "TEST_BSKY_PASSWORD"},
        route="/xrpc/app.bsky.feed.searchPosts",
        page=_json("bluesky", "search_page.json"),
        empty=_json("bluesky", "empty.json"),
        malformed=_json("bluesky", "malformed.json"),
        expect_ids={"at://did:plc:z72i7hdynmk6r22z27h6tvur/app.bsky.feed.post/3lbb5ipaaqk2a",
                    "at://did:plc:ewvi7nxzyoun6zhxrhs64oiz/app.bsky.feed.post/3lbb4zzzzzz2x"},
        cursor_param=("since", "2024-11-20T03:12:00.000000Z"),
        credential="TEST_BSKY_PASSWORD",
        env={"TEST_BSKY_ID": "agency-listening.bsky.social", "TEST_BSKY_PASSWORD": "app-pass-secret-1"},
        setup=lambda fake: fake.on("/xrpc/com.atproto.server.createSession", _json("bluesky", "session.json")),
    ),
    Case(
        id="reddit",
        entry=lambda url: {"name": "reddit-test", "type": "reddit", "base_url": url, "auth_url": url,
                           "searches": ["ATO refund"]},
        route="/search",
        page=_json("reddit", "search_page.json", {"x-ratelimit-remaining": "99.0", "x-ratelimit-used": "1",
                                                   "x-ratelimit-reset": "420"}),
        empty=_json("reddit", "empty.json"),
        malformed=_json("reddit", "malformed.json"),
        expect_ids={"t3_1gvxabc", "t3_1gvx9zz"},
        cursor_param=("before", "t3_1gvxabc"),
        credential="EARFUL_REDDIT_CLIENT_ID",
        env={"EARFUL_REDDIT_CLIENT_ID": "reddit-client-id-1", "EARFUL_REDDIT_CLIENT_SECRET": "reddit-secret-xyz"},
        setup=lambda fake: fake.on("/api/v1/access_token", _json("reddit", "token.json")),
    ),
    Case(
        id="x",
        entry=lambda url: {"name": "x-test", "type": "x", "base_url": url, "queries": ['"myGov" OR @ato_gov_au']},
        route="/2/tweets/search/recent",
        page=_json("x", "search_page.json", {"x-rate-limit-limit": "450", "x-rate-limit-remaining": "449",
                                             "x-rate-limit-reset": "1732073400"}),
        empty=_json("x", "empty.json"),
        malformed=_json("x", "malformed.json"),
        expect_ids={"1859081234567890123", "1859079876543210987"},
        cursor_param=("since_id", "1859081234567890123"),
        credential="EARFUL_X_BEARER_TOKEN",
        env={"EARFUL_X_BEARER_TOKEN": "AAAAAAAAAAAAAAAAAAAAAbearer-secret"},
        more=[("/2/tweets/search/recent", _json("x", "page1_of_2.json")),
              ("/2/tweets/search/recent", _json("x", "page2_of_2.json"))],
        more_ids={"1859100000000000003", "1859090000000000002"},
        page_param=("/2/tweets/search/recent", "next_token", "b26v89c19zqg8o3fpds"),
    ),
    Case(
        id="youtube",
        entry=lambda url: {"name": "youtube-test", "type": "youtube", "base_url": url,
                           "channels": ["UCe_Tn9u_0R2tq5l2V0dTQ8g"]},
        route="/commentThreads",
        page=_json("youtube", "comment_threads.json"),
        empty=_json("youtube", "empty.json"),
        malformed=_json("youtube", "malformed.json"),
        expect_ids={"UgzKp0tN7cG3bV5e9Xh4AaABAg", "UgwT3x9bQm1f2L8aZkJ4AaABAg"},
        cursor_param=None,  # commentThreads has no "since": the sweep stops at the watermark
        credential="EARFUL_YOUTUBE_API_KEY",
        env={"EARFUL_YOUTUBE_API_KEY": "AIzaSyD-youtube-key-secret-123"},
        more=[("/commentThreads", _json("youtube", "newer_page1.json")),
              ("/commentThreads", _json("youtube", "newer_page2.json"))],
        more_ids={"UgxNewer1a2b3c4d5e6f7g8AaABAg", "UgyNewer2h9i8j7k6l5m4n3AaABAg"},
        page_param=("/commentThreads", "pageToken", "QURTSl9pMk5ld2VyUGFnZTI="),
    ),
    Case(
        id="facebook",
        entry=lambda url: {"name": "facebook-test", "type": "facebook", "base_url": url,
                           "pages": ["104958162837"]},
        route="/v21.0/104958162837/posts",
        page=_json("facebook", "page_posts.json", {
            "X-App-Usage": '{"call_count":12,"total_cputime":3,"total_time":4}'}),
        empty=_json("facebook", "empty.json"),
        malformed=_json("facebook", "malformed.json"),
        expect_ids={"1023456789012345_1187654321098765", "1023456789012345_1187654321098799"},
        cursor_param=None,  # comments have no "since": the sweep filters at the watermark
        credential="EARFUL_FACEBOOK_PAGE_TOKEN",
        env={"EARFUL_FACEBOOK_PAGE_TOKEN": "EAAGm0PX4ZCpsBAfacebook-page-token-secret"},
        more=[("/v21.0/104958162837/posts", _json("facebook", "busy_post_first.json")),
              ("/v21.0/104958162837_1030000000000001/comments", _json("facebook", "busy_post_rest.json"))],
        more_ids={"1030000000000001_2000000000000004", "1030000000000001_2000000000000003",
                  "1030000000000001_2000000000000002"},
        page_param=("/v21.0/104958162837_1030000000000001/comments", "after", "QVFIUmFmdGVyMQ"),
    ),
]

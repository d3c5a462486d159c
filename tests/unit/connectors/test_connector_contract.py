"""The contract every connector keeps, run over every connector against a real local HTTP server."""

from __future__ import annotations

import logging
import socket

import pytest
from cases import CASES, Case, build
from fake_platform import FakePlatform, Reply

from connectors.base import FatalError, Page, RetriableError


async def test_poll_pages_and_cursor_advances_without_duplicates(case: Case) -> None:
    async with FakePlatform() as fake:
        case.setup(fake)
        fake.on(case.route, case.page, case.page, case.empty)
        connector = build(case.entry(fake.url))
        try:
            first = await connector.poll(None)
            assert isinstance(first, Page)
            assert {m.native_id for m in first.mentions} == case.expect_ids
            assert not first.rejected
            assert first.next_cursor
            # The platform answers the same page again (an overlap, or a filter it ignored).
            second = await connector.poll(first.next_cursor)
            assert not {m.id for m in second.mentions} & {m.id for m in first.mentions}
            if case.cursor_param is not None:
                name, value = case.cursor_param
                assert fake.seen(case.route)[1].query.get(name) == value
            third = await connector.poll(second.next_cursor)
            assert third.mentions == [] and third.rejected == []
            assert third.next_cursor
        finally:
            await connector.aclose()


async def test_every_mention_is_complete(case: Case) -> None:
    async with FakePlatform() as fake:
        case.setup(fake)
        fake.on(case.route, case.page)
        connector = build(case.entry(fake.url))
        try:
            page = await connector.poll(None)
        finally:
            await connector.aclose()
    assert page.mentions  # the checks below must have something to check
    for mention in page.mentions:
        assert mention.text and mention.url and mention.author and mention.query
        assert mention.created_at.tzinfo is not None
        assert "<" not in mention.text  # HTML turned into text


async def test_rate_limit_is_retriable_with_retry_after(case: Case) -> None:
    async with FakePlatform() as fake:
        case.setup(fake)
        fake.on(case.route, Reply({"error": "Too many requests"}, status=429, headers={"Retry-After": "7"}))
        connector = build(case.entry(fake.url))
        try:
            with pytest.raises(RetriableError) as caught:
                await connector.poll(None)
        finally:
            await connector.aclose()
    assert caught.value.retry_after == 7


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_error_is_retriable(case: Case, status: int) -> None:
    async with FakePlatform() as fake:
        case.setup(fake)
        fake.on(case.route, Reply(f"<html>server error {status}</html>", status=status, content_type="text/html"))
        connector = build(case.entry(fake.url))
        try:
            with pytest.raises(RetriableError):
                await connector.poll(None)
        finally:
            await connector.aclose()


async def test_unauthorised_is_fatal_and_names_the_credential(case: Case, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakePlatform() as fake:
        case.setup(fake)
        fake.on(case.route, Reply({"error": "invalid_token", "message": "The access token expired"}, status=401))
        connector = build(case.entry(fake.url))
        try:
            with pytest.raises(FatalError) as caught:
                await connector.poll(None)
        finally:
            await connector.aclose()
    message = str(caught.value)
    assert "401" in message
    if case.credential:
        assert case.credential in message
    for secret in case.env.values():
        assert secret not in message and secret not in caplog.text


async def test_malformed_item_is_rejected_with_reason(case: Case) -> None:
    async with FakePlatform() as fake:
        case.setup(fake)
        fake.on(case.route, case.malformed)
        connector = build(case.entry(fake.url))
        try:
            page = await connector.poll(None)
        finally:
            await connector.aclose()
    assert len(page.mentions) == 1
    assert len(page.rejected) == 1
    assert page.rejected[0].reason.startswith(f"{connector.name}: ")
    assert page.rejected[0].payload  # the native item travels with the reason


async def test_empty_first_page(case: Case) -> None:
    async with FakePlatform() as fake:
        case.setup(fake)
        fake.on(case.route, case.empty)
        connector = build(case.entry(fake.url))
        try:
            page = await connector.poll(None)
        finally:
            await connector.aclose()
    assert page.mentions == [] and page.rejected == [] and not page.has_more


@pytest.mark.parametrize("paged", [c for c in CASES if c.more], ids=lambda c: c.id)
async def test_newer_items_over_several_pages_are_read_once_each(paged: Case,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in paged.env.items():
        monkeypatch.setenv(name, value)
    async with FakePlatform() as fake:
        paged.setup(fake)
        routes: dict[str, list[Reply]] = {paged.route: [paged.page]}
        for route, reply in paged.more:
            routes.setdefault(route, []).append(reply)
        for route, replies in routes.items():
            fake.on(route, *replies)
        connector = build(paged.entry(fake.url))
        try:
            first = await connector.poll(None)
            cursor, seen = first.next_cursor, [m.native_id for m in first.mentions]
            for _ in range(5):
                page = await connector.poll(cursor)
                seen += [m.native_id for m in page.mentions]
                cursor = page.next_cursor
                if not page.has_more:
                    break
        finally:
            await connector.aclose()
    assert sorted(seen) == sorted(paged.expect_ids | paged.more_ids)  # every item, each once
    assert paged.page_param is not None
    route, name, value = paged.page_param
    assert value in [r.query.get(name) for r in fake.seen(route)]


async def test_unreachable_platform_is_retriable_and_never_shows_secrets(
        case: Case, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    connector = build(case.entry(url))
    try:
        with pytest.raises(RetriableError) as caught:
            await connector.poll(None)
    finally:
        await connector.aclose()
    assert connector.name in str(caught.value)
    for secret in case.env.values():
        assert secret not in str(caught.value) and secret not in repr(caught.value) and secret not in caplog.text

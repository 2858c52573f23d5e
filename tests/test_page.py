"""The demo page in Debian's Chromium, against this server (no media server needed here)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import post_webhook, wait_until, webhook_event

pytestmark = pytest.mark.browser


def event_rows(page: Any) -> Any:
    return page.locator("#event-list li.event")


def test_page_loads_everything_from_its_own_origin(page: Any, server_process: Any) -> None:
    server = server_process()
    hosts: set[str] = set()
    problems: list[str] = []
    page.on("request", lambda request: hosts.add(urlsplit(request.url).netloc))
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(server.url + "/")
    page.wait_for_selector('#socket-state[data-state="live"]')
    assert page.title() == "LiveKit room and webhook events"
    assert page.input_value("#livekit-url") == "ws://localhost:7880"
    assert page.input_value("#participant-name").startswith("guest-")
    assert hosts == {f"127.0.0.1:{server.port}"}
    assert problems == []


def test_a_webhook_appears_in_the_panel_with_its_json(page: Any, server_process: Any) -> None:
    server = server_process()
    page.goto(server.url + "/")
    page.wait_for_selector('#socket-state[data-state="live"]')
    event = webhook_event(
        "participant_joined", room="standup", participant={"identity": "carol", "sid": "PA_9"}
    )
    assert post_webhook(server.url, event) == 200
    row = event_rows(page).first
    row.wait_for()
    assert row.locator(".event-type").inner_text() == "participant_joined"
    assert row.locator(".event-room").inner_text() == "standup"
    assert "carol" in row.locator(".event-detail").inner_text()
    assert page.inner_text("#event-count") == "1"
    row.locator("button").press("Enter")  # keyboard opens the detail view
    shown = json.loads(row.locator("pre").inner_text())
    assert shown == event
    assert row.locator("button").get_attribute("aria-expanded") == "true"


def test_filters_by_type_and_by_room(page: Any, server_process: Any) -> None:
    server = server_process()
    page.goto(server.url + "/")
    page.wait_for_selector('#socket-state[data-state="live"]')
    for event in (
        webhook_event("room_started", room="a"),
        webhook_event("room_started", room="b"),
        webhook_event("participant_joined", room="a"),
    ):
        assert post_webhook(server.url, event) == 200
    wait_until(page, "() => document.querySelectorAll('#event-list li.event').length === 3")
    page.select_option("#type-filter", "room_started")
    assert event_rows(page).locator("visible=true").count() == 2
    page.fill("#room-name", "a")
    page.check("#room-only")
    visible = event_rows(page).locator("visible=true")
    assert visible.count() == 1 and visible.locator(".event-room").inner_text() == "a"


def test_a_failing_token_request_shows_its_error_message(page: Any, server_process: Any) -> None:
    server = server_process()
    page.goto(server.url + "/")
    # A name longer than the server allows (the form's own limit removed, as a script could).
    page.evaluate("document.getElementById('participant-name').removeAttribute('maxlength')")
    page.fill("#participant-name", "x" * 300)
    page.click("#join-button")
    error = page.locator("#room-error")
    error.wait_for()
    assert error.inner_text() == "Could not get a token: participantName must be at most 256 characters"
    assert page.is_enabled("#join-button") and page.is_hidden("#in-room")


def test_livekit_unreachable_is_said_in_words(page: Any, server_process: Any) -> None:
    server = server_process()
    page.goto(server.url + "/")
    page.fill("#livekit-url", "ws://127.0.0.1:9")
    page.click("#join-button")
    page.locator("#room-error").wait_for(timeout=30_000)
    assert "Could not connect to the LiveKit server at ws://127.0.0.1:9" in page.inner_text("#room-error")
    assert page.is_enabled("#join-button")


def test_the_panel_resumes_after_a_restart_without_duplicates(page: Any, server_process: Any) -> None:
    server = server_process()
    page.goto(server.url + "/")
    page.wait_for_selector('#socket-state[data-state="live"]')
    before = [webhook_event("room_started", room=f"r{n}") for n in range(3)]
    for event in before:
        assert post_webhook(server.url, event) == 200
    wait_until(page, "() => document.getElementById('event-count').textContent === '3'")
    assert server.stop() == 0
    page.wait_for_selector('#socket-state[data-state="reconnecting"]')
    server.start()
    after = webhook_event("room_finished", room="r9")
    assert post_webhook(server.url, after) == 200
    wait_until(page, "() => document.getElementById('event-count').textContent === '4'")
    page.wait_for_selector('#socket-state[data-state="live"]')
    shown = page.eval_on_selector_all(
        "#event-list li.event", "rows => rows.map(r => r.dataset.type + '/' + r.dataset.room)"
    )
    assert shown == ["room_finished/r9", "room_started/r2", "room_started/r1", "room_started/r0"]


@pytest.mark.parametrize("width", [360, 1440])
def test_usable_from_phone_to_desktop_width(browser: Any, server_process: Any, width: int) -> None:
    server = server_process()
    context = browser.new_context(viewport={"width": width, "height": 800})
    page = context.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector('#socket-state[data-state="live"]')
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow == 0
    for selector in ("#room-name", "#participant-name", "#livekit-url", "#join-button", "#type-filter"):
        box = page.locator(selector).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= width
    context.close()


def test_the_page_opens_a_protected_stream_with_the_secret_in_its_fragment(
    page: Any, server_process: Any
) -> None:
    secret = "0123456789abcdef0123456789abcdef"
    server = server_process(
        APP_ENV="production",
        LIVEKIT_API_KEY="prodkey",
        LIVEKIT_API_SECRET="s" * 40,
        EVENTS_AUTH_SECRET=secret,
    )
    page.goto(server.url + f"/#events-secret={secret}")
    page.wait_for_selector('#socket-state[data-state="live"]')
    assert "events-secret" not in page.url  # out of the address bar and the history
    event = webhook_event("room_started", room="guarded")
    assert post_webhook(server.url, event, key="prodkey", secret="s" * 40) == 200
    event_rows(page).first.wait_for()
    assert event_rows(page).first.locator(".event-room").inner_text() == "guarded"
    page.reload()  # kept for this tab
    page.wait_for_selector('#socket-state[data-state="live"]')
    page.evaluate("sessionStorage.clear()")
    page.reload()
    page.wait_for_selector('#socket-state[data-state="reconnecting"]')  # refused without it

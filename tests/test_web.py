"""The dashboard's app, served in-process: what a person and a program see and may
do, on a MemoryStore and on the real Redis (the browser drives it in
integrations/test_web_browser.py)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from html import unescape
from typing import Any
from urllib.parse import quote

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

with warnings.catch_warnings():  # it asks for httpx2 in place of httpx: either works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from kompensa_workers import MemoryStore, deliver
from kompensa_workers.ops.cli import loopback, run
from kompensa_workers.ops.web import create_app
from kompensa_workers.ops.web.chart import chart

from .stores import make_store
from .web_journal import HOSTILE_KEY, ODD_KEY, fill, waits_long

TOKEN = "correct horse battery staple"
WAITING_ODD = "wait/é %2F {x} ?#&"


@pytest.fixture(scope="module", params=["memory", "redis"])
def journal(request: pytest.FixtureRequest) -> Iterator[tuple[Any, dict[str, str]]]:
    """A journal with one execution in each state an operator meets."""
    stores = make_store(request.param)
    store = next(stores)
    keys = fill(store)
    deliver(waits_long, key=WAITING_ODD, store=store)
    yield store, keys
    next(stores, None)


def client(store: Any, **options: Any) -> TestClient:
    return TestClient(create_app(store, **options), follow_redirects=False)


def html_text(html: str) -> str:
    return unescape(re.sub(r"<[^>]+>", "", html))


def page_of(key: str) -> str:
    return f"/executions/{quote(key, safe='')}"


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]*)"', html)
    assert found is not None, "no form with a CSRF field on the page"
    return found.group(1)


def test_the_list_counts_each_status_and_filters_searches_and_pages(
    journal: tuple[Any, dict[str, str]],
) -> None:
    store, keys = journal
    api = client(store)
    everything = api.get("/api/executions").json()
    assert everything["total"] == 6
    assert everything["counts"] == {
        "queued": 0, "running": 0, "waiting": 2, "compensating": 0,
        "compensation_failed": 1, "succeeded": 1, "compensated": 2, "cancelled": 0}
    created = [e["created_at"] for e in everything["executions"]]
    assert created == sorted(created, reverse=True), "newest first"

    waiting = api.get("/api/executions", params={"status": "waiting"}).json()
    assert {e["key"] for e in waiting["executions"]} == {keys["waiting"], WAITING_ODD}
    assert waiting["counts"]["succeeded"] == 1  # counts ignore the status filter

    by_saga = api.get("/api/executions", params={"saga": "tests.web_journal.stuck"}).json()
    assert [e["key"] for e in by_saga["executions"]] == [keys["compensation_failed"]]
    assert "tests.web_journal.checkout" in by_saga["sagas"]

    found = api.get("/api/executions", params={"q": "VIP} 100"}).json()
    assert [e["key"] for e in found["executions"]] == [ODD_KEY]

    first = api.get("/api/executions", params={"per_page": 4}).json()
    second = api.get("/api/executions", params={"per_page": 4, "page": 2}).json()
    assert (first["pages"], len(first["executions"]), len(second["executions"])) == (2, 4, 2)
    assert not {e["key"] for e in first["executions"]} & {e["key"] for e in second["executions"]}

    html = api.get("/", params={"status": "compensated"}).text
    assert 'href="/executions/order-1002"' in html
    assert page_of(ODD_KEY) not in html

    bad = api.get("/api/executions", params={"status": "done"})
    assert bad.status_code == 400
    assert "status 'done' is not one of" in bad.json()["error"]
    assert api.get("/", params={"page": "0"}).status_code == 400


def test_keys_with_slashes_percent_braces_spaces_and_accents_round_trip(
    journal: tuple[Any, dict[str, str]],
) -> None:
    store, _ = journal
    api = client(store)
    listing = api.get("/").text
    for key in (ODD_KEY, WAITING_ODD):
        assert f'href="{page_of(key)}"' in listing
        html = api.get(page_of(key))
        assert html.status_code == 200
        shown = re.search(r'<span class="key" id="key">(.*?)</span>', html.text)
        assert shown is not None and shown.group(1) == key.replace("&", "&amp;")
        assert api.get(f"/api/executions/{quote(key, safe='')}").json()["key"] == key
    missing = api.get(page_of("order/none"))
    assert missing.status_code == 404
    assert "no execution 'order/none'" in html_text(missing.text)


def test_everything_read_from_the_journal_is_escaped(
    journal: tuple[Any, dict[str, str]],
) -> None:
    store, _ = journal
    api = client(store)
    for html in (api.get("/").text, api.get(page_of(HOSTILE_KEY)).text):
        assert "<script>window.hacked" not in html
        assert "<img src=x" not in html
        assert "<b>by the bank" not in html
    detail = api.get(page_of(HOSTILE_KEY)).text
    assert "&lt;script&gt;window.hacked=1&lt;/script&gt;" in detail
    assert "&lt;img src=x onerror=window.hacked=2&gt;" in detail
    assert "script-src 'self'" in api.get("/").headers["content-security-policy"]


def test_arguments_and_results_pass_through_the_redaction_hook(
    journal: tuple[Any, dict[str, str]],
) -> None:
    store, keys = journal
    waiting = client(store).get(f"/api/executions/{keys['waiting']}").json()
    assert waiting["arguments"] == {
        "args": [{"id": 1004, "total": 7}],
        "kwargs": {"card": "••••••", "email": "grace@example.com"}}
    page = client(store).get(page_of(keys["waiting"])).text
    assert "grace@example.com" in page and "5555" not in page
    shown = client(store).get(f"/api/executions/{quote(keys['succeeded'], safe='')}").json()
    charge = next(s for s in shown["steps"] if s["name"] == "charge")
    assert charge["result"] == {"charge": "ch_1001", "token": "••••••"}
    assert shown["arguments"] is None  # the journal keeps them only until the end
    assert "keeps a message's arguments only until" in \
        html_text(client(store).get(page_of(keys["succeeded"])).text)

    def nothing(value: Any) -> Any:
        return "(redacted)"

    own = client(store, redact=nothing).get(f"/api/executions/{keys['waiting']}").json()
    assert own["arguments"] == {"args": "(redacted)", "kwargs": "(redacted)"}
    done = client(store, redact=nothing).get(
        f"/api/executions/{quote(keys['succeeded'], safe='')}").json()
    assert done["result"] == "(redacted)"

    def broken(value: Any) -> Any:
        raise RuntimeError("oops")

    hidden = client(store, redact=broken).get(page_of(keys["waiting"])).text
    assert "grace@example.com" not in hidden
    assert "hidden: the redaction hook raised RuntimeError" in hidden


def test_errors_show_their_traceback_text(journal: tuple[Any, dict[str, str]]) -> None:
    store, keys = journal
    html = client(store).get(page_of(keys["compensation_failed"])).text
    assert "refund API gone" in html
    assert html.count('<pre class="traceback">') >= 2
    assert "Traceback (most recent call last)" in html
    assert "in refund" in html  # the compensation's own frame


def test_a_dashboard_without_a_token_is_read_only() -> None:
    store = MemoryStore()
    keys = fill(store)
    api = client(store)
    refused = api.post(f"/api/actions/cancel/{keys['waiting']}",
                       headers={"Authorization": f"Bearer {TOKEN}"})
    assert refused.status_code == 403
    assert "read-only" in refused.json()["error"]
    form = api.post(f"/actions/cancel/{keys['waiting']}", data={"csrf": "anything"})
    assert form.status_code == 403 and "read-only" in form.text
    assert store.get(keys["waiting"]).cancel_requested is False
    page = api.get(page_of(keys["waiting"])).text
    assert "disabled" in page and 'id="login"' not in page


def test_programs_act_with_the_bearer_token() -> None:
    store = MemoryStore()
    keys = fill(store)
    api = client(store, token=TOKEN)
    target = quote(keys["waiting"], safe="")
    assert api.post(f"/api/actions/cancel/{target}").status_code == 401
    wrong = api.post(f"/api/actions/cancel/{target}", headers={"Authorization": "Bearer no"})
    assert wrong.status_code == 401
    assert store.get(keys["waiting"]).cancel_requested is False

    bearer = {"Authorization": f"Bearer {TOKEN}"}
    done = api.post(f"/api/actions/cancel/{target}", headers=bearer)
    assert done.status_code == 200 and done.json() == {"action": "cancel", "key": keys["waiting"]}
    assert store.get(keys["waiting"]).cancel_requested is True

    stuck = quote(keys["compensation_failed"], safe="")
    retried = api.post(f"/api/actions/retry-compensation/{stuck}", headers=bearer).json()
    assert retried["status"] == "compensating"
    assert store.get(keys["compensation_failed"]).status == "compensating"

    busy = api.post(f"/api/actions/purge/{stuck}", headers=bearer)
    assert busy.status_code == 409 and "not ended" in busy.json()["error"]
    ended = quote(keys["compensated"], safe="")
    assert api.post(f"/api/actions/purge/{ended}", headers=bearer).status_code == 200
    assert store.get(keys["compensated"]) is None
    assert api.get(f"/api/executions/{ended}").status_code == 404
    unknown = api.post(f"/api/actions/explode/{ended}", headers=bearer)
    assert unknown.status_code == 404 and "no action 'explode'" in unknown.json()["error"]


def test_people_act_after_logging_in_and_only_through_the_pages_forms() -> None:
    store = MemoryStore()
    keys = fill(store)
    browser = client(store, token=TOKEN)
    stuck = keys["compensation_failed"]
    action = f"/actions/mark-resolved/{quote(stuck, safe='')}"

    anonymous = browser.post(action, data={"csrf": ""})
    assert anonymous.status_code == 401 and "log in" in anonymous.text
    bad = browser.post("/login", data={"token": "guess", "next": page_of(stuck)})
    assert bad.status_code == 401 and "not this dashboard's token" in html_text(bad.text)
    assert "kompensa_session" not in browser.cookies

    login = browser.post("/login", data={"token": TOKEN, "next": page_of(stuck)})
    assert login.status_code == 303 and login.headers["location"] == page_of(stuck)
    assert "HttpOnly" in login.headers["set-cookie"]
    assert "SameSite=strict" in login.headers["set-cookie"]

    forged = browser.post(action, data={"csrf": "0" * 40})  # a page elsewhere
    assert forged.status_code == 403 and "CSRF" in forged.text
    assert store.get(stuck).status == "compensation_failed"

    csrf = csrf_of(browser.get(page_of(stuck)).text)
    done = browser.post(action, data={"csrf": csrf})
    assert done.status_code == 303
    assert done.headers["location"] == f"{page_of(stuck)}?done=mark-resolved"
    assert store.get(stuck).status == "compensated"
    assert "recorded as done by hand" in browser.get(done.headers["location"]).text

    assert browser.post("/logout").status_code == 303
    browser.cookies.clear()
    again = browser.post(f"/actions/purge/{quote(stuck, safe='')}", data={"csrf": csrf})
    assert again.status_code == 401
    assert store.get(stuck) is not None


def test_mounted_under_a_prefix_every_link_keeps_it() -> None:
    store = MemoryStore()
    keys = fill(store)
    host = Starlette(routes=[Mount("/ops/sagas", app=create_app(store, token=TOKEN))])
    api = TestClient(host, follow_redirects=False)
    html = api.get("/ops/sagas/").text
    assert f'href="/ops/sagas{page_of(keys["compensated"])}"' in html
    assert 'href="/ops/sagas/static/app.css"' in html
    assert api.get("/ops/sagas/static/app.js").status_code == 200
    login = api.post("/ops/sagas/login", data={"token": TOKEN, "next": "/"})
    assert login.headers["location"] == "/ops/sagas/"
    assert "Path=/ops/sagas" in login.headers["set-cookie"]
    assert api.get(f"/ops/sagas/api/executions/{keys['compensated']}").json()["status"] == \
        "compensated"


def test_the_timeline_is_drawn_to_scale(journal: tuple[Any, dict[str, str]]) -> None:
    store, keys = journal
    execution = store.get(keys["succeeded"])
    drawn = chart(execution, now=execution.updated_at)
    charge = next(i for i, r in enumerate(drawn.rows) if r.label == "charge")
    waits = [b for b in drawn.bars if b.row == charge and b.kind == "wait"]
    attempts = [b for b in drawn.bars if b.row == charge and b.kind in ("retried", "ok")]
    assert [b.kind for b in sorted(attempts, key=lambda b: b.x)] == ["retried", "retried", "ok"]
    assert len(waits) == 2
    px_per_second = drawn.plot_width / drawn.seconds
    assert waits[0].width == pytest.approx(0.3 * px_per_second, abs=1)
    assert waits[1].width == pytest.approx(0.6 * px_per_second, abs=1)
    assert waits[0].x < waits[1].x
    grants = [m for m in drawn.marks if m.kind == "grant"]
    assert [m.label for m in grants] == [f"token {g.fence}" for g in execution.grants]
    assert len(grants) == 3 and grants[0].x < grants[1].x < grants[2].x

    html = client(store).get(page_of(keys["succeeded"])).text
    assert html.count('data-kind="wait"') == 2
    assert html.count('class="mark grant"') == 3
    failed = store.get(keys["compensation_failed"])
    undo = [b for b in chart(failed, now=failed.updated_at).bars if b.kind.startswith("undo")]
    assert [b.kind for b in undo] == ["undo-failed"]


def test_the_web_command_refuses_an_open_bind_without_a_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run(["web", "--host", "0.0.0.0"]) == 2
    assert "serving beyond this machine needs --token" in capsys.readouterr().err
    assert run(["web", "--host", "127.0.0.1", "--token", " "]) == 2
    assert "--token is empty" in capsys.readouterr().err
    assert [loopback(h) for h in ("127.0.0.1", "127.0.0.9", "::1", "[::1]", "localhost")] == \
        [True] * 5
    assert [loopback(h) for h in ("0.0.0.0", "::", "10.1.2.3", "example.com")] == [False] * 4


def test_a_journal_that_cannot_be_reached_is_said_on_the_page() -> None:
    from kompensa_workers import RedisStore

    gone = RedisStore.from_url("redis://127.0.0.1:1/0", write_timeout=0.5)
    api = client(gone)
    page = api.get("/")
    assert page.status_code == 503
    assert "the journal cannot be reached" in html_text(page.text)
    listing = api.get("/api/executions")
    assert listing.status_code == 503
    assert listing.json()["error"].startswith("the journal cannot be reached")


def test_on_loopback_only_loopback_host_names_are_served() -> None:
    """A page elsewhere that rebinds its own name to 127.0.0.1 gets nothing."""
    store = MemoryStore()
    local = TestClient(create_app(store, allowed_hosts=["localhost", "127.0.0.1"]),
                       base_url="http://127.0.0.1:8765")
    assert local.get("/api/executions").status_code == 200
    rebound = local.get("/api/executions", headers={"host": "evil.example:8765"})
    assert rebound.status_code == 400
    assert "evil" not in rebound.text


def test_a_login_sends_a_person_only_to_a_page_of_the_dashboard() -> None:
    api = client(MemoryStore(), token=TOKEN)
    for away in ("//evil.example/", "/\\evil.example/", "https://evil.example/",
                 "/\tx", "javascript:alert(1)"):
        done = api.post("/login", data={"token": TOKEN, "next": away})
        assert done.headers["location"] == "/", away
    assert api.post("/login", data={"token": TOKEN, "next": "/?status=waiting"}).headers[
        "location"] == "/?status=waiting"

"""The reader's worklist, the admin page and the offline API docs in a real browser.

A real uvicorn Sightline (``live_site``) holds two analysed studies; Debian's Chromium
(Playwright) signs in with a token, reads, filters and pages the worklist, sees new work
arrive without a reload, opens studies from the keyboard, signs out, renders Swagger UI
from this server alone and checks that the Content Security Policy is never violated.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from e2e.conftest import LESION_STUDY, PLAIN_STUDY, LiveSite
from helpers import bearer
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, expect
from stack import REPO_ROOT

from service.db.tables import Role
from service.web.routes import STATIC
from service.web.security import CONTENT_SECURITY_POLICY

pytestmark = pytest.mark.slow

NEW_STUDY = "1.2.826.0.1.3680043.8.498.5353"
CSP_WORDS = re.compile(r"content security policy", re.IGNORECASE)


class Tab:
    """A page of ``browser`` with its console messages and CSP violation reports collected."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console: list[str] = []
        page.on("console", self._on_console)
        page.add_init_script(
            "window.__csp = []; document.addEventListener('securitypolicyviolation',"
            " (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));"
        )

    def _on_console(self, message: ConsoleMessage) -> None:
        self.console.append(f"{message.type}: {message.text}")

    def csp_violations(self) -> list[str]:
        reported: list[str] = self.page.evaluate("window.__csp || []")
        return reported + [line for line in self.console if CSP_WORDS.search(line)]


@pytest.fixture()
def tab(browser: Browser) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        yield Tab(context.new_page())
    finally:
        context.close()


def sign_in(tab: Tab, site: LiveSite, role: Role = Role.reader, path: str = "/") -> None:
    page = tab.page
    page.goto(site.url + path)
    expect(page.locator("#login")).to_be_visible()
    page.fill("#token", site.tokens[role])
    page.click("#login button")
    expect(page.locator("#signout")).to_be_visible()


def rows_in_order(page: Page) -> list[str]:
    uids: list[str] = page.locator("#rows tr.row").evaluate_all("rows => rows.map(r => r.dataset.uid)")
    return uids


def live_site_rows(site: LiveSite) -> list[dict[str, object]]:
    answer = httpx.get(f"{site.url}/api/v1/worklist", headers=bearer(site.tokens[Role.reader]))
    rows: list[dict[str, object]] = answer.json()["items"]
    return rows


def no_horizontal_scroll(page: Page) -> bool:
    return bool(page.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth"))


def test_worklist_shows_triaged_rows_with_links_and_fits_desktop_and_tablet(
    live_site: LiveSite, tab: Tab, tmp_path: Path
) -> None:
    page = tab.page
    response = page.goto(live_site.url + "/")
    assert response is not None and response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    sign_in(tab, live_site)
    rows = page.locator("#rows tr.row")
    expect(rows).to_have_count(2)
    assert rows_in_order(page) == [LESION_STUDY, PLAIN_STUDY]  # the suspicious study first

    lesion = rows.first
    link = lesion.locator("a.open")
    assert link.get_attribute("href") == f"/studies/{LESION_STUDY}"
    expect(lesion.locator("td.priority")).to_have_text("routine")
    expect(lesion.locator("td.ai")).to_contain_text(re.compile(r"0\.\d{3} \w+"))
    expect(lesion.locator("td.patient")).to_contain_text("Test, Patient")
    expect(lesion.locator("td.patient")).to_contain_text("PAT-TEST-1")
    expect(lesion.locator("td.counts")).to_contain_text("/ 5")
    expect(lesion.locator("td.status")).to_have_text("analysed")
    expect(lesion.locator("td.waiting")).to_have_text(re.compile(r"just now|\d+ min"))
    expect(page.locator(".disclaimer")).to_contain_text("Research use only")

    page.screenshot(path=str(tmp_path / "worklist-1280x800.png"), full_page=True)
    assert no_horizontal_scroll(page)
    page.set_viewport_size({"width": 768, "height": 1024})
    expect(page.locator("#worklist th.opt").first).to_be_hidden()  # the tablet keeps the triage columns
    expect(rows.first.locator("td.ai")).to_be_visible()
    page.screenshot(path=str(tmp_path / "worklist-768x1024.png"), full_page=True)
    assert no_horizontal_scroll(page)

    api = httpx.get(f"{live_site.url}/api/v1/worklist", headers=bearer(live_site.tokens[Role.reader]))
    assert api.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert api.headers["x-content-type-options"] == "nosniff"
    assert tab.csp_violations() == []
    (REPO_ROOT / "reports").mkdir(exist_ok=True)
    shutil.copyfile(tmp_path / "worklist-1280x800.png", REPO_ROOT / "reports" / "worklist.png")


def test_new_study_appears_without_reload_keeping_scroll_and_selection(live_site: LiveSite, tab: Tab) -> None:
    page = tab.page
    page.set_viewport_size({"width": 1280, "height": 360})  # short, so the page scrolls
    sign_in(tab, live_site)
    expect(page.locator("#rows tr.row")).to_have_count(2)
    page.evaluate("window.__sameDocument = true")
    page.keyboard.press("j")
    page.keyboard.press("j")
    expect(page.locator("tr.row.selected")).to_have_attribute("data-uid", PLAIN_STUDY)
    page.evaluate("window.scrollTo(0, 120)")
    scrolled = page.evaluate("window.scrollY")
    assert scrolled > 0

    live_site.add_study(NEW_STUDY, 2)
    expect(page.locator(f'#rows tr.row[data-uid="{NEW_STUDY}"]')).to_have_count(1, timeout=30_000)
    assert page.evaluate("window.__sameDocument") is True  # no reload
    expect(page.locator("tr.row.selected")).to_have_attribute("data-uid", PLAIN_STUDY)
    assert page.evaluate("document.activeElement.closest('tr.row').dataset.uid") == PLAIN_STUDY
    assert page.evaluate("window.scrollY") == scrolled
    assert rows_in_order(page)[0] == LESION_STUDY
    assert tab.csp_violations() == []


def test_filters_narrow_the_list(live_site: LiveSite, tab: Tab) -> None:
    scores = {str(row["study_instance_uid"]): float(str(row["triage_score"])) for row in live_site_rows(live_site)}
    threshold = round((scores[LESION_STUDY] + scores[PLAIN_STUDY]) / 2, 3)
    page = tab.page
    sign_in(tab, live_site)
    expect(page.locator("#rows tr.row")).to_have_count(2)

    page.fill("#filters [name=min_score]", str(threshold))
    page.click("#filters button[type=submit]")
    expect(page.locator("#rows tr.row")).to_have_count(1)
    assert rows_in_order(page) == [LESION_STUDY]

    page.fill("#filters [name=min_score]", "")
    page.select_option("#filters [name=status]", "failed")
    page.click("#filters button[type=submit]")
    expect(page.locator("#rows tr.row")).to_have_count(0)
    expect(page.locator("#message")).to_have_text("No studies match.")

    page.click("#filters button[type=reset]")
    expect(page.locator("#rows tr.row")).to_have_count(2)

    reader = bearer(live_site.tokens[Role.reader])
    claim = httpx.post(f"{live_site.url}/api/v1/studies/{PLAIN_STUDY}/claim", headers=reader)
    assert claim.is_success, claim.text
    page.select_option("#filters [name=claimed]", "true")
    page.click("#filters button[type=submit]")
    expect(page.locator("#rows tr.row")).to_have_count(1)
    expect(page.locator("#rows tr.row td.claimed")).to_have_text("test-reader")
    report = httpx.post(f"{live_site.url}/api/v1/studies/{PLAIN_STUDY}/report", headers=reader)
    assert report.is_success, report.text
    page.select_option("#filters [name=claimed]", "")
    page.select_option("#filters [name=reported]", "true")
    page.click("#filters button[type=submit]")
    expect(page.locator("#rows tr.row")).to_have_count(1)
    expect(page.locator("#rows tr.row td.reported")).to_have_text(re.compile(r"^yes, "))
    page.click("#filters button[type=reset]")
    expect(page.locator("#rows tr.row")).to_have_count(2)

    page.fill("#filters [name=limit]", "1")  # paging: one row a page, "More" brings the next
    page.click("#filters button[type=submit]")
    expect(page.locator("#rows tr.row")).to_have_count(1)
    page.click("#more")
    expect(page.locator("#rows tr.row")).to_have_count(2)
    expect(page.locator("#more")).to_be_hidden()
    assert rows_in_order(page) == [LESION_STUDY, PLAIN_STUDY]


def test_keyboard_moves_the_selection_and_opens_the_study(live_site: LiveSite, tab: Tab) -> None:
    page = tab.page
    sign_in(tab, live_site)
    expect(page.locator("#rows tr.row")).to_have_count(2)
    page.keyboard.press("?")
    expect(page.locator("#help")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#help")).to_be_hidden()
    page.keyboard.press("/")
    expect(page.locator("#filters [name=status]")).to_be_focused()
    page.locator("body").click(position={"x": 5, "y": 5})

    page.keyboard.press("j")
    page.keyboard.press("ArrowDown")
    expect(page.locator("tr.row.selected")).to_have_attribute("data-uid", PLAIN_STUDY)
    page.keyboard.press("k")
    expect(page.locator("tr.row.selected")).to_have_attribute("data-uid", LESION_STUDY)
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/studies/{LESION_STUDY}")

    page.go_back()
    expect(page.locator("#rows tr.row")).to_have_count(2)
    page.keyboard.press("j")
    page.keyboard.press("j")
    page.keyboard.press("o")
    page.wait_for_url(f"**/studies/{PLAIN_STUDY}")


def test_sign_out_clears_the_token_and_shows_the_sign_in_form(live_site: LiveSite, tab: Tab) -> None:
    page = tab.page
    sign_in(tab, live_site)
    expect(page.locator("#rows tr.row")).to_have_count(2)
    assert page.evaluate("sessionStorage.getItem('sightline.token')") == live_site.tokens[Role.reader]
    page.click("#signout")
    expect(page.locator("#login")).to_be_visible()
    expect(page.locator("#signout")).to_be_hidden()
    expect(page.locator("#rows tr.row")).to_have_count(0)
    assert page.evaluate("sessionStorage.getItem('sightline.token')") is None

    page.goto(f"{live_site.url}/studies/{LESION_STUDY}")  # the study page shares the header
    expect(page.locator("#login")).to_be_visible()


def test_docs_render_swagger_ui_from_this_server_only(live_site: LiveSite, tab: Tab) -> None:
    page = tab.page
    requested: list[str] = []
    blocked: list[str] = []

    def only_local(route: Route) -> None:
        url = route.request.url
        requested.append(url)
        if urlsplit(url).hostname == "127.0.0.1":
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    page.route("**/*", only_local)
    response = page.goto(live_site.url + "/docs")
    assert response is not None and response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible(timeout=20_000)
    expect(page.locator(".swagger-ui .opblock-summary-path", has_text="/api/v1/worklist").first).to_be_visible()
    assert any(url.endswith("/openapi.json") for url in requested)
    assert blocked == []
    assert tab.csp_violations() == []
    assert httpx.get(f"{live_site.url}/redoc").status_code == 404  # only our own docs page


def test_admin_page_needs_an_admin_token(live_site: LiveSite, tab: Tab) -> None:
    page = tab.page
    sign_in(tab, live_site, Role.reader, "/admin")
    expect(page.locator("#message")).to_contain_text(re.compile(r"admin token|\b40[34]\b|not_found|forbidden"))
    expect(page.locator("#stats")).to_be_hidden()
    assert tab.csp_violations() == []


def test_admin_page_shows_queue_depth_and_feedback(live_site: LiveSite, tab: Tab, tmp_path: Path) -> None:
    admin = bearer(live_site.tokens[Role.admin])
    if httpx.get(f"{live_site.url}/api/v1/admin/stats", headers=admin).status_code == 404:
        pytest.skip("GET /api/v1/admin/stats is not in this build yet")
    feedback = httpx.post(
        f"{live_site.url}/api/v1/studies/{LESION_STUDY}/feedback",
        json={"agrees": False, "label": "glioma"},
        headers=bearer(live_site.tokens[Role.reader]),
    )
    has_feedback = feedback.status_code not in (404, 405)
    assert not has_feedback or feedback.is_success, feedback.text
    page = tab.page
    sign_in(tab, live_site, Role.admin, "/admin")
    expect(page.locator("#stats")).to_be_visible()
    expect(page.locator("#queue tbody tr").first).to_be_visible()
    expect(page.locator("#processing")).to_contain_text("p95")
    if has_feedback:  # the reader said glioma where the model said something else
        model_label = next(
            i["predicted_label"] for i in live_site_rows(live_site) if i["study_instance_uid"] == LESION_STUDY
        )
        assert model_label != "glioma"
        readers = page.locator("#confusion thead th").all_inner_texts()
        cells = page.locator("#confusion tbody tr", has=page.locator(f'th:text-is("{model_label}")')).locator("td")
        expect(cells.nth(readers.index("glioma") - 1)).to_have_text("1")
        expect(page.locator("#agreement tbody")).to_contain_text(model_label)
    page.screenshot(path=str(tmp_path / "admin.png"), full_page=True)
    if httpx.get(f"{live_site.url}/api/v1/audit/export", headers=admin).is_success:
        with page.expect_download() as download:
            page.click("#audit-download")
        assert download.value.suggested_filename.endswith(".jsonl")
    assert tab.csp_violations() == []


def test_study_page_runs_under_the_csp(live_site: LiveSite, tab: Tab) -> None:
    page = tab.page
    sign_in(tab, live_site)
    page.locator(f'#rows tr.row[data-uid="{LESION_STUDY}"] a.open').click()
    page.wait_for_url(f"**/studies/{LESION_STUDY}")
    expect(page.locator("#signout")).to_be_visible()  # app.js gives every page its header
    expect(page.locator("#summary")).not_to_be_empty()
    page.wait_for_load_state("networkidle")
    assert tab.csp_violations() == []


@pytest.mark.parametrize("page_file", sorted(p.name for p in STATIC.glob("*.html")))
def test_pages_hold_no_inline_script_or_style(page_file: str) -> None:
    html = (STATIC / page_file).read_text()
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    assert re.findall(r"<style\b|\sstyle=|\son[a-z]+=", html, re.IGNORECASE) == []


def test_every_answer_carries_the_security_headers(live_site: LiveSite) -> None:
    reader = bearer(live_site.tokens[Role.reader])
    answers = {
        path: httpx.get(live_site.url + path, headers=reader)
        for path in ("/", "/admin", "/docs", f"/studies/{LESION_STUDY}", "/api/v1/worklist", "/healthz")
    }
    answers["401"] = httpx.get(f"{live_site.url}/api/v1/worklist")
    answers["asset"] = httpx.get(f"{live_site.url}/static/swagger-ui/swagger-ui-bundle.js")
    for name, answer in answers.items():
        assert answer.status_code == (401 if name == "401" else 200), name
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, name
        assert answer.headers["x-content-type-options"] == "nosniff", name
        assert answer.headers["referrer-policy"] == "no-referrer", name
    assert answers["asset"].headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{live_site.url}/static/../settings.py").status_code == 404
    assert httpx.get(f"{live_site.url}/static/nope.js").status_code == 404
    assert httpx.get(f"{live_site.url}/static/swagger-ui/index.html").status_code == 404

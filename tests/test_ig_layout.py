"""The IG pages' layout in a real Chromium (issue 17, part 3): at 320 CSS pixels wide (WCAG 2.2
1.4.10 reflow) and at 200 % zoom (a 1280 px window seen through 640 CSS pixels, 1.4.4), no page
scrolls sideways (a wide table scrolls inside its own box, as 1.4.10 allows for data tables), and
every radio button and checkbox sits on one line with its own label."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from broker.config import Settings
from tests.conftest import ClientFactory
from tests.support.sending import send_referrals
from tests.support.web import snap, token, until_indexed

pytestmark = pytest.mark.timeout(120)
Client = TestClient  # type: ignore[type-arg]

WIDTHS = {"320px": {"width": 320, "height": 640}, "zoom-200": {"width": 640, "height": 450}}

# The page's own width against the window's, and each choice input's box against its label's.
_MEASURE = """() => {
  const page = {scroll: document.documentElement.scrollWidth, width: window.innerWidth,
                widest: [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right >
                  window.innerWidth + 0.5).slice(-3).map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '')
                  + (e.className && typeof e.className === 'string' ? '.' + e.className.split(' ')[0] : ''))};
  const choices = [...document.querySelectorAll('input[type=radio], input[type=checkbox]')].map(input => {
    const label = document.querySelector(`label[for="${input.id}"]`);
    if (!label) return {id: input.id, label: false};
    const a = input.getBoundingClientRect(), b = label.getBoundingClientRect();
    const middle = a.top + a.height / 2;
    return {id: input.id, label: true, sameLine: b.top <= middle && middle <= b.bottom, before: a.right <= b.left};
  });
  return {page, choices};
}"""


async def test_every_page_reflows_at_320px_and_200_percent_zoom(browser_page: Any, live_url: str, settings: Settings,
                                                                agency: ClientFactory, client: Client,
                                                                tmp_path: Path) -> None:
    page = browser_page
    (message,) = await send_referrals(agency, consent="REFUSED_OVERRIDDEN")
    await until_indexed(client, settings, message)
    await page.goto(f"{live_url}/ig/login")
    await page.get_by_label("Access token").fill(token(settings, "ig-officer", sub="ig-sam"))
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{live_url}/ig/")
    paths = ["/ig/", "/ig/reviews", f"/ig/messages/{message}", "/ig/subject", "/ig/charts", "/ig/integrity",
             "/ig/rulebook"]
    problems = []
    for name, size in WIDTHS.items():
        await page.set_viewport_size(size)
        for path in paths:
            await page.goto(f"{live_url}{path}")
            seen = await page.evaluate(_MEASURE)
            if seen["page"]["scroll"] > seen["page"]["width"]:
                problems.append(f"{path} at {name}: the page is {seen['page']['scroll']} px wide ("
                                f"{', '.join(seen['page']['widest'])})")
            for choice in seen["choices"]:
                if not (choice["label"] and choice["sameLine"] and choice["before"]):
                    problems.append(f"{path} at {name}: {choice['id']} is not on one line before its label")
            await snap(page, f"{name}-{path.strip('/').replace('/', '-')[:40]}.png")
    assert not problems, "\n".join(problems)
    await page.goto(f"{live_url}/ig/reviews")
    assert await page.locator("input[type=radio]").count() >= 4  # the review form was measured

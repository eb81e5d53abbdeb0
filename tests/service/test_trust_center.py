"""The Trust Center in a real browser: Playwright driving Debian's Chromium headless against
the running service on 127.0.0.1. Log in, see the numbers and the attestation chart,
quarantine a number and see its state change (also through the API); forms without the
session's CSRF token are refused."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.service.conftest import requires_sipp
from tests.support import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    HOST,
    ROOT,
    Ports,
    SippUas,
    free_port,
    run_uac,
    running_service,
    signing_config,
    with_credential,
    write_config,
)

CHROMIUM = shutil.which("chromium")
pytestmark = [requires_sipp, pytest.mark.sipp,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium not installed")]
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def test_log_in_see_numbers_and_chart_quarantine_one(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    ports = Ports.pick()
    business = ('business = { legal_name = "Demo Sales Inc.", ein = "00-0000000", '
                'address = "1 Example Way", contact = "ops@demo-sales.example" }\n'
                'brand = "Demo Sales"')
    cfg = write_config(tmp_path / "proxy.toml", ports, extra=signing_config(
        tmp_path, ports, account_extra=business) + "\n[records]\nflush_interval = 0.2\n")
    base = f"http://{HOST}:{ports.admin}"
    shots = Path(os.environ.get("TRUST_CENTER_SHOTS", str(tmp_path)))
    with running_service(cfg, ports.admin, tmp_path / "proxy.log") as svc:
        with SippUas("uas.xml", ports.carrier_next_hop, tmp_path):
            for caller, n in (("+12025550142", 6), ("+12025550143", 4), ("+13035550142", 2)):
                assert run_uac("uac.xml", ports.dialer, free_port(), tmp_path, calls=n,
                               rate=10, caller=caller).successful == n
        import time
        time.sleep(0.6)  # records are written behind
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.goto(base + "/ui/")
            assert page.url.endswith("/ui/login")  # no session: the login page
            page.fill("input[name=user]", ADMIN_USER)
            page.fill("input[name=password]", "not-the-password")
            page.click("#login")
            assert "Wrong user or password" in page.content()
            page.fill("input[name=user]", ADMIN_USER)
            page.fill("input[name=password]", ADMIN_PASSWORD)
            page.click("#login")
            assert page.url.endswith("/ui/")
            row = page.locator("#tn-12025550142")
            assert row.locator(".state").inner_text() == "healthy"
            assert page.locator("#numbers tr").count() == 1 + 2  # the two owned numbers
            assert "12 calls" in page.locator("#mix").inner_text() and \
                "83% attested A" in page.locator("#mix").inner_text()
            assert page.locator("#chart svg rect").count() >= 2  # A and B of today
            assert page.locator("#records tr").count() == 1 + 12
            accounts = page.locator("#accounts").inner_text()
            assert "Demo Sales Inc." in accounts and "00-0000000" in accounts
            assert "Demo Sales" in page.locator("#brands").inner_text()
            page.screenshot(path=str(shots / "trust-center.png"), full_page=True)
            row.locator("button").click()
            row = page.locator("#tn-12025550142")
            assert row.locator(".state").inner_text() == "quarantined"
            page.screenshot(path=str(shots / "trust-center-quarantined.png"), full_page=True)
            # The search box narrows the recent calls.
            page.fill("input[name=q]", "13035550142")
            page.click("text=Search")
            assert page.locator("#records tr").count() == 1 + 2
            cookies = {c["name"]: c["value"] for c in page.context.cookies()}
            browser.close()
        with urllib.request.urlopen(with_credential(base + "/numbers/health"), timeout=5) as r:
            states = {n["tn"]: n["state"] for n in json.loads(r.read())}
        assert states["12025550142"] == "quarantined"
        # A form with the session but not its CSRF token is refused; no session: log in.
        form = urllib.parse.urlencode({"csrf": "forged"}).encode()
        forged = urllib.request.Request(base + "/ui/numbers/12025550143/quarantine",
                                        data=form, method="POST", headers={
                                            "Cookie": f"sp_session={cookies['sp_session']}"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(forged, timeout=5)
        assert info.value.code == 403
        with urllib.request.urlopen(with_credential(base + "/numbers/health"), timeout=5) as r:
            assert {n["tn"]: n["state"] for n in json.loads(r.read())}["12025550143"] == "healthy"
        assert "Traceback" not in svc.log()
    assert (shots / "trust-center.png").stat().st_size > 10_000
    _ = ROOT

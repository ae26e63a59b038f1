"""In a real browser: headless Chromium opens the Prefect UI of the e2e server and starts a custom run.

From the UI's front page: Deployments → ``data-synthesis`` / ``default`` → Run → Custom run, the form's
``Num Samples`` switched to an int and set to 3, ``Output Dir`` set, Submit; then the run's own page until it
shows Completed. The screenshot goes to ``test-artifacts/prefect-ui-custom-run.png``. Then an
``eval-driven-recall`` run's page: its Artifacts tab must display the score histogram (the image decoded, not a
path or a broken link); screenshot ``test-artifacts/prefect-ui-run-chart.png``. The server and workers
are the shared ``prefect_stack`` (``tests/e2e_server.py``). Chromium is the Debian package, driven by
Playwright through its executable path (no ``playwright install``); without either the module skips.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.e2e_forms import form_parameters

if TYPE_CHECKING:
    from tests.e2e_server import PrefectStack

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} is missing (Debian package chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")

pytest_plugins = ["tests.e2e_server"]
pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
ARTIFACT = REPO / "test-artifacts" / "prefect-ui-custom-run.png"
CHART_SHOT = REPO / "test-artifacts" / "prefect-ui-run-chart.png"
HISTOGRAM_ALT = "Recall score histogram"
CUSTOM_SHOT = REPO / "test-artifacts" / "prefect-ui-unchanged-custom-run.png"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 60_000
RUN_TIMEOUT_S = 300


def test_custom_run_from_the_prefect_ui_completes(prefect_stack: PrefectStack) -> None:
    stack = prefect_stack
    out = stack.work / "browser-synthesis"
    ARTIFACT.parent.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(UI_TIMEOUT_MS)
            # nothing leaves the machine (the UI's analytics would only wait for a network that is not there)
            page.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda route: route.abort())
            try:
                page.goto(stack.url + "/")
                page.get_by_role("link", name="Deployments", exact=True).click()
                row = (
                    page.get_by_role("row")
                    .filter(has=page.get_by_role("link", name="data-synthesis", exact=True))
                    .filter(has=page.get_by_role("link", name="default", exact=True))
                )
                row.get_by_role("link", name="default", exact=True).click()
                page.get_by_role("button", name="Run", exact=True).click()
                page.get_by_role("menuitem", name="Custom run").click()

                num_samples = page.locator("div.group").filter(has=page.locator("label", has_text="Num Samples")).last
                num_samples.get_by_role("tab", name="int", exact=True).click()
                num_samples.get_by_role("spinbutton").fill("3")
                page.get_by_label(re.compile(r"^Output Dir")).fill(str(out))
                with page.expect_response(
                    lambda r: r.url.endswith("/create_flow_run") and r.request.method == "POST"
                ) as created:
                    page.get_by_role("button", name="Submit", exact=True).click()
                assert created.value.status == 201, created.value.text()
                run = created.value.json()

                page.get_by_role("link", name=run["name"], exact=True).first.click()
                page.wait_for_url(re.compile(run["id"]))
                final = stack.wait_final([run["id"]], timeout=RUN_TIMEOUT_S)[run["id"]]
                assert final["state_type"] == "COMPLETED", stack.explain(final)
                page.reload()
                header = page.locator("nav").filter(has_text=run["name"]).locator("xpath=following-sibling::*[1]")
                sync_api.expect(header.get_by_text("Completed", exact=True)).to_be_visible()
                with contextlib.suppress(sync_api.TimeoutError):  # let the run graph draw for the screenshot
                    page.wait_for_load_state("networkidle", timeout=10_000)
            finally:
                page.screenshot(path=str(ARTIFACT), full_page=True)
        finally:
            browser.close()

    params = stack.flow_run(run["id"])["parameters"]["params"]
    assert params["num_samples"] == 3 and params["output_dir"] == str(out), params
    assert sorted(p.name for p in out.glob("*_seed.jsonl")), f"no output in {out}"


def _browser(pw: object) -> object:
    return pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)  # type: ignore[attr-defined]


def test_a_runs_chart_displays_on_its_page(prefect_stack: PrefectStack) -> None:
    stack = prefect_stack
    deployment = stack.deployments()["eval-driven-recall/default"]
    out = stack.work / "browser-recall"
    run = stack.run_deployment(deployment, form_parameters(deployment, {"output_dir": str(out)}))
    final = stack.wait_final([run["id"]], timeout=RUN_TIMEOUT_S)[run["id"]]
    assert final["state_type"] == "COMPLETED", stack.explain(final)
    CHART_SHOT.parent.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = _browser(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda route: route.abort())
            try:
                page.goto(f"{stack.url}/runs/flow-run/{run['id']}")
                page.get_by_text("Artifacts", exact=True).first.click()  # the run page's tab
                image = page.locator(f'img[alt="{HISTOGRAM_ALT}"]')
                with contextlib.suppress(sync_api.TimeoutError):
                    image.first.wait_for(timeout=10_000)
                if not image.count():  # the tab lists artifacts as cards: open the histogram's
                    page.get_by_text("recall-score-histogram").first.click()
                image.first.scroll_into_view_if_needed()
                sync_api.expect(image.first).to_be_visible()
                page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.first.element_handle())
                width = image.first.evaluate("img => img.naturalWidth")
                assert width >= 100, f"the histogram is {width} px wide"
            finally:
                page.screenshot(path=str(CHART_SHOT), full_page=True)
        finally:
            browser.close()  # type: ignore[attr-defined]


def test_an_unchanged_custom_run_submits_what_a_quick_run_runs(prefect_stack: PrefectStack) -> None:
    """Every deployment a person starts: Run → Custom run → Submit without touching the form. The request is
    captured (and not sent): its parameters, validated by the flow's model, are the Quick Run's parameters."""
    import importlib

    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    stack = prefect_stack
    deployments = {k: d for k, d in stack.deployments().items() if not k.startswith("train-stage/")}
    submitted: dict[str, dict] = {}
    with sync_api.sync_playwright() as pw:
        browser = _browser(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda route: route.abort())

            def capture(route: object) -> None:
                submitted[current] = route.request.post_data_json  # type: ignore[attr-defined]
                route.abort()  # type: ignore[attr-defined]

            page.route(re.compile(r"/create_flow_run$"), capture)
            for current, deployment in sorted(deployments.items()):  # capture() reads current
                try:
                    page.goto(f"{stack.url}/deployments/deployment/{deployment['id']}")
                    page.get_by_role("button", name="Run", exact=True).click()
                    page.get_by_text("Custom run", exact=True).click()
                    page.get_by_role("button", name="Submit", exact=True).click()
                    deadline = time.monotonic() + 30
                    while current not in submitted and time.monotonic() < deadline:
                        page.wait_for_timeout(200)
                    assert current in submitted, f"{current}: the form did not submit unchanged"
                except BaseException:
                    page.screenshot(path=str(CUSTOM_SHOT), full_page=True)
                    raise
        finally:
            browser.close()  # type: ignore[attr-defined]

    for name, deployment in deployments.items():
        module, attr = deployment["entrypoint"].split(":")
        flow_obj = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), attr)
        model = flow_obj.fn.__annotations__["params"]
        model = getattr(importlib.import_module(flow_obj.fn.__module__), model) if isinstance(model, str) else model
        # what the server does with the form's values before the run starts (``{"__prefect_kind": "json", ...}``)
        hydrated = hydrate(submitted[name]["parameters"], HydrationContext(raise_on_error=True))
        custom = model.model_validate(hydrated["params"]).model_dump(mode="json")
        quick = model.model_validate(deployment["parameters"]["params"]).model_dump(mode="json")
        assert custom == quick, f"{name}: an unchanged Custom Run differs from Quick Run"

"""The web console (/console) in a real browser (Debian's Chromium driven by Playwright) against a live `ftaas up`:
signing in with a key (a wrong one told plainly), the job list updating itself, a job's page following it to
the end (its loss chart gaining points, its status reaching succeeded, without a reload), and everything a user
wrote shown as text: script-injection payloads in metadata never run. Screenshots of each page land in the
test's folder, and in FTAAS_CONSOLE_SCREENSHOTS where that names a folder (docs/console/ holds the committed
ones)."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.servers import LiveServer, upload_processed
from tests.factories import training_jsonl

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PAYLOADS = {"img": "<img src=x onerror=\"alert('img')\">", "script": "<script>alert('script')</script>",
            "quote": "\"><svg onload=alert('svg')>"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.fail("Chromium is needed for the console's tests: `apt-get install chromium` (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # No sandbox: the tests may run as root, where Chromium refuses its sandbox.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def _screenshot(page: Any, name: str, folder: Path, *, full_page: bool = True) -> None:
    targets = [folder]
    if os.environ.get("FTAAS_CONSOLE_SCREENSHOTS"):
        targets.append(Path(os.environ["FTAAS_CONSOLE_SCREENSHOTS"]))
    for target in targets:
        target.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target / f"{name}.png"), full_page=full_page)


def _signed_in(browser: Any, server: LiveServer, view: str, *, confirm: bool = False,
               key: str | None = None) -> tuple[Any, Any, list[str]]:
    """A fresh browser context on `view` (a #/... route), signed in by keyboard with `key` (the server's by
    default): the context, its page and the messages of any dialog that opened (each dismissed, or accepted with
    `confirm`)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message),
                                      dialog.accept() if confirm else dialog.dismiss()))
    page.goto(f"{server.base_url.removesuffix('/v1')}/console{view}")
    page.fill("#api-key", key or server.api_key)
    page.keyboard.press("Enter")
    return context, page, dialogs


def test_the_console_is_one_page_from_this_origin_with_a_policy_that_forbids_inline_script(
        embedded: LiveServer) -> None:
    origin = embedded.base_url.removesuffix("/v1")
    page = httpx.get(f"{origin}/console")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "default-src 'none'" in policy
    assert "<script>" not in page.text and "http" not in page.text.replace(origin, "")  # nothing from elsewhere
    for asset in ("app.js", "app.css"):
        assert httpx.get(f"{origin}/console/{asset}").status_code == 200
    for elsewhere in ("router.py", "..%2Frouter.py", "%2E%2E/router.py"):  # only the listed assets are served
        missing = httpx.get(f"{origin}/console/{elsewhere}")
        assert missing.status_code == 404 and missing.json()["error"]["code"] in ("not_found", "unknown_url")


def test_sign_in_follow_a_job_to_the_end_and_user_text_stays_text(embedded: LiveServer, browser: Any,
                                                                  tmp_path: Path) -> None:
    origin = embedded.base_url.removesuffix("/v1")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"{origin}/console")

    # A wrong key is told plainly; the right one opens the job list. Enter submits (keyboard only).
    page.fill("#api-key", "sk-ftaas-not-a-key")
    page.keyboard.press("Enter")
    page.wait_for_selector("#sign-in-error:has-text('refused')")
    _screenshot(page, "sign-in", tmp_path)
    page.fill("#api-key", embedded.api_key)
    page.keyboard.press("Enter")
    page.wait_for_selector("h1:has-text('Fine-tuning jobs')")
    assert embedded.api_key not in page.url and not context.cookies()
    assert page.evaluate("sessionStorage.getItem('ftaas-api-key')") == embedded.api_key

    # A suffix cannot carry markup (the API refuses it); metadata can, and is shown as text.
    client = embedded.client()
    training = upload_processed(client, "console.jsonl", training_jsonl(12))
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=training.id, suffix="<script>x</script>")
    job = client.fine_tuning.jobs.create(
        model="ftaas-tiny", training_file=training.id, suffix="console", metadata=PAYLOADS,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 4, "batch_size": 1}}})
    # Held until its page is open: the demo model's 48 steps take under a second on a fast machine, which a
    # page opened afterwards would only see finished (measured: a full-suite run saw the chart only at 48 points)
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"

    # The list shows the new job without a reload; its page follows it to the end.
    page.wait_for_selector(f"tr[data-job='{job.id}']", timeout=20_000)
    _screenshot(page, "jobs", tmp_path)
    page.click(f"a[href='#/jobs/{job.id}']")
    page.wait_for_selector(f"h1:has-text('{job.id}')")
    page.wait_for_selector("dd[data-status='paused']")
    client.fine_tuning.jobs.resume(job.id)
    seen: set[int] = set()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        points = page.evaluate("(document.querySelector(\"polyline[data-series='training loss']\") || "
                               "{getAttribute: () => '0'}).getAttribute('data-points')")
        seen.add(int(points))
        if page.query_selector("dd[data-status='succeeded']") and len(seen) > 1:
            break
        assert not page.query_selector("dd[data-status='failed']"), page.inner_text("main")
        time.sleep(0.2)
    assert page.query_selector("dd[data-status='succeeded']"), page.inner_text("main")
    assert len(seen) > 1 and max(seen) >= 4, seen  # the chart gained points while the page was open
    page.wait_for_selector("ol.events li:has-text('completed')")  # the final events arrived too
    _screenshot(page, "job", tmp_path)

    # What the user wrote is on the page as text, and nothing of it ran.
    text = page.inner_text("main")
    for payload in PAYLOADS.values():
        assert payload in text
    assert dialogs == []
    assert page.evaluate("document.scripts.length") == 1  # app.js, nothing the payloads could add
    assert page.evaluate("document.querySelectorAll('main img, main script, main svg[onload]').length") == 0

    # A phone's screen: nothing wider than it.
    page.set_viewport_size({"width": 390, "height": 844})
    wide = page.evaluate("[...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > "
                         "window.innerWidth + 1).slice(0, 5).map((e) => e.tagName + '.' + e.className + ' ' + e.getBoundingClientRect().right)")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), wide
    _screenshot(page, "job-phone", tmp_path)
    context.close()


def test_files_upload_by_drop_and_by_chooser_with_their_validation_errors_by_line(embedded: LiveServer, browser: Any,
                                                                                  tmp_path: Path) -> None:
    """A file dropped on the page and one chosen with the file chooser are uploaded with a progress bar; a bad
    file's errors are listed by line; a file name carrying markup is shown as text."""
    context, page, dialogs = _signed_in(browser, embedded, "#/files")
    page.wait_for_selector("h1:has-text('Files')")

    good = training_jsonl(12).decode()
    lines = good.splitlines()
    bad = "\n".join([lines[0], lines[1], '{"messages": [', lines[3], '{"messages": []}', *lines[5:]]) + "\n"
    name = "<img src=x onerror=alert(1)>.jsonl"
    page.evaluate("""([content, name]) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([content], name, {type: "application/jsonl"}));
        document.getElementById("drop-zone").dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));
    }""", [bad, name])
    page.wait_for_selector("#upload-result:has-text('Uploaded')")
    assert page.evaluate("document.getElementById('upload-progress').value > 0")
    file_id = page.inner_text("#upload-result").split(" as ", 1)[1].split(";")[0]
    row = page.wait_for_selector(f"tr[data-file='{file_id}']:has(ul.errors)", timeout=30_000)
    errors = [item.inner_text() for item in row.query_selector_all("ul.errors li")]
    assert [e.split()[1].rstrip(":") for e in errors] == ["3", "5"], errors  # one line each, by number
    assert name in row.inner_text()
    assert page.evaluate("document.querySelectorAll('main img').length") == 0 and dialogs == []

    page.set_input_files("#upload-file", files=[{"name": "good.jsonl", "mimeType": "application/jsonl",
                                                "buffer": good.encode()}])
    page.wait_for_selector("tr:has(td:has-text('good.jsonl')) .status-processed", timeout=30_000)
    counts = page.inner_text("tr:has(td:has-text('good.jsonl')) ul.token-counts li[data-model='ftaas-tiny']")
    assert " tokens in 12 examples, " in counts and " trained, longest " in counts  # as the API counted them
    _screenshot(page, "files", tmp_path)
    context.close()


def test_the_playground_streams_the_base_and_the_tuned_model_side_by_side(embedded: LiveServer, finished_job: Any,
                                                                          browser: Any, tmp_path: Path) -> None:
    """Two panes, one prompt, both answers streamed at once (server-sent events, several chunks each), and the
    request as the openai SDK call to copy; model output carrying markup is shown as text; a checkpoint's link on
    a job's page opens it here beside its base."""
    origin = embedded.base_url.removesuffix("/v1")
    tuned = finished_job.fine_tuned_model
    context, page, dialogs = _signed_in(browser, embedded, f"#/playground?left=ftaas-tiny&right={tuned}")
    streams: list[str] = []
    page.on("response", lambda response: "/v1/chat/completions" in response.url
            and streams.append(response.headers.get("content-type", "")))
    page.wait_for_selector("h1:has-text('Playground')")
    assert page.input_value("#model-0") == "ftaas-tiny" and page.input_value("#model-1") == tuned
    page.fill("#system", "Answer briefly.")
    page.fill("#prompt", "What is the access code of agent 3?")
    page.fill("#max-tokens", "12")
    page.click("#send")
    page.wait_for_selector("section.pane[data-state='done'] >> nth=1", timeout=60_000)
    for index in (0, 1):
        pane = page.query_selector(f"section.pane:has(#answer-{index})")
        assert pane.get_attribute("data-state") == "done" and int(pane.get_attribute("data-chunks")) > 2
        assert page.inner_text(f"#answer-{index}").strip()
    assert len(streams) == 2 and all(kind.startswith("text/event-stream") for kind in streams), streams
    code = page.inner_text("#sdk-call")
    assert f'model="{tuned}"' in code and "stream=True" in code and '"content": "Answer briefly."' in code
    _screenshot(page, "playground", tmp_path)

    # Model output is text too: a JSON schema makes both models write a script-injection payload.
    payload = PAYLOADS["img"]
    schema = {"type": "json_schema", "json_schema": {"name": "markup", "schema": {
        "type": "object", "properties": {"html": {"const": payload}}, "required": ["html"],
        "additionalProperties": False}}}
    page.click("summary:has-text('Tools and response format')")
    page.fill("#response-format", json.dumps(schema))
    page.fill("#max-tokens", "64")
    page.click("#send")
    page.wait_for_selector("section.pane[data-state='done'] >> nth=1", timeout=60_000)
    for index in (0, 1):
        assert json.loads(page.inner_text(f"#answer-{index}")) == {"html": payload}
    assert dialogs == [] and page.evaluate("document.querySelectorAll('main img, main script').length") == 0
    assert "response_format={" in page.inner_text("#sdk-call")

    # A checkpoint of the job opens in the playground beside the job's base model.
    checkpoint = embedded.client().fine_tuning.jobs.checkpoints.list(finished_job.id).data[0]
    page.goto(f"{origin}/console#/jobs/{finished_job.id}")
    page.click(f"a:has-text('{checkpoint.fine_tuned_model_checkpoint}')")
    page.wait_for_selector("h1:has-text('Playground')")
    assert page.input_value("#model-1") == checkpoint.fine_tuned_model_checkpoint
    context.close()


def test_models_lists_base_and_fine_tuned_and_deletes_a_fine_tuned_one(embedded: LiveServer, browser: Any,
                                                                      tmp_path: Path) -> None:
    client = embedded.client()
    training = upload_processed(client, "to-delete.jsonl", training_jsonl(10))
    job = client.fine_tuning.jobs.create(model="ftaas-tiny", training_file=training.id, suffix="deleteme", method={
        "type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 5}}})
    deadline = time.monotonic() + 180
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, job.status
        time.sleep(0.5)
    assert job.status == "succeeded", job.error
    context, page, dialogs = _signed_in(browser, embedded, "#/models", confirm=True)
    page.wait_for_selector(f"tr[data-model='{job.fine_tuned_model}']")
    assert page.query_selector("tr[data-model='ftaas-tiny']") and not page.query_selector(
        "tr[data-model='ftaas-tiny'] button")  # base models cannot be deleted
    # where the model came from: its job, linked to the job's page
    made = page.inner_text(f"tr[data-model='{job.fine_tuned_model}'] td.provenance")
    assert made == f"job {job.id}", made
    assert page.get_attribute(f"tr[data-model='{job.fine_tuned_model}'] td.provenance a", "href") == f"#/jobs/{job.id}"
    _screenshot(page, "models", tmp_path)
    page.click(f"button[aria-label='Delete {job.fine_tuned_model}']")
    page.wait_for_selector(f"#models-result:has-text('Deleted {job.fine_tuned_model}')")
    # gone from the list (a refresh that started before the delete may show it once more, for one poll)
    page.wait_for_selector(f"tr[data-model='{job.fine_tuned_model}']", state="detached", timeout=10_000)
    assert dialogs == [f"Delete {job.fine_tuned_model}? Its adapter is deleted too; jobs keep their records."]
    assert job.fine_tuned_model not in [m.id for m in client.models.list().data]
    context.close()


def test_a_jobs_knowledge_eval_report_charts_per_item_records_and_result_files(embedded: LiveServer, evaluated_job: dict,
                                                                             browser: Any, tmp_path: Path) -> None:
    """The job that trained with an eval attached: its page draws the report (each split's base and tuned
    accuracy with its interval, the forgetting probes), lists every item with filters, and downloads its result
    files; the Evals page lists the eval and opens the same report."""
    job, report, items = evaluated_job["job"], evaluated_job["report"], evaluated_job["items"]
    context, page, dialogs = _signed_in(browser, embedded, f"#/jobs/{job.id}")
    section = page.wait_for_selector("section[data-report='knowledge']", timeout=30_000)
    memorization = [split for split in report["splits"] if split["counts_toward"] == "memorization"]
    bars = page.query_selector_all("figure[data-chart^='Memorization'] rect[data-series='tuned']")
    assert [float(bar.get_attribute("data-value")) for bar in bars] == [s["tuned"]["accuracy"] for s in memorization]
    whiskers = page.query_selector_all("figure[data-chart^='Memorization'] path.whisker")
    intervals = [tuple(map(float, w.get_attribute("data-interval").split())) for w in whiskers]
    assert intervals[1::2] == [(s["tuned"]["ci_low"], s["tuned"]["ci_high"]) for s in memorization]  # base, tuned
    assert page.query_selector("figure[data-chart^='Forgetting'] rect[data-series='base']")
    headline = report["summary"]["memorization"]
    assert f"base {headline['mean_base']:.3f} → tuned {headline['mean_tuned']:.3f}" in section.inner_text()
    label = page.get_attribute("figure[data-chart^='Generalization'] svg", "aria-label")
    assert "tuned" in label and "[" in label  # screen readers get every value and interval

    # Every item is there (paged, the count said), and the filters select by outcome.
    records = page.locator("section.records")
    assert f"50 of {len(items)} shown ({len(items)} in all)" in records.inner_text()
    learned = [i for i in items if i["base"] and not i["base"]["correct"] and i["tuned"]["correct"]]
    records.locator("select").nth(1).select_option("learned")
    assert f"{min(50, len(learned))} of {len(learned)} shown" in records.inner_text()
    assert len(learned) > 10  # the tuned model learned facts the base did not know
    page.eval_on_selector("#eval-report", "node => node.scrollIntoView()")
    _screenshot(page, "job-eval", tmp_path, full_page=False)  # the report's charts (the page runs long)

    # The result files download, with the key (a plain link could not carry it), as they are stored.
    report_id = next(f for name, f in evaluated_job["files"].items() if name.endswith("-report.json"))
    with page.expect_download() as download:
        page.click(f"button[data-download='{report_id}']")
    assert json.loads(Path(download.value.path()).read_text()) == report
    assert {row.get_attribute("data-result-file") for row in page.query_selector_all("tr[data-result-file]")} == set(
        evaluated_job["files"].values())

    # The Evals page lists the eval and opens the same report.
    page.click("nav a[href='#/evals']")
    row = page.wait_for_selector(f"tr:has-text('job {job.id}')")
    _screenshot(page, "evals", tmp_path)
    row.query_selector("a").click()
    page.wait_for_selector("#eval-report section[data-report='knowledge']", timeout=30_000)
    assert page.query_selector("dd[data-status='succeeded']") and dialogs == []
    context.close()


def test_adapters_are_compressed_merged_and_exported_from_the_console(embedded: LiveServer, finished_job: Any,
                                                                      browser: Any, tmp_path: Path) -> None:
    """The adapter-operations API from the console: a request it refuses is told with the API's message; a
    compression and then a merge of the model with its compressed copy make new models (opened in the
    playground from the list); an export is a tar downloaded with the key; every operation's status follows
    without a reload."""
    tuned = finished_job.fine_tuned_model
    context, page, dialogs = _signed_in(browser, embedded, f"#/adapters?model={tuned}")
    page.wait_for_selector("h1:has-text('Adapters')")
    pick = page.locator(f"input[type='checkbox'][value='{tuned}']")
    assert pick.is_checked()  # opened from the model's row

    def run(kind: str) -> Any:
        page.select_option("#operation-type", kind)
        page.click("#run-operation")
        page.wait_for_selector("#operation-started:has-text('Started')")
        operation = page.inner_text("#operation-started").split()[1]
        row = page.wait_for_selector(f"tr[data-operation='{operation}'][data-status='succeeded']", timeout=120_000)
        page.evaluate("document.getElementById('operation-started').textContent = ''")
        return row

    page.select_option("#operation-type", "merge")
    page.click("#run-operation")
    assert "models" in page.wait_for_selector("#operation-error:not(:empty)").inner_text()  # one model: refused

    page.fill("#operation-suffix", "small")
    compressed = run("compress").query_selector("a").inner_text()
    assert compressed.startswith("ft:ftaas-tiny:") and ":small:" in compressed
    page.reload()  # the new model is offered for the merge
    page.wait_for_selector(f"input[value='{compressed}']").check()
    page.select_option("#operation-type", "merge")
    page.fill("#operation-suffix", "soup")
    soup = run("merge")
    assert ":soup:" in soup.query_selector("a").inner_text() and "ranks" in soup.inner_text()

    page.uncheck(f"input[value='{compressed}']")
    page.select_option("#operation-type", "export")
    page.select_option("#export-format", "adapter")
    export = run("export")
    with page.expect_download() as download:
        export.query_selector("button[data-download]").click()
    with tarfile.open(fileobj=io.BytesIO(Path(download.value.path()).read_bytes())) as archive:
        assert {Path(name).name for name in archive.getnames()} == {"adapter_config.json", "adapter_model.safetensors"}
    _screenshot(page, "adapters", tmp_path)
    assert dialogs == []
    context.close()


def test_a_key_of_another_project_sees_none_of_this_projects_work(embedded: LiveServer, finished_job: Any,
                                                                  browser: Any) -> None:
    """The console shows what the key's project sees through the API, nothing more: another project's key opens
    neither the job's page nor its model, and lists neither."""
    other = embedded.create_key("console-other")
    context, page, _ = _signed_in(browser, embedded, f"#/jobs/{finished_job.id}", key=other)
    assert "No such fine-tuning job" in page.wait_for_selector("main p[role='alert']").inner_text()
    page.click("nav a[href='#/jobs']")
    page.wait_for_selector("#jobs-count:has-text('jobs')")
    assert not page.query_selector(f"tr[data-job='{finished_job.id}']")
    page.click("nav a[href='#/models']")
    page.wait_for_selector("tr[data-model='ftaas-tiny']")  # the installation's base models, and only those
    assert not page.query_selector(f"tr[data-model='{finished_job.fine_tuned_model}']")
    page.goto(f"{embedded.base_url.removesuffix('/v1')}/console#/playground?right={finished_job.fine_tuned_model}")
    page.wait_for_selector("#model-1")
    page.fill("#prompt", "Hello?")
    page.click("#send")
    failed = page.wait_for_selector("section.pane[data-state='failed']", timeout=30_000)
    assert "Error:" in failed.inner_text()  # the API refuses the model to this key
    context.close()

"""The console (``/ui``) in a real browser: Playwright driving Debian's Chromium against a real ``serve run``.

What a person does with it: pick a user, see their history and recommendations with titles and reasons,
click and buy items and watch the ranking move (the page measures event -> updated ranking), post an item
by its text and find where it lands, remove an item, delete the user; with the keyboard alone, too. Every
step is checked in the page *and* in the service's store through the API; the page must log no console
error and pass axe-core with no serious or critical violation (light and dark schemes, and at phone width).

Writes screenshots, the axe results and what the page measured to ``reports/ui/``.

By default a tiny exported model is served with ``serve run`` of ``deployments/demo-colocated.yaml`` on a
free port. ``LMREC_UI_URL`` (and ``LMREC_UI_TOKEN``) point the tests at a service already running instead;
they write to its store (events, an item, a removal, a user deleted): use a throwaway one.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
import zipfile
from importlib import resources
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
REPORTS = REPO / "reports" / "ui"
UI_FILES = ("index.html", "app.js", "api.js", "moves.js", "console.css", "icon.svg")
CHROMIUM = os.environ.get("LMREC_CHROMIUM", "/usr/bin/chromium")
# Debian's Chromium as CI has it (Playwright's own browser download is not possible there)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
DATA = {"dataset": "demo", "synthetic": {"n_items": 60, "n_users": 40, "events_per_user": 8}}
K = 10
NEW_ITEM_TEXT = ("Ultralight Trail Running Vest. Sports & Outdoors > Running. Ridgeline. "
                 "Two soft flasks and a phone pocket, for long mountain runs.")


# ------------------------------------------------------------------------------------- the shipped files

def _ui_dir() -> Path:
    return Path(str(resources.files("lmrec.serving") / "ui"))


def test_the_console_is_self_contained():
    """Every file the page loads is in the package and referenced relatively (it works offline, under any
    route prefix): no CDN, no absolute URL, every module import resolves to a shipped file."""
    ui = _ui_dir()
    assert sorted(p.name for p in ui.iterdir()) == sorted(UI_FILES)
    html = (ui / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"#]+)"', html)
    assert set(refs) == {"icon.svg", "console.css", "app.js"}
    for name in UI_FILES:
        text = (ui / name).read_text()
        urls = [u for u in re.findall(r"https?://[^\s\"')]+", text) if u != "http://www.w3.org/2000/svg"]
        assert not urls, (name, urls)
        for target in re.findall(r'^import .* from "\./([^"]+)";', text, flags=re.M):
            assert (ui / target).is_file(), (name, target)


def test_the_wheel_ships_the_console(tmp_path):
    """The wheel carries every console file (package data), so ``/ui`` works from an installed lmrec.
    Built from a copy of the sources: a build leaves build/ and *.egg-info beside them."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "platform" / "lmrec", src / "platform" / "lmrec", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
                    str(src)], check=True, capture_output=True, timeout=300, cwd=tmp_path)
    [wheel] = (tmp_path / "dist").glob("lmrec-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"lmrec/serving/ui/{name}" for name in UI_FILES} <= names


# ------------------------------------------------------------------------------------------- the service

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A running lmrec service: its base URL, its write token, and a small JSON client."""

    def __init__(self, base: str, token: str):
        import requests

        self.base, self.token, self.http = base.rstrip("/"), token, requests.Session()

    def _auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str):
        return self.http.get(self.base + path, headers=self._auth(), timeout=60)

    def json(self, path: str) -> dict:
        r = self.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text)
        return r.json()

    def title(self, item_id: str) -> str:
        """What the page must call the item: the first sentence of its text (the demo's texts start with
        the title)."""
        text = self.json(f"/v1/items/{item_id}")["text"]
        return re.split(r"(?<=[.!?])\s+|\n", text.strip())[0].rstrip(".")


@pytest.fixture(scope="module")
def service(tmp_path_factory, request):
    """``LMREC_UI_URL``'s service, else ``serve run`` of the co-located demo YAML on a tiny exported model."""
    pytest.importorskip("requests")
    if url := os.environ.get("LMREC_UI_URL"):
        yield Service(url, os.environ.get("LMREC_UI_TOKEN", ""))
        return
    root = tmp_path_factory.mktemp("ui")
    config = _tiny_service_yaml(root, request.getfixturevalue("tiny_lm"))
    from lmrec.benchmarks.serve import Service as ServeRun

    token = "ui-" + uuid.uuid4().hex
    port = yaml.safe_load(config.read_text())["http_options"]["port"]
    run = ServeRun(config, port, {"LMREC_UI_TEST_TOKEN": token}, root / "serve.log")  # its own local Ray
    try:
        run.wait_ready(timeout=600)
        yield Service(f"http://127.0.0.1:{port}", token)
    finally:
        run.stop()


def _tiny_service_yaml(root: Path, tiny_lm: str) -> Path:
    """deployments/demo-colocated.yaml on an untrained tiny model of the synthetic catalog (60 items, 40
    users), exported through the int8 parity gate; a free port; every replica at 0 CPUs."""
    from helpers import export_tiny

    data_file, _, _ = export_tiny(root, tiny_lm, DATA, max_text_length=32)
    spec = yaml.safe_load((REPO / "deployments" / "demo-colocated.yaml").read_text())
    spec["http_options"]["port"] = _free_port()
    app = spec["applications"][0]
    app["args"].update(artifact=str(root / "art"), store_path=str(root / "state.sqlite"), seed_config=str(data_file),
                       api_token_env="LMREC_UI_TEST_TOKEN")
    for d in app["deployments"]:
        d["ray_actor_options"] = {"num_cpus": 0}
        d.pop("autoscaling_config", None)
    config = root / "serve.yaml"
    config.write_text(yaml.safe_dump(spec))
    return config


@pytest.fixture(scope="module")
def console(service) -> Service:
    """The service, once it serves the console at /ui (and links it from /)."""
    r = service.http.get(service.base + "/ui/", timeout=30)
    assert r.status_code == 200 and "lmrec console" in r.text and r.headers["cache-control"] == "no-cache"
    assert service.http.get(service.base + "/ui", timeout=30).url == service.base + "/ui/"  # the slash its links need
    script = service.http.get(service.base + "/ui/app.js", timeout=30)
    assert script.headers["content-type"].startswith("text/javascript")  # module scripts need their type
    assert service.http.get(service.base + "/ui/..%2Fingress.py", timeout=30).status_code == 404  # only the shipped files
    landing = service.http.get(service.base + "/", headers={"Accept": "text/html"}, timeout=30)  # a browser: to the console
    assert landing.url == service.base + "/ui/", landing.url
    assert service.http.get(service.base + "/", timeout=30).json()["console"] == "/ui/"  # any other client: the links
    return service


# -------------------------------------------------------------------------------------------- the browser

@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set LMREC_CHROMIUM)")
    sync_api.expect.set_options(timeout=20_000)  # a busy 2-core CI machine: waits end on what the page shows
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A fresh tab (its own session storage) 1440 px wide; ``page.problems`` collects console errors and
    uncaught exceptions."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, reduced_motion="reduce")
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.problems = []
    page.on("console", lambda m: m.type == "error" and page.problems.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: page.problems.append(f"exception: {e}"))
    yield page
    context.close()


def _shot(page, name: str) -> None:
    REPORTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")  # the sticky top bar, where it belongs in a full-page shot
    page.screenshot(path=str(REPORTS / f"{name}.png"), full_page=True, animations="disabled")


def _axe(page, name: str) -> list[dict]:
    """axe-core's violations of impact serious or critical; every result saved to reports/ui/axe-NAME.json."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page).response
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / f"axe-{name}.json").write_text(json.dumps(results["violations"], indent=1))
    return [{"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]]}
            for v in results["violations"] if v["impact"] in ("serious", "critical")]


def _open(page, console: Service):
    from playwright.sync_api import expect

    page.goto(console.base + "/ui")
    expect(page.get_by_role("heading", name="Recommendations")).to_be_visible()
    health = console.json("/healthz")
    expect(page.locator("#model-version")).to_have_text(health["model_version"])
    return expect


def _set_token(page, console: Service, expect) -> None:
    page.get_by_role("button", name="Set API token").click()
    dialog = page.get_by_role("dialog", name="API token")
    dialog.get_by_label("Bearer token").fill(console.token)
    dialog.get_by_role("button", name="Save token").click()
    expect(page.get_by_role("button", name="API token set")).to_be_visible()
    assert console.token not in page.url


def _row_ids(recs) -> list[str]:
    return recs.locator(":scope > li").evaluate_all("rows => rows.map(r => r.dataset.id)")


# ------------------------------------------------------------------------------------------------ the tests

@pytest.mark.browser
def test_personalization_changes_live_in_the_console(console, page):
    expect = _open(page, console)
    _set_token(page, console, expect)

    # pick a user by prefix
    page.get_by_label("Find a user by id").fill("u00")
    options = page.get_by_role("list", name="Matching users").get_by_role("button")
    expect(options.first).to_contain_text("event")
    user = options.first.locator(".uid").inner_text()
    options.first.click()
    recs = page.get_by_role("list", name="Recommendations")
    expect(recs.locator(":scope > li")).to_have_count(K)
    expect(page.locator("#recs-sub")).to_contain_text(f"For {user}")
    expect(page.locator("#recs-sub")).to_contain_text("greedy policy")  # how the service ranks (GET /v1/policy)

    # each recommendation: the item's title (from its text), its score; the history, newest first
    ids = _row_ids(recs)
    titles = [console.title(i) for i in ids]
    expect(recs.locator(":scope > li h3")).to_have_text(titles)
    stored = console.json(f"/v1/users/{user}/history?limit=200")["events"]
    history = page.get_by_role("list", name=re.compile("^History"))
    expect(history.get_by_role("listitem")).to_have_count(len(stored))
    expect(history.get_by_role("listitem").first).to_contain_text(console.title(stored[-1]["item_id"]))
    _shot(page, "01-user")

    # click, then buy: each event posted, the ranking asked again and every move shown
    measured = []
    for n, (position, verb, event_type) in enumerate([(2, "Click", "click"), (0, "Buy", "purchase"), (4, "Click", "click")]):
        before = _row_ids(recs)
        item = before[position]
        title = console.title(item)
        shown_in = page.locator("#recs-sub").get_attribute("title") or ""
        with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/v1/events")) as sent:
            recs.locator(f':scope > li[data-id="{item}"]').get_by_role("button", name=verb).click()
        cited = sent.value.post_data_json  # the event cites the answer and the slot it was shown in
        assert cited["position"] == position and f"recommendation {cited['recommendation_id']}" in shown_in
        timing = page.get_by_role("status").filter(has_text="new ranking in")
        expect(timing).to_contain_text(f"“{title}” → new ranking in")
        expect(recs.locator(f':scope > li[data-id="{item}"]')).to_have_count(0)  # seen: not recommended again
        expect(page.get_by_role("list", name="Left the list")).to_contain_text(title)
        newest = history.get_by_role("listitem").first
        expect(newest).to_contain_text(title)
        expect(newest).to_have_attribute("data-type", event_type)
        after = _row_ids(recs)
        assert after != before and len(after) == K
        assert recs.locator(':scope > li[data-move="new"]').count() >= 1  # what took the freed place
        last = console.json(f"/v1/users/{user}/history?limit=1")["events"][-1]
        assert (last["item_id"], last["event_type"]) == (item, event_type)
        measured.append(float(page.locator("#timing").get_attribute("data-total-ms")))
        if n == 0:
            _shot(page, "02-after-click")

    # a new item, by its text alone: where it lands for this user, and what it is related to
    item_id = "ui-" + uuid.uuid4().hex[:8]
    page.get_by_label("Item id").fill(item_id)
    page.get_by_label("Text").fill(NEW_ITEM_TEXT)
    page.get_by_label("Attributes").fill("category=Running\nweight_g=180")
    page.get_by_role("button", name="Add item").click()
    placement = page.locator("#placement")
    expect(placement).to_contain_text("“Ultralight Trail Running Vest” is live")
    lands = placement.locator(".lands")
    if os.environ.get("LMREC_UI_URL"):  # a larger catalog: in the user's top 100, or its score below it
        expect(lands).to_have_text(re.compile(rf"#\d+ for {user}|Below {user}'s top 100 · score -?\d"))
    else:  # 60 items: always in a top 100
        expect(lands).to_have_text(re.compile(rf"#\d+ for {user}"))
    expect(page.get_by_role("list", name="Related items").get_by_role("listitem")).to_have_count(5)
    posted = console.json(f"/v1/items/{item_id}")
    assert posted["text"] == NEW_ITEM_TEXT and posted["attributes"] == {"category": "Running", "weight_g": 180}
    rank = re.search(r"#(\d+) for", lands.inner_text())
    if rank and int(rank.group(1)) <= K:
        expect(recs.locator(f':scope > li[data-id="{item_id}"]')).to_have_attribute("data-move", "new")
    _shot(page, "03-new-item")
    assert not (violations := _axe(page, "light")), violations
    page.emulate_media(color_scheme="dark")
    assert not (violations := _axe(page, "dark")), violations
    _shot(page, "03-new-item-dark")
    page.emulate_media(color_scheme="light")

    # remove the top item from the catalog: it leaves the list, and the service no longer has it
    top = _row_ids(recs)[0]
    top_title = console.title(top)
    recs.locator(f':scope > li[data-id="{top}"]').get_by_role("button", name="Remove").click()
    page.get_by_role("dialog").get_by_role("button", name="Remove item").click()
    expect(recs.locator(f':scope > li[data-id="{top}"]')).to_have_count(0)
    expect(page.get_by_role("list", name="Left the list")).to_contain_text(f"{top_title} was #1 · removed from the catalog")
    assert console.get(f"/v1/items/{top}").status_code == 404
    _shot(page, "04-removed")

    # delete the user: the history is gone and the ranking is the cold-start one
    page.get_by_role("button", name="Delete user").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete user").click()
    expect(history).to_contain_text("No events yet")
    expect(page.locator("#recs-sub")).to_contain_text("cold start")
    assert console.json(f"/v1/users/{user}/history")["events"] == []
    _shot(page, "05-user-deleted")
    page.set_viewport_size({"width": 390, "height": 844})  # a phone: one column, nothing wider than the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert not (violations := _axe(page, "phone")), violations
    _shot(page, "06-phone")

    assert page.problems == []
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "console.json").write_text(json.dumps({
        "what": "event -> updated ranking as the console measured it (performance.now around POST /v1/events "
                "and the next POST /v1/recommend), ms",
        "service": console.base, "events_ms": measured, "machine": _machine(),
    }, indent=1))


@pytest.mark.browser
def test_the_console_works_from_the_keyboard(console, page):
    """Search, open a user, act on an item and confirm a dialog with keys only; focus stays in the list
    after it is re-ranked."""
    expect = _open(page, console)
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to recommendations")).to_be_focused()
    _set_token(page, console, expect)
    page.get_by_label("Find a user by id").focus()
    user = "u0002"
    page.keyboard.type(user)
    page.keyboard.press("Enter")
    recs = page.get_by_role("list", name="Recommendations")
    expect(recs.locator(":scope > li")).to_have_count(K)
    first = recs.locator(":scope > li").first.get_by_role("button", name="Click")
    first.focus()
    item = _row_ids(recs)[0]
    page.keyboard.press("Enter")
    expect(recs.locator(f':scope > li[data-id="{item}"]')).to_have_count(0)
    expect(recs.locator("button:focus")).to_have_count(1)  # the Click button of the row now first
    # Escape closes a dialog without doing anything
    page.get_by_role("button", name="Delete user").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("dialog", name=f"Delete {user}?")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_role("dialog")).to_have_count(0)
    assert console.json(f"/v1/users/{user}/history?limit=1")["events"][-1]["item_id"] == item
    # another user, drawn at random among those with a history
    page.get_by_role("button", name="Random user").press("Enter")
    sub = page.locator("#recs-sub")
    expect(sub).not_to_contain_text(f"For {user} ·")
    expect(sub).to_have_text(re.compile(r"^For \S+ · personalised"))
    expect(recs.locator(":scope > li")).to_have_count(K)
    assert page.problems == []


@pytest.mark.browser
def test_a_refused_write_asks_for_the_token_and_posts_nothing(console, page):
    """A wrong token: the API's own words in the token dialog, nothing stored; an item without text is
    refused in the form, before any request."""
    expect = _open(page, console)
    page.get_by_role("button", name="Set API token").click()
    page.get_by_label("Bearer token").fill("not-the-token")
    page.get_by_role("button", name="Save token").click()
    user = "u0003"
    page.get_by_label("Find a user by id").fill(user)
    page.keyboard.press("Enter")
    recs = page.get_by_role("list", name="Recommendations")
    expect(recs.locator(":scope > li")).to_have_count(K)
    stored = console.json(f"/v1/users/{user}/history?limit=1000")["events"]
    recs.locator(":scope > li").first.get_by_role("button", name="Click").click()
    dialog = page.get_by_role("dialog", name="API token")
    expect(dialog).to_contain_text("Clicking was refused: missing or wrong bearer token")
    dialog.get_by_role("button", name="Cancel").click()
    assert console.json(f"/v1/users/{user}/history?limit=1000")["events"] == stored
    assert page.problems and all("401" in p for p in page.problems), page.problems  # the browser logs the refusal

    page.get_by_label("Item id").fill("ui-no-text")
    page.get_by_role("button", name="Add item").click()
    expect(page.get_by_label("Text")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#item-text-error")).to_have_text("The text is what the model reads: write at least a title.")
    assert console.get("/v1/items/ui-no-text").status_code == 404


@pytest.mark.browser
def test_moves_titles_and_attributes_as_the_page_computes_them(console, page):
    """moves.js in the page: each item's move between two rankings, the title read from an item's text,
    attributes typed from key=value lines (and the line at fault named)."""
    _open(page, console)
    got = page.evaluate("""async () => {
      const m = await import("./moves.js");
      const { moves, gone } = m.compareRankings(["a", "b", "c", "d"], ["c", "a", "e", "d"]);
      let bad = null;
      try { m.parseAttributes("colour=red\\noops"); } catch (e) { bad = e.message; }
      return {
        moves: Object.fromEntries([...moves].map(([id, v]) => [id, [v.kind, v.by]])), gone,
        first: [...m.compareRankings(null, ["a"]).moves.values()][0].kind,
        titles: [m.titleOf("i1", "Trail Vest. Running. Light."), m.titleOf("i2", "x", { title: "Named" }), m.titleOf("i3")],
        attrs: m.parseAttributes("weight_g = 180\\nsale=true\\n\\ncolour=deep red"), bad,
      };
    }""")
    assert got["moves"] == {"c": ["up", 2], "a": ["down", 1], "e": ["new", 0], "d": ["same", 0]}
    assert got["gone"] == [{"id": "b", "from": 1}] and got["first"] == "same"  # a first load marks nothing
    assert got["titles"] == ["Trail Vest", "Named", "i3"]
    assert got["attrs"] == {"weight_g": 180, "sale": True, "colour": "deep red"}
    assert got["bad"] == "line 2: write key=value"


def _machine() -> str:
    import platform

    return f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def teardown_module():
    if REPORTS.exists() and not any(REPORTS.iterdir()):
        shutil.rmtree(REPORTS)

"""The browser path in a real browser: headless Chromium loads web/ (a TypeScript client generated
from protos/ with buf) from an origin of its own and calls `contimg-server serve --web-port` over
gRPC-Web and over Connect (JSON), across CORS.

Real parts only: the `contimg-server` console script with demo data, production defaults (writes
and, here, reads need a token: the page's token crosses the gateway as `authorization`), web/ built
by `npm ci` + `npm run build` once per session, Debian's chromium driven by chromium-driver through
selenium, and the job driven by the `contimg jobs` CLI in other processes while the page watches
it. The page reports its progress in `body[data-status]` (loading, ready, error), which the tests
wait on (WebDriverWait, polling the DOM; no sleeps).

Needs npm, /usr/bin/chromium and /usr/bin/chromedriver (scripts/test.sh installs them): without
them the tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from dsa110.contimg.client import Client, ClientConfig, InvalidArgumentError
from dsa110.contimg.v1 import jobs_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CONSOLE_SCRIPT = Path(sys.executable).with_name("contimg-server")
DEMO_IMAGES = 200
READ_TOKEN = "browser-reader"
WRITE_TOKEN = "browser-writer"
STOP_S = 20.0  # SIGTERM to exit: the server's drain (--grace-s, 10 s) and a margin
WAIT_S = 60.0  # page loads and event delivery: generous for a loaded CI machine
TRANSPORTS = ("grpcweb", "connect")

Job = jobs_pb2.Job


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require(condition: bool, why: str) -> None:
    """Skip for a missing tool, or fail under CI (which installs every tool: scripts/test.sh)."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set: scripts/test.sh installs it)")
    pytest.skip(why)


# ---------------------------------------------------------------------------------------------
# web/: built once per session


@pytest.fixture(scope="session")
def web_build() -> Path:
    npm = shutil.which("npm")
    require(npm is not None, "npm is not installed (apt-get install npm)")
    assert npm is not None
    installed = WEB / "node_modules" / ".package-lock.json"
    lock = WEB / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        _npm(npm, "ci", "--no-audit", "--no-fund", "--loglevel=error")
    _npm(npm, "run", "--silent", "build")  # buf generate, tsc --noEmit, esbuild: ~3 s
    assert (WEB / "dist" / "app.js").is_file()
    return WEB


def _npm(npm: str, *args: str) -> None:
    done = subprocess.run([npm, *args], cwd=WEB, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"npm {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class StaticSite:
    """web/ served by a plain HTTP server of its own: the page's origin."""

    server: http.server.ThreadingHTTPServer

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, **query: str) -> str:
        return f"{self.origin}/index.html?{urllib.parse.urlencode(query)}"


@pytest.fixture(scope="module")
def sites(web_build: Path) -> Iterator[tuple[StaticSite, StaticSite]]:
    """Two origins serving web/: the first is allowed by --web-cors-origin, the second is not."""
    handler = functools.partial(_QuietHandler, directory=str(web_build))
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) for _ in range(2)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    yield StaticSite(servers[0]), StaticSite(servers[1])
    for server in servers:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------
# The server


@dataclass
class Gateway:
    target: str  # native gRPC, for the Python client and the CLI
    api: str  # the browser port's base URL
    log: Path  # the server's stderr: its log, one line per RPC

    def rpc_lines(self, method: str) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if f" method=/{method} " in line]


@pytest.fixture(scope="module")
def gateway(sites: tuple[StaticSite, StaticSite], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    data = tmp_path_factory.mktemp("browser")
    log = data / "server.log"
    port, web_port = free_port(), free_port()
    command = [
        str(CONSOLE_SCRIPT),
        *("serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data)),
        *("--demo-images", str(DEMO_IMAGES)),
        *("--write-tokens", WRITE_TOKEN, "--read-tokens", READ_TOKEN, "--require-read-token"),
        *("--web-port", str(web_port), "--web-cors-origin", sites[0].origin),
    ]
    with log.open("wb") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        _wait_serving(f"127.0.0.1:{port}", web_port, proc, log)
        yield Gateway(f"127.0.0.1:{port}", f"http://127.0.0.1:{web_port}", log)
    finally:
        stopped = _stop(proc)
    assert stopped, f"contimg-server still running {STOP_S:.0f} s after SIGTERM (killed):\n{log.read_text()}"
    assert proc.returncode == 0, f"contimg-server exited with {proc.returncode} on SIGTERM:\n{log.read_text()}"


def _stop(proc: subprocess.Popen[bytes]) -> bool:
    """SIGTERM, a graceful stop (browser port included); SIGKILL (and False) if it takes too long."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        return False
    return True


def _wait_serving(target: str, web_port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120  # the demo data is loaded first
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            assert proc.poll() is None, f"contimg-server exited with {proc.returncode}:\n{log.read_text()}"
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"contimg-server not SERVING:\n{log.read_text()}"
            time.sleep(0.05)
    with socket.create_connection(("127.0.0.1", web_port), timeout=5):
        pass  # the browser port accepts connections


@pytest.fixture(scope="module")
def reader(gateway: Gateway) -> Iterator[Client]:
    with Client(ClientConfig(target=gateway.target, token=READ_TOKEN)) as client:
        yield client


def contimg_cli(gateway: Gateway, *args: str) -> dict[str, Any]:
    """`contimg ARGS --json` in a process of its own, as a pipeline stage runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTIMG_")}
    env |= {"CONTIMG_TARGET": gateway.target, "CONTIMG_TOKEN": WRITE_TOKEN}
    done = subprocess.run(
        [sys.executable, "-m", "dsa110.contimg.contimg_cli", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"contimg {' '.join(args)}: exit {done.returncode}\n{done.stderr}"
    return json.loads(done.stdout)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------
# The browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require(CHROMIUM.exists(), f"{CHROMIUM} is missing (apt-get install chromium)")
    require(CHROMEDRIVER.exists(), f"{CHROMEDRIVER} is missing (apt-get install chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1024"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """web/index.html in the browser; its state read from the DOM."""

    def __init__(self, driver: Any, url: str) -> None:
        self.driver = driver
        driver.get(url)

    def js(self, script: str) -> Any:
        return self.driver.execute_script(script)

    def wait(self, condition: Any, what: str) -> None:
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            WebDriverWait(self.driver, WAIT_S, poll_frequency=0.05).until(lambda _: condition())
        except TimeoutException:
            raise AssertionError(f"not within {WAIT_S:.0f} s: {what}; {self.describe()}") from None

    def settled(self) -> str:
        """Wait until the page is ready or has failed; its status."""
        self.wait(lambda: self.status() in ("ready", "error"), "the page is ready or has failed")
        return self.status()

    def status(self) -> str:
        return str(self.js("return document.body.dataset.status"))

    def error(self) -> tuple[str, str]:
        """(#error's data-code, its text): empty while there is no error."""
        code, text = self.js("const e = document.getElementById('error'); return [e.dataset.code || '', e.textContent]")
        return str(code), str(text)

    def image_names(self) -> list[str]:
        return [
            str(n) for n in self.js("return [...document.querySelectorAll('#images li')].map(li => li.dataset.name)")
        ]

    def lightcurve(self) -> tuple[str, int]:
        """(#lightcurve's data-count, its number of rows)."""
        count, rows = self.js(
            "const t = document.getElementById('lightcurve');"
            "return [t.dataset.count || '', t.querySelectorAll('tbody tr').length]"
        )
        return str(count), int(rows)

    def events(self) -> list[dict[str, str]]:
        """#events' items in order: their type, the job's state, the event's sequence."""
        items = self.js(
            "return [...document.querySelectorAll('#events li')]"
            ".map(li => ({type: li.dataset.type, state: li.dataset.state, sequence: li.dataset.sequence}))"
        )
        return [{key: str(value) for key, value in item.items()} for item in items]

    def console(self) -> list[str]:
        return [entry["message"] for entry in self.driver.get_log("browser")]

    def describe(self) -> str:
        return f"status={self.status()!r} error={self.error()!r} events={self.events()} console={self.console()}"


# ---------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_page_lists_reads_and_watches(
    transport: str, gateway: Gateway, sites: tuple[StaticSite, StaticSite], browser: Any, reader: Client
) -> None:
    started = time.monotonic()
    first = reader.list_images(page_size=5).first_page
    assert len(first.images) == 5
    source = next(iter(reader.list_sources(order_by="epoch_count desc", page_size=1)))
    curve = reader.get_lightcurve(source.name)
    assert len(curve.points) >= 2, f"{source.name}: a lightcurve of {len(curve.points)} points"
    with Client(ClientConfig(target=gateway.target, token=WRITE_TOKEN)) as writer:
        job = writer.create_job(Job(type=Job.TYPE_IMAGE), f"browser-{transport}")
    assert job.state == Job.STATE_PENDING

    page = Page(
        browser,
        sites[0].url(api=gateway.api, transport=transport, token=READ_TOKEN, source=source.name, job=job.name),
    )
    assert page.settled() == "ready", page.describe()
    loaded = time.monotonic()
    assert page.image_names() == [image.name for image in first.images]
    assert page.lightcurve() == (str(len(curve.points)), len(curve.points))
    assert page.events() and page.events()[0]["type"] == "SNAPSHOT" and page.events()[0]["state"] == "PENDING"

    # Another process drives the job; each event must reach the page before the next change is
    # made, so the stream really delivers them one by one (not at its end).
    steps = [
        (("jobs", "start", job.name), ("STATE_CHANGED", "RUNNING")),
        (("jobs", "progress", job.name, "--stage", "imaging", "--percent", "60"), ("PROGRESS", "RUNNING")),
        (("jobs", "succeed", job.name, "/stage/images/browser.fits"), ("STATE_CHANGED", "SUCCEEDED")),
    ]
    for n, (args, (kind, state)) in enumerate(steps, start=2):
        contimg_cli(gateway, *args)
        page.wait(lambda n=n: len(page.events()) >= n, f"event {n} ({kind} {state}) shown")
    page.wait(lambda: page.js("return document.body.dataset.watch") == "ended", "the watch stream ended")

    events = page.events()
    assert [(e["type"], e["state"]) for e in events] == [
        ("SNAPSHOT", "PENDING"),
        ("STATE_CHANGED", "RUNNING"),
        ("PROGRESS", "RUNNING"),
        ("STATE_CHANGED", "SUCCEEDED"),
    ]
    sequences = [int(e["sequence"]) for e in events]
    assert sequences == sorted(set(sequences)), sequences
    recorded = [t.sequence for t in reader.get_job(job.name).transitions]  # the job's own history
    assert sequences[1:] == recorded[-3:], (sequences, recorded)
    assert page.status() == "ready" and page.error() == ("", "")
    done = time.monotonic()
    print(f"{transport}: page ready in {loaded - started:.2f} s, job watched to SUCCEEDED in {done - loaded:.2f} s")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bad_filter_is_invalid_argument(
    transport: str, gateway: Gateway, sites: tuple[StaticSite, StaticSite], browser: Any, reader: Client
) -> None:
    bad = "mid_mjd >>> 3"
    with pytest.raises(InvalidArgumentError) as native:
        _ = reader.list_images(filter=bad, page_size=5).first_page
    page = Page(browser, sites[0].url(api=gateway.api, transport=transport, token=READ_TOKEN, filter=bad))
    assert page.settled() == "error", page.describe()
    code, text = page.error()
    assert code == "INVALID_ARGUMENT", page.describe()
    assert text == f"INVALID_ARGUMENT: {native.value.message}", (text, str(native.value))
    details = page.js("return document.getElementById('error').dataset.details").split(",")
    assert sorted(details) == ["google.rpc.BadRequest", "google.rpc.ErrorInfo"], details  # the rich status
    assert page.image_names() == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_read_without_token_is_unauthenticated(
    transport: str, gateway: Gateway, sites: tuple[StaticSite, StaticSite], browser: Any
) -> None:
    page = Page(browser, sites[0].url(api=gateway.api, transport=transport))
    assert page.settled() == "error", page.describe()
    assert page.error()[0] == "UNAUTHENTICATED", page.describe()
    assert page.js("return document.getElementById('error').dataset.details") == "google.rpc.ErrorInfo"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_origin_not_allowed_is_refused_by_the_browser(
    transport: str, gateway: Gateway, sites: tuple[StaticSite, StaticSite], browser: Any
) -> None:
    foreign = sites[1]
    page = Page(browser, foreign.url(api=gateway.api, transport=transport, token=READ_TOKEN))
    assert page.settled() == "error", page.describe()
    # No reply reaches the page: fetch fails as on a network error, which connect-web reports as
    # UNKNOWN, and Chromium says why on the console.
    assert page.error() == ("UNKNOWN", "UNKNOWN: Failed to fetch"), page.describe()
    assert page.image_names() == []
    console = page.console()
    assert any(f"from origin '{foreign.origin}' has been blocked by CORS policy" in line for line in console), console


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_page_that_goes_away_ends_its_watch(
    transport: str, gateway: Gateway, sites: tuple[StaticSite, StaticSite], browser: Any
) -> None:
    """A page left while it watches a job (the job never changes again here) ends its WatchJob on
    the server at once: the page aborts the stream on pagehide (the browser could otherwise keep it
    open in its back/forward cache) and the gateway cancels the call when its connection closes."""
    with Client(ClientConfig(target=gateway.target, token=WRITE_TOKEN)) as writer:
        job = writer.create_job(Job(type=Job.TYPE_IMAGE), f"browser-left-{transport}")
    watch = "dsa110.contimg.v1.JobService/WatchJob"
    before = len(gateway.rpc_lines(watch))
    page = Page(browser, sites[0].url(api=gateway.api, transport=transport, token=READ_TOKEN, job=job.name))
    assert page.settled() == "ready", page.describe()
    assert len(gateway.rpc_lines(watch)) == before  # still open: a call is logged when it ends
    browser.get("about:blank")
    deadline = time.monotonic() + WAIT_S
    while len(gateway.rpc_lines(watch)) == before:
        assert time.monotonic() < deadline, f"WatchJob still open {WAIT_S:.0f} s after its page went away"
        time.sleep(0.05)
    ended = gateway.rpc_lines(watch)[before:]
    assert len(ended) == 1 and " code=CANCELLED " in ended[0], ended

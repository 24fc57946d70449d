"""JupyterLab in headless Chromium, driven as a user drives it, for the UI tests.

`JupyterServer` runs `jupyter lab` on 127.0.0.1 (a free port, a token, a throw-away root,
config, runtime and settings directories) and `Browser` is Debian's chromium through its
chromedriver (selenium; nothing is downloaded). Outputs are read twice: from the notebook's
output models (`window.jupyterapp`, exposed by `--LabApp.expose_app_in_browser`: output
types, mime types, stream names) and from the DOM (what is drawn: tables, stderr blocks).
Both classes clean up every process they started, children included, in `close()`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
STDERR_MIME = "application/vnd.jupyter.stderr"
# The flags the team settled on: no sandbox (root), nothing fetched in the background.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# On this 2-core machine, shared with a TCG VM, a cold server start took 18 s.
START_TIMEOUT = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """cond()'s first truthy value; AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _end_processes(procs: list[psutil.Process], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` s, for the processes still alive."""
    alive = [p for p in procs if p.is_running()]
    for proc in alive:
        with suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(alive, timeout=grace)
    for proc in alive:
        with suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)


def _family(pid: int) -> list[psutil.Process]:
    """The process and all its descendants (kernels run in sessions of their own, so a
    process-group kill would miss them)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class JupyterServer:
    """`jupyter lab` serving a copy of `notebooks` from a temporary root directory."""

    def __init__(self, workdir: Path, repo: Path, env: dict[str, str] | None = None) -> None:
        self.root = workdir / "root"
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.log_path = workdir / "jupyter.log"
        state = workdir / "jupyter"
        settings = state / "settings"
        # Every cell drawn in the DOM (no virtual scrolling), so a test sees every output.
        tracker = settings / "@jupyterlab" / "notebook-extension"
        tracker.mkdir(parents=True)
        (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
        server_env = dict(os.environ)
        server_env.update(
            {
                # The kernel imports this checkout's stapmagic, not whatever is installed.
                "PYTHONPATH": os.pathsep.join(
                    [str(repo), *filter(None, [os.environ.get("PYTHONPATH")])]
                ),
                "JUPYTER_CONFIG_DIR": str(state / "config"),
                "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
                "JUPYTERLAB_SETTINGS_DIR": str(settings),
                "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"),
                "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                **(env or {}),
            }
        )
        argv = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            "--port-retries=0",
            "--allow-root",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(  # noqa: S603 (argv list)
            argv,
            env=server_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.root,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, method: str = "GET") -> Any:
        req = urllib.request.Request(
            f"{self.url}{path}",
            method=method,  # noqa: S310
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (our own server)
            body = resp.read()
        return json.loads(body) if body else None

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"jupyter lab exited ({self.proc.returncode}):\n{self.log_tail()}"
                )
            try:
                self.api("/api/status")
                return True
            except (OSError, urllib.error.URLError):
                return False

        wait_until(up, timeout, f"jupyter lab on port {self.port} ({self.log_path})", 0.5)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        """Shut the server down with its kernels; whatever is left is terminated, then killed."""
        family = _family(self.proc.pid)
        if self.proc.poll() is None:
            with suppress(OSError, urllib.error.URLError, ValueError):
                self.api("/api/shutdown", method="POST")
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        family += [p for p in _family(self.proc.pid) if p not in family]
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
        _end_processes(family)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._log.close()


@dataclass
class Cell:
    """One cell as the browser shows it after a run."""

    index: int
    type: str
    source: str
    execution_count: int | None
    tags: list[str]
    outputs: list[dict[str, Any]]  # nbformat output dicts, from the output models
    tables: int  # <table> elements drawn in the output area
    stderr_drawn: int  # output nodes drawn with the stderr mime type
    text: str  # the output area's visible text
    status: str | None = None  # the execute reply's: ok, error, aborted (None: not run)

    @property
    def magic(self) -> str | None:
        first = self.source.lstrip().split(None, 1)
        return first[0] if first and first[0].startswith("%%") else None

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [o for o in self.outputs if o["output_type"] == "error"]

    def streams(self, name: str) -> str:
        return "".join(
            _text(o.get("text", ""))
            for o in self.outputs
            if o["output_type"] == "stream" and o.get("name") == name
        )

    def mime_types(self) -> list[tuple[str, list[str]]]:
        return [(o["output_type"], sorted(o.get("data", {}))) for o in self.outputs]


def _text(value: str | list[str]) -> str:
    return value if isinstance(value, str) else "".join(value)


@dataclass
class Snapshot:
    """The cell's output models and drawn text at one moment (ms since the run began)."""

    t_ms: float
    outputs: list[dict[str, Any]]
    text: str


@dataclass
class CellRun:
    """One cell run with everything it drew on the way."""

    started_ms: float
    ended_ms: float | None
    snapshots: list[Snapshot] = field(default_factory=list)

    def before_end(self) -> list[Snapshot]:
        end = self.ended_ms if self.ended_ms is not None else float("inf")
        return [s for s in self.snapshots if s.t_ms < end]


_JS_PANEL = "const panel = window.jupyterapp.shell.currentWidget;"

_JS_CELLS = (
    _JS_PANEL
    + """
return panel.content.widgets.map((c, i) => {
  const m = c.model;
  const outputs = [];
  if (m.type === 'code') {
    for (let j = 0; j < m.outputs.length; j++) outputs.push(m.outputs.get(j).toJSON());
  }
  const area = m.type === 'code' ? c.outputArea.node : null;
  return {
    index: i, type: m.type, source: m.sharedModel.getSource(),
    execution_count: m.type === 'code' ? m.executionCount : null,
    tags: m.getMetadata('tags') || [], outputs,
    tables: area ? area.querySelectorAll('table').length : 0,
    stderr_drawn: area ? area.querySelectorAll('[data-mime-type="STDERR_MIME"]').length : 0,
    text: area ? area.innerText : '',
  };
});
""".replace("STDERR_MIME", STDERR_MIME)
)

# Records every change of one cell's outputs (models and drawn text) from now on.
_JS_WATCH = (
    _JS_PANEL
    + """
const cell = panel.content.widgets[arguments[0]];
const t0 = performance.now();
const log = {started: 0, ended: null, snaps: []};
window.__stapmagic_watch = log;
const snap = () => {
  const outputs = [];
  for (let j = 0; j < cell.model.outputs.length; j++) outputs.push(cell.model.outputs.get(j).toJSON());
  const text = cell.outputArea.node.innerText;
  const last = log.snaps[log.snaps.length - 1];
  const key = JSON.stringify(outputs) + text;
  if (!last || last.key !== key) log.snaps.push({t: performance.now() - t0, outputs, text, key});
};
cell.model.outputs.changed.connect(snap);
new MutationObserver(snap).observe(cell.outputArea.node,
  {subtree: true, childList: true, characterData: true});
panel.content.deselectAll();
panel.content.activeCellIndex = arguments[0];
window.jupyterapp.commands.execute('notebook:run-cell').then(
  () => { snap(); log.ended = performance.now() - t0; },
  (e) => { log.error = String(e); log.ended = performance.now() - t0; });
"""
)


class Browser:
    """Headless Chromium through Debian's chromedriver, pointed at one JupyterServer."""

    def __init__(
        self, server: JupyterServer, profile: Path, size: tuple[int, int] = (1400, 1000)
    ) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.server = server
        self.size = size
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
        ):
            options.add_argument(flag)
        # An explicit driver path: selenium's manager would otherwise try to download one.
        self.service = Service(CHROMEDRIVER)
        self.driver = webdriver.Chrome(service=self.service, options=options)
        self.driver.set_script_timeout(120)

    def close(self) -> None:
        """Quit chromium; any of its processes still alive afterwards are ended."""
        proc = getattr(self.service, "process", None)
        family = _family(proc.pid) if proc is not None else []
        with suppress(Exception):
            self.driver.quit()
        _end_processes(family)

    # -- pages ----------------------------------------------------------------------------

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def js_async(self, script: str, *args: Any) -> Any:
        return self.driver.execute_async_script(script, *args)

    def open(self, name: str, timeout: float = START_TIMEOUT) -> None:
        """Open notebook `name` (relative to the server's root) and wait for an idle kernel."""
        self.driver.get(f"{self.server.url}/lab/tree/{name}?reset&token={self.server.token}")
        wait_until(
            lambda: self.js(
                "const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;"
                "return !!(w && w.context && w.context.path === arguments[0] && w.sessionContext"
                " && w.sessionContext.session && w.sessionContext.session.kernel"
                " && w.sessionContext.session.kernel.status === 'idle');",
                name,
            ),
            timeout,
            f"{name} open with an idle kernel",
        )
        # Each reply's status by execution count: a UsageError is drawn as stderr text only,
        # so the reply is what says that a cell failed.
        self.js(
            _JS_PANEL
            + """
          window.__stapmagic_replies = {};
          panel.sessionContext.session.kernel.anyMessage.connect((k, a) => {
            const m = a.msg;
            if (a.direction === 'recv' && m.header.msg_type === 'execute_reply')
              window.__stapmagic_replies[m.content.execution_count] = m.content.status;
          });"""
        )
        self.dismiss_news()

    def dismiss_news(self) -> bool:
        """Answer "No" to JupyterLab's news pop-up if it is up (it covers part of the page)."""
        return bool(
            self.js(
                "const b = Array.from(document.querySelectorAll('.jp-toast-button'))"
                "  .find(b => b.textContent.trim() === 'No'"
                "        && b.closest('.Toastify__toast').textContent.includes('news'));"
                "if (b) { b.click(); return true; } return false;"
            )
        )

    def kernel_status(self) -> str:
        return str(self.js(_JS_PANEL + "return panel.sessionContext.session.kernel.status;"))

    def run_all(self, timeout: float) -> None:
        """Run every cell (Run > Run All Cells) and wait until all ran and the kernel is idle."""
        self.js(
            _JS_PANEL
            + """
          window.__stapmagic_all = {done: false};
          window.jupyterapp.commands.execute('notebook:run-all-cells').then(
            (r) => { window.__stapmagic_all = {done: true, result: r}; },
            (e) => { window.__stapmagic_all = {done: true, error: String(e)}; });"""
        )
        wait_until(
            lambda: self.js("return window.__stapmagic_all.done;"),
            timeout,
            "Run All Cells to finish",
        )
        self.wait_idle(timeout)

    def wait_idle(self, timeout: float, quiet: float = 1.0) -> None:
        """Wait for the kernel to be idle for `quiet` s in a row."""
        since: list[float] = []

        def idle() -> bool:
            if self.kernel_status() != "idle":
                since.clear()
                return False
            since.append(time.monotonic())
            return since[-1] - since[0] >= quiet

        wait_until(idle, timeout, "the kernel to go idle")

    def cells(self) -> list[Cell]:
        replies = self.js("return window.__stapmagic_replies;") or {}
        return [
            Cell(**c, status=replies.get(str(c["execution_count"]))) for c in self.js(_JS_CELLS)
        ]

    def evaluate(self, expression: str) -> str:
        """The text/plain value of `expression` in the notebook's kernel, asked with a silent
        request (no new cell, no history, no output drawn)."""
        reply = self.js_async(
            _JS_PANEL
            + """
          const done = arguments[arguments.length - 1];
          const kernel = panel.sessionContext.session.kernel;
          kernel.requestExecute({code: '', silent: true, store_history: false,
                                 user_expressions: {v: arguments[0]}}).done.then(
            (r) => done(r.content.user_expressions.v),
            (e) => done({status: 'error', evalue: String(e)}));""",
            expression,
        )
        if reply.get("status") != "ok":
            raise AssertionError(f"{expression}: {reply.get('ename')}: {reply.get('evalue')}")
        return str(reply["data"]["text/plain"])

    def user_types(self) -> dict[int, str]:
        """`Out`'s value types by execution count ("pandas.DataFrame")."""
        import ast

        value = ast.literal_eval(
            self.evaluate(
                "{k: type(v).__module__.split('.')[0] + '.' + type(v).__name__"
                " for k, v in Out.items()}"
            )
        )
        assert isinstance(value, dict), value
        return {int(k): str(v) for k, v in value.items()}

    # -- one cell -------------------------------------------------------------------------

    def set_source(self, index: int, source: str) -> None:
        self.js(
            _JS_PANEL + "panel.content.widgets[arguments[0]].model.sharedModel"
            ".setSource(arguments[1]);",
            index,
            source,
        )

    def append_cell(self, source: str) -> int:
        """A new code cell at the end holding `source`; its index."""
        return int(
            self.js(
                _JS_PANEL
                + """
          const nb = panel.content;
          nb.model.sharedModel.insertCell(nb.model.cells.length,
                                          {cell_type: 'code', source: arguments[0]});
          return nb.model.cells.length - 1;""",
                source,
            )
        )

    @contextmanager
    def running(
        self, index: int, timeout: float = START_TIMEOUT
    ) -> Iterator[Callable[[], CellRun]]:
        """Run cell `index` (as Run > Run Selected Cell does), recording every output change.

        Yields a function returning the record so far; on exit waits for the cell to end."""
        self.js(_JS_WATCH, index)
        yield self.watched
        wait_until(lambda: self.watched().ended_ms is not None, timeout, f"cell {index} to finish")

    def watched(self) -> CellRun:
        log = self.js("return window.__stapmagic_watch;")
        return CellRun(
            started_ms=log["started"],
            ended_ms=log["ended"],
            snapshots=[Snapshot(s["t"], s["outputs"], s["text"]) for s in log["snaps"]],
        )

    def click_stop(self) -> None:
        """The toolbar's stop button (Interrupt the kernel), clicked like a user does."""
        from selenium.webdriver.common.by import By

        self.dismiss_news()
        button = self.driver.find_element(
            By.CSS_SELECTOR,
            ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-NotebookPanel-toolbar "
            "[data-command='notebook:interrupt-kernel']",
        )
        button.click()

    def complete(self, index: int, source: str, timeout: float = 60.0) -> list[str]:
        """Type `source` into cell `index`, press Tab at its end; what the completer offers
        (or, when Lab inserted a lone match itself, the word now at the cursor)."""
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.common.keys import Keys

        self.set_source(index, source)
        self.js(
            _JS_PANEL
            + """
          const cell = panel.content.widgets[arguments[0]];
          panel.content.deselectAll();
          panel.content.activeCellIndex = arguments[0];
          panel.content.mode = 'edit';
          const ed = cell.editor;
          ed.setCursorPosition(ed.getPositionAt(arguments[1].length));
          ed.focus();""",
            index,
            source,
        )
        ActionChains(self.driver).send_keys(Keys.TAB).perform()

        def offered() -> list[str] | None:
            items = self.js(
                "const c = document.querySelector('.jp-Completer:not(.lm-mod-hidden)');"
                "return c ? Array.from(c.querySelectorAll('.jp-Completer-item'))"
                "  .map(e => e.getAttribute('data-value') || e.innerText.trim()) : null;"
            )
            if items:
                return [str(i) for i in items]
            now = self.js(
                _JS_PANEL + "return panel.content.widgets[arguments[0]].model"
                ".sharedModel.getSource();",
                index,
            )
            if now != source:
                return [str(now)[len(source) - len(source.split()[-1]) :].split()[0]]
            return None

        try:
            return list(wait_until(offered, timeout, "the completer"))
        except AssertionError:
            return []
        finally:
            ActionChains(self.driver).send_keys(Keys.ESCAPE).perform()

    # -- pictures -------------------------------------------------------------------------

    def screenshot(self, path: Path) -> None:
        """The whole notebook in one picture: the window is made as tall as its content."""
        self.dismiss_news()
        height = int(
            self.js(
                "const o = document.querySelector("
                "  '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer');"
                "if (!o) return 0; o.scrollTop = 0; return o.scrollHeight;"
            )
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        width, base = self.size
        try:
            self.driver.set_window_size(width, min(max(base, height + 250), 16000))
            time.sleep(0.5)
            self.driver.save_screenshot(str(path))
        finally:
            self.driver.set_window_size(width, base)


def copy_notebooks(src: Path, dest: Path) -> list[str]:
    """notebooks/*.ipynb, their workloads and recordings/ into `dest`; the notebook names."""
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    for path in sorted(src.iterdir()):
        if path.suffix in (".ipynb", ".py"):
            shutil.copy(path, dest / path.name)  # follows the workloads' symlinks
            if path.suffix == ".ipynb":
                names.append(path.name)
    shutil.copytree(src / "recordings", dest / "recordings")
    return names

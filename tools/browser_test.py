"""The workbench as a user sees it: JupyterLab in headless Chromium runs `10_widgets`, trains from the panel, explores.

`make test-browser` (or `python tools/browser_test.py`): starts JupyterLab on a free localhost port in a scratch
folder holding a copy of nbs/10_widgets.ipynb, opens it in Debian's Chromium (/usr/bin/chromium, driven by
Playwright; no browser is downloaded), runs all cells, presses Start on the panel at the bottom (the built-in teacher
into a Phi-Mamba student), waits until the loss curve has points and the explorer shows the first stage's student,
Pause, Resume, Stop, and changes the explorer's head. Then a second notebook shows `SelectionExplorer` on the built-in
teacher (three selection methods) and switches its method and budget. A third runs MOHAWK stage 1 alone (matrix
orientation, 40 steps) with the `Distiller` on the built-in teacher, opens `MixingExplorer` on the teacher's most
previous-token head (largest mean A[t, t-1] over held-out blocks) with a held-out document, and checks that the
student's matrix follows the teacher's there (Pearson correlation over the causal entries >= 0.5, read back from the
saved notebook) and that the status line shows the run's held-out matrix errors. Screenshots go to runs/browser/*.png.
It fails on an error output in a notebook, on a widget that cannot be displayed, or on a widget-manager error in the
console."""

import json, os, re, shutil, socket, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "runs" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WIDGET_ERRORS = re.compile(r"widget|comm|model class|anywidget|Class \S+ not found", re.I)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(work: Path, port: int, token: str) -> subprocess.Popen:
    "JupyterLab serving `work`, with its kernels on this Python (the one running this script)."
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        JUPYTER_CONFIG_DIR=str(work / ".jupyter"),
        JUPYTER_RUNTIME_DIR=str(work / ".runtime"),
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    )
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={work}",
        f"--LabApp.workspaces_dir={work / '.workspaces'}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.news_url=None",
        "--LabApp.extension_manager=readonly",
    ] + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])
    return subprocess.Popen(cmd, env=env, stdout=open(OUT / "jupyterlab.log", "w"), stderr=subprocess.STDOUT)


def wait_http(port: int, proc: subprocess.Popen, timeout: float = 90):
    import urllib.request

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            sys.exit(f"JupyterLab exited ({proc.returncode}); see {OUT / 'jupyterlab.log'}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"JupyterLab did not answer on port {port} within {timeout} s; see {OUT / 'jupyterlab.log'}")


def saved_notebook(page, api: str) -> dict:
    "Save the notebook (Ctrl+S) and read it back through the server (every cell's outputs, on screen or not)."
    import urllib.request

    page.locator(".jp-Notebook:visible").first.click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+s")
    time.sleep(2)
    return json.loads(urllib.request.urlopen(api, timeout=30).read())["content"]


def notebook_errors(nb: dict) -> list[str]:
    "The error outputs of a notebook's cells."
    return [
        f"error output in cell {i}: {o.get('ename')}: {o.get('evalue')}"
        for i, c in enumerate(nb["cells"])
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]


def saved_errors(page, api: str) -> list[str]:
    "Save the notebook and read it back: the error outputs of its cells."
    return notebook_errors(saved_notebook(page, api))


def stdout_text(nb: dict) -> str:
    "What a notebook's cells printed (their stdout streams), in order."
    return "".join(
        "".join(o["text"]) if isinstance(o["text"], list) else o["text"]
        for c in nb["cells"]
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )


def wait_run_all(page, api: str, timeout: float = 600):
    """Until the kernel has stayed idle for 5 s (Run All finished, or stopped at an error); JupyterLab keeps off-screen
    cells out of the page."""
    t0, idle_since = time.time(), None
    while time.time() - t0 < timeout:
        idle = page.locator('.jp-Notebook-ExecutionIndicator[data-status="idle"]').count() > 0
        idle_since = (idle_since or time.time()) if idle else None
        if idle_since and time.time() - idle_since > 5:
            return
        time.sleep(0.5)
    raise TimeoutError(f"Run All still running after {timeout} s")


def check_page(page, console_errors: list) -> list[str]:
    "Tracebacks shown in the page, widgets that failed to display, widget-manager errors in the console."
    problems = [
        f"error output: {t[:300]}"
        for t in page.locator('[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
        if "Traceback" in t
    ]
    problems += [
        f"widget not displayed: {t[:200]}"
        for t in page.locator(".jp-OutputArea-output").all_inner_texts()
        if "Error displaying widget" in t or "Error rendering" in t
    ]
    problems += [f"console: {m[:300]}" for m in console_errors if WIDGET_ERRORS.search(m)]
    return problems


def run(page, url: str, api: str, console_errors: list):
    def shot(name, locator=None):
        toast = page.locator(
            ".jp-Notification-Toast button", has_text="No"
        )  # JupyterLab's news question covers the page
        if toast.count():
            toast.first.click()
        (locator or page).screenshot(path=str(OUT / f"{name}.png"))
        print(f"  screenshot runs/browser/{name}.png", flush=True)

    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=120_000)
    time.sleep(3)  # the session settles after the first 'idle' (a Run All at once can meet a kernel dialog)
    assert page.locator(".jp-Dialog").count() == 0, "a dialog opened with the notebook (no kernelspec?)"
    print("notebook open, kernel idle, no dialog; Run All", flush=True)
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()
    time.sleep(2)
    if page.locator(".jp-Dialog").count():  # JupyterLab's race at start-up, not the notebook's: take its default kernel
        print("  a kernel dialog appeared on Run All; accepting its default", flush=True)
        page.locator(".jp-Dialog .jp-mod-accept").click()
    last = page.locator(".jp-Notebook .jp-CodeCell").last
    wait_run_all(page, api)
    print("Run All ended", flush=True)
    problems = check_page(page, console_errors) + saved_errors(page, api)
    assert not problems, "\n".join(problems)
    panel = last.locator(".jp-OutputArea-output").last
    start = panel.locator("button", has_text="Start")
    start.wait_for(timeout=60_000)
    panel.scroll_into_view_if_needed()
    shot("1-panel-idle", last)

    start.click()
    print("Start pressed; waiting for curve points", flush=True)
    line = panel.locator(".js-plotly-plot .scatterlayer .trace path.js-line")
    page.wait_for_function(
        """(el) => [...el.querySelectorAll('.js-plotly-plot .scatterlayer path.js-line')]
                                       .some(p => (p.getAttribute('d') || '').split('L').length > 3)""",
        arg=panel.element_handle(),
        timeout=180_000,
    )
    print(f"curve has points ({line.count()} traces); waiting for the first stage end (explorer)", flush=True)
    panel.locator("text=the current student").wait_for(timeout=180_000)
    time.sleep(1.0)
    shot("2-panel-running", last)

    panel.locator("button", has_text="Pause").click()
    panel.locator("button", has_text="Resume").wait_for(timeout=60_000)
    panel.locator("b", has_text="paused").wait_for(timeout=60_000)
    shot("3-panel-paused", last)
    panel.locator("button", has_text="Resume").click()
    panel.locator("b", has_text="running").wait_for(timeout=60_000)
    panel.locator("button", has_text="Stop").click()
    panel.locator("b", has_text="stopped").wait_for(timeout=120_000)
    print("paused, resumed, stopped", flush=True)
    shot("4-panel-stopped", last)

    # the explorer inside the panel: another head, picked with its dropdown
    head = panel.locator(".widget-dropdown", has_text="head").last.locator("select")
    other = "3" if head.input_value() != "3" else "2"
    head.select_option(other)
    heatmaps = panel.locator(".js-plotly-plot", has_text="teacher · head").last
    heatmaps.scroll_into_view_if_needed()
    page.wait_for_function(
        "([el, h]) => [...el.querySelectorAll('text')].some(t => t.textContent.includes('teacher · head ' + h))",
        arg=[heatmaps.element_handle(), other],
        timeout=60_000,
    )
    print(f"explorer shows head {other}", flush=True)
    time.sleep(1.0)
    shot("5-explorer-other-head", panel.locator(".widget-vbox", has_text="the current student").last)
    problems = check_page(page, console_errors)
    assert not problems, "\n".join(problems)


SELECTION_CELLS = [
    "from ssm_distill.builtin import load_builtin_teacher\n"
    "from ssm_distill.selection import SelectionExplorer, SelectionView, score_heads\n"
    "teacher, _ = load_builtin_teacher()\n"
    "scores = {m: score_heads(teacher, m) for m in ('uniform', 'random', 'matrix_error')}",
    "SelectionExplorer(SelectionView(teacher, scores), budget=8)",
]


def selection_notebook(path: Path):
    "A two-cell notebook that shows the selection explorer (what a user writes after `score_heads`)."
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in SELECTION_CELLS])
    nb.metadata["kernelspec"] = {"display_name": "python3", "language": "python", "name": "python3"}
    nbformat.write(nb, str(path))


def open_and_run_all(page, url: str, api: str, console_errors: list) -> dict:
    "Open a notebook, Run All, wait for the kernel, check for errors; the saved notebook."
    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=120_000)
    time.sleep(3)
    page.locator(".lm-MenuBar-item", has_text="Run").first.click()
    page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()
    time.sleep(2)
    if page.locator(".jp-Dialog").count():
        page.locator(".jp-Dialog .jp-mod-accept").click()
    wait_run_all(page, api)
    nb = saved_notebook(page, api)
    problems = check_page(page, console_errors) + notebook_errors(nb)
    assert not problems, "\n".join(problems)
    return nb


def run_selection(page, url: str, api: str, console_errors: list):
    "Open the selection notebook, run it, switch the method and the budget, and check the heatmap follows."
    open_and_run_all(page, url, api, console_errors)
    out = page.locator(".jp-Notebook .jp-CodeCell").last.locator(".jp-OutputArea-output").last
    title = out.locator(".js-plotly-plot .gtitle")
    title.wait_for(timeout=60_000)
    assert title.text_content().startswith("uniform: 8 of 32 heads"), title.text_content()
    out.screenshot(path=str(OUT / "6-selection-uniform.png"))
    out.locator(".widget-dropdown", has_text="method").locator("select").select_option("matrix_error")
    page.wait_for_function(
        "(el) => el.textContent.startsWith('matrix_error')", arg=title.element_handle(), timeout=60_000
    )
    out.locator(".widget-toggle-buttons button", has_text="layer").click()
    page.wait_for_function(
        "(el) => el.textContent.startsWith('matrix_error: 8 of 32')", arg=title.element_handle(), timeout=60_000
    )
    time.sleep(1.0)
    out.screenshot(path=str(OUT / "7-selection-matrix-error-layers.png"))
    print(f"selection explorer: {title.text_content()!r}", flush=True)
    problems = check_page(page, console_errors)
    assert not problems, "\n".join(problems)


STAGE1_CELLS = [
    "import dataclasses, tempfile, torch\n"
    "import ssm_distill.demo\n"
    "from ssm_distill.config import StageConfig\n"
    "from ssm_distill.train import Distiller\n"
    "from ssm_distill.widgets import MixingExplorer\n"
    "out = tempfile.mkdtemp(prefix='stage1-', dir='.')  # in the test's scratch folder\n"
    "stage1 = StageConfig('matrix_orientation', lr=1e-2, warmup=0.05, tokens=40 * 1024)\n"
    "cfg = dataclasses.replace(\n"
    "    ssm_distill.demo.demo_config(out), stages=[stage1], total_tokens=None, checkpoint_every=0\n"
    ")\n"
    "d = Distiller(cfg)\n"
    "d.run()",
    "# the teacher's most previous-token head: the largest mean A[t, t-1] over held-out blocks\n"
    "cap = d.teacher.capture(d.data.eval[:8], what={'attn_probs'})\n"
    "prev = torch.stack([cap.get('attn_probs', l).diagonal(-1, dim1=-2, dim2=-1).mean((0, 2))\n"
    "                    for l in range(d.teacher.n_layers)])  # (L, H)\n"
    "layer, head = divmod(int(prev.argmax()), prev.shape[1])\n"
    "print(f'previous-token head: layer {layer} head {head}, mean A[t, t-1] {float(prev[layer, head]):.3f}')",
    "# a held-out document (whole: between two end-of-text tokens) of English prose\n"
    "eos = d.tokenizer.eos_token\n"
    "docs = [s.strip() for b in d.data.eval[:8] for s in d.tokenizer.decode(b).split(eos)[1:-1]]\n"
    "text = next(s for s in docs if s[:1].isupper() and len(d.tokenizer(s).input_ids) >= 24)\n"
    "explorer = MixingExplorer(d.teacher, d.accelerator.unwrap_model(d.student), text=text, tokenizer=d.tokenizer,\n"
    "                          run_errors=d.matrix_error_record())\n"
    "explorer.layer.value, explorer.head.value = layer, head\n"
    "explorer.redraw()\n"
    "A, M = explorer.mats[layer]['teacher'][head], explorer.mats[layer]['student'][head]  # (T, T) each\n"
    "causal = torch.ones_like(A, dtype=torch.bool).tril()\n"
    "r = float(torch.corrcoef(torch.stack([A[causal], M[causal]]))[0, 1])\n"
    "print(f'pearson(teacher, student) on the explorer text, layer {layer} head {head}: {r:.4f}')\n"
    "explorer",
]


def stage1_notebook(path: Path):
    "A notebook that runs MOHAWK stage 1 alone and opens the mixing explorer on the teacher's previous-token head."
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in STAGE1_CELLS])
    nb.metadata["kernelspec"] = {"display_name": "python3", "language": "python", "name": "python3"}
    nbformat.write(nb, str(path))


def run_stage1(page, url: str, api: str, console_errors: list):
    """Run the stage-1 notebook; check the explorer shows the previous-token head, the student's matrix correlates with
    the teacher's there, and the status line carries the run's held-out matrix errors."""
    t0 = time.time()
    printed = stdout_text(open_and_run_all(page, url, api, console_errors))
    print(f"stage-1 notebook ran in {time.time() - t0:.0f} s", flush=True)
    m = re.search(r"pearson\(teacher, student\) on the explorer text, layer (\d+) head (\d+): (-?[\d.]+|nan)", printed)
    assert m, f"no Pearson line in the notebook's output: {printed[-2000:]!r}"
    layer, head, r = m[1], m[2], float(m[3])
    out = page.locator(".jp-Notebook .jp-CodeCell").last.locator(".jp-OutputArea-output").last
    out.scroll_into_view_if_needed()
    heatmaps = out.locator(".js-plotly-plot", has_text=f"teacher · head {head}")
    heatmaps.wait_for(timeout=60_000)
    for title in (f"layer {layer}, head {head}", f"student · head {head}", f"student − teacher · head {head}"):
        page.wait_for_function(
            "([el, t]) => [...el.querySelectorAll('text')].some(e => e.textContent.includes(t))",
            arg=[heatmaps.element_handle(), title],
            timeout=60_000,
        )
    assert out.locator(".widget-dropdown", has_text="layer").locator("select").input_value() == layer
    assert out.locator(".widget-dropdown", has_text="head").locator("select").input_value() == head
    status = out.locator(".widget-html", has_text="held-out matrix error of the run")
    status.wait_for(timeout=60_000)
    assert "after 1-matrix_orientation" in status.inner_text(), status.inner_text()
    time.sleep(1.0)
    out.screenshot(path=str(OUT / "8-explorer-after-stage1-previous-token.png"))
    print("  screenshot runs/browser/8-explorer-after-stage1-previous-token.png", flush=True)
    print(f"{printed.strip()}\nstatus: {status.inner_text().strip()!r}", flush=True)
    assert r >= 0.5, f"after stage 1 the student's layer {layer} head {head} correlates {r:.3f} < 0.5 with the teacher"
    problems = check_page(page, console_errors)
    assert not problems, "\n".join(problems)


def main():
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    for p in OUT.glob("*.png"):
        p.unlink()
    work = Path(tempfile.mkdtemp(prefix="ssm-distill-browser-"))
    shutil.copy(ROOT / "nbs" / "10_widgets.ipynb", work / "10_widgets.ipynb")
    selection_notebook(work / "selection.ipynb")
    stage1_notebook(work / "stage1.ipynb")
    port, token = free_port(), "ssm-distill-browser-test"
    lab = start_lab(work, port, token)
    try:
        wait_http(port, lab)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            # each notebook on a fresh page with its own console: (check, notebook, URL query, viewport height)
            parts = [
                (run, "10_widgets.ipynb", "", 2400),
                (run_selection, "selection.ipynb", "reset&", 1600),
                (run_stage1, "stage1.ipynb", "reset&", 2000),
            ]
            try:
                for check, name, query, height in parts:
                    page, console_errors = browser.new_page(viewport={"width": 1400, "height": height}), []
                    page.on("console", lambda m, errs=console_errors: m.type == "error" and errs.append(m.text))
                    page.on("pageerror", lambda e, errs=console_errors: errs.append(f"page error: {e}"))
                    api = f"http://127.0.0.1:{port}/api/contents/{name}?token={token}"
                    check(page, f"http://127.0.0.1:{port}/lab/tree/{name}?{query}token={token}", api, console_errors)
            except Exception:
                page.screenshot(path=str(OUT / "failure.png"), full_page=True)
                print(
                    f"failed in {name}; the page is in runs/browser/failure.png; console errors: "
                    f"{json.dumps(console_errors, indent=1)}"
                )
                try:
                    print("\n".join(saved_errors(page, api)))
                except Exception as e:
                    print(f"(could not read the notebook back: {e})")
                raise
            finally:
                browser.close()
    finally:
        lab.terminate()
        try:
            lab.wait(20)
        except subprocess.TimeoutExpired:
            lab.kill()
        shutil.rmtree(work, ignore_errors=True)
    print("browser test passed; screenshots in runs/browser/")


if __name__ == "__main__":
    main()

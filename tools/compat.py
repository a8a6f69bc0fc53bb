"""Run the Hugging Face integration tests against the oldest and the newest releases that pyproject.toml admits.

`python tools/compat.py oldest newest` makes one throwaway venv per label under .venv-compat/ (CPU torch from the
local disk, as `make setup` does), installs this package with its `[test]` extra and:
- oldest: the lower bound of each of transformers / accelerate / datasets in pyproject.toml, exactly;
- newest: the newest published release of each, *ignoring* pyproject's upper bound, so that a new upstream release
  that breaks the student fails here, loudly and with its version named, before a user meets it.
It runs TESTS there and writes runs/compat/<label>.json (versions, pytest's summary, pass/fail)."""

import argparse, json, re, subprocess, sys, tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKGS = ("transformers", "accelerate", "datasets")
TESTS = ["tests/test_hf.py", "tests/test_students.py", "tests/test_teachers.py"]
TORCH = "torch==2.13.0"  # the CPU build on local disk; any other request pulls a multi-GB CUDA build


def requirements() -> dict[str, str]:
    "pyproject's requirement string for each of PKGS."
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found = {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower(): d for d in deps}
    return {p: found[p] for p in PKGS}


def pins(label: str) -> list[str]:
    "What to ask pip for: the exact lower bounds ('oldest') or the newest releases ('newest')."
    reqs = requirements()
    if label == "newest":
        return [p for p in PKGS]
    lows = {p: re.search(r">=\s*([0-9][0-9a-z.]*)", r) for p, r in reqs.items()}
    missing = [p for p, m in lows.items() if m is None]
    if missing:
        sys.exit(f"compat: pyproject.toml gives no lower bound (>=) for {missing}; add one")
    return [f"{p}=={m.group(1)}" for p, m in lows.items()]


def run(cmd: list[str], **kw):
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def venv_python(label: str) -> Path:
    env = ROOT / ".venv-compat" / label
    py = env / "bin" / "python"
    if not py.exists():
        run([sys.executable, "-m", "venv", str(env)])
        run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    if subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode:
        run([str(py), "-m", "pip", "install", "-q", TORCH])
    return py


def versions(py: Path) -> dict[str, str]:
    code = "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in %r}))" % (
        (PKGS + ("torch",)),
    )
    return json.loads(subprocess.run([str(py), "-c", code], capture_output=True, text=True, check=True).stdout)


def check(label: str, extra_pytest: list[str]) -> dict:
    py = venv_python(label)
    # 'newest' ignores pyproject's upper bounds: an explicit requirement overrides the package's own
    run([str(py), "-m", "pip", "install", "-q", "--upgrade", "-e", f"{ROOT}[test]", *pins(label)])
    if label == "newest":
        run([str(py), "-m", "pip", "install", "-q", "--upgrade", *PKGS])
    got = versions(py)
    print(f"compat[{label}]: " + ", ".join(f"{k} {v}" for k, v in got.items()), flush=True)
    r = subprocess.run(
        [str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS, *extra_pytest],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"OMP_NUM_THREADS": "1", **dict(__import__("os").environ)},
    )
    sys.stdout.write(r.stdout[-4000:])
    sys.stderr.write(r.stderr[-2000:])
    summary = next((l for l in reversed(r.stdout.splitlines()) if " passed" in l or " failed" in l or "error" in l), "")
    res = dict(label=label, versions=got, passed=r.returncode == 0, summary=summary.strip("= "))
    out = ROOT / "runs" / "compat"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{label}.json").write_text(json.dumps(res, indent=1))
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("labels", nargs="*", default=["oldest", "newest"], choices=["oldest", "newest"])
    a, extra = ap.parse_known_args(argv)
    results = [check(l, extra) for l in a.labels]
    bad = [r for r in results if not r["passed"]]
    for r in results:
        print(
            f"compat[{r['label']}] {'PASSED' if r['passed'] else 'FAILED'} with "
            + ", ".join(f"{k}=={v}" for k, v in r["versions"].items())
            + f": {r['summary']}"
        )
    if bad:
        sys.exit(
            "compat: the Hugging Face integration tests fail with "
            + "; ".join(", ".join(f"{k}=={v}" for k, v in r["versions"].items() if k != "torch") for r in bad)
            + ". Fix the student for that release, or keep it out of pyproject.toml's range and say why."
        )


if __name__ == "__main__":
    main()

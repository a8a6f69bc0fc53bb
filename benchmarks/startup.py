"""How fast the command line answers: whole-process wall time of `ssm-distill --help`, of each command's `--help`, and of
refused inputs (a bad config, an earlier run's folder, a teacher given as --student), each beside `python -c "import torch"` measured in the same run, interleaved (median of 5).

    python benchmarks/startup.py            # 5 runs of each
    python benchmarks/startup.py --runs 9

Writes benchmarks/results/startup-cpu.json. The help texts import nothing heavy (`ssm_distill.demo` holds the defaults they
show); a config error needs torch (the config's stage and mixer registries), but neither transformers nor a model.
"""
from __future__ import annotations
import argparse, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

from common import machine, write_results

BAD_CONFIG = 'total_tokens: 100000\nstages:\n  - kind: kd\n    lr: fast\n'
GOOD_CONFIG = 'total_tokens: 100000\nstages:\n  - kind: kd\n'


def commands(folder:Path) -> dict[str, list[str]]:
    "The whole-process commands to time, by name (the refused inputs written into `folder`)."
    cli = shutil.which('ssm-distill') or str(Path(sys.executable).with_name('ssm-distill'))
    bad, good, run = folder/'bad.yaml', folder/'good.yaml', folder/'run'
    bad.write_text(BAD_CONFIG)
    good.write_text(GOOD_CONFIG)
    (run/'checkpoints'/'ckpt-00000001-s0').mkdir(parents=True)   # an earlier run's checkpoint
    (run/'checkpoints'/'ckpt-00000001-s0'/'state.json').write_text('{}')
    from ssm_distill.core import builtin_teacher_path
    return {'python -c "import torch"': [sys.executable, '-c', 'import torch'],
            'ssm-distill --help': [cli, '--help'],
            'ssm-distill distill --help': [cli, 'distill', '--help'],
            'ssm-distill eval --help': [cli, 'eval', '--help'],
            'ssm-distill distill (a bad config, refused)': [cli, 'distill', '--config', str(bad)],
            "ssm-distill distill (an earlier run's folder, refused)": [cli, 'distill', '--config', str(good), '--out', str(run)],
            'ssm-distill eval (a teacher folder as --student, refused)': [cli, 'eval', '--student', str(builtin_teacher_path())]}


def wall(cmd:list[str]) -> float:
    "Seconds from start to exit of one process."
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--runs', type=int, default=5, help='runs of each command (interleaved); the median is reported')
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        cmds = commands(Path(d))
        times = {k: [] for k in cmds}
        for _ in range(a.runs):   # interleaved, so that a busy moment hits every command alike
            for k, cmd in cmds.items(): times[k].append(wall(cmd))
    torch_s = statistics.median(times['python -c "import torch"'])
    rows = {k: dict(median_s=statistics.median(v), runs_s=v, ratio_to_import_torch=statistics.median(v) / torch_s)
            for k, v in times.items()}
    for k, r in rows.items(): print(f"{k:>45}  {r['median_s']:6.3f} s   x{r['ratio_to_import_torch']:.2f} of import torch")
    out = write_results('startup', 'cpu', dict(machine=machine(threads=1), runs=a.runs, rows=rows,
                                               method='whole-process wall time, interleaved, median of the runs'))
    print(f"wrote {out}")


if __name__ == '__main__': main()

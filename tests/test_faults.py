"""Fault injection: a run killed at chosen moments, damaged checkpoints, a full disk, refused inputs and a diverging stage.

Each fault must end in a run that finishes exactly as an uninterrupted one (same final weights bit for bit, same
`metrics.jsonl` records), or in one clear `SsmDistillError` line -- never a raw traceback, never a half-written file.
The tiny runs take about a second; the killed runs live in subprocesses (`kill -9` at a deterministic moment)."""
import hashlib, json, logging, os, shutil, signal, subprocess, sys, textwrap, time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ssm_distill import cli
from ssm_distill.callbacks import Callback
from ssm_distill.checkpoints import DiskFullError, checkpoints, latest_checkpoint, load_student_weights, read_checkpoint_state
from ssm_distill.core import SsmDistillError
from ssm_distill.train import DivergenceError, Distiller, save_tiny_teacher, tiny_run_config

ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1', 'HF_HUB_DISABLE_PROGRESS_BARS': '1'}
TIMING = ('wall_s', 'tokens_per_s', 'elapsed')   # fields that differ between two runs of the same steps
STOP_AT = 12   # the stopped base run: inside stage 3 (kd; steps 9..24), so its checkpoints carry optimizer.pt and scheduler.pt


# ---- shared runs
@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
    return save_tiny_teacher(tmp_path_factory.mktemp('teacher'))


def _cfg(teacher_dir, out, **kw):
    "The tiny 3-stage run (4 + 4 + 16 optimizer steps), a checkpoint every step, the two newest kept."
    return tiny_run_config(teacher_dir, out, **{'checkpoint_every': 1, 'keep_checkpoints': 2, **kw})


def _yaml(cfg, path) -> Path:
    "The run config as the YAML file the CLI reads (without `out`: --out gives it)."
    d = asdict(cfg); d.pop('out', None)
    Path(path).write_text(yaml.safe_dump(d, sort_keys=False))
    return Path(path)


@pytest.fixture(scope='module')
def reference(teacher_dir, tmp_path_factory):
    "One uninterrupted run: its final student weights and its metrics records."
    n = torch.get_num_threads(); torch.set_num_threads(1)   # as in the subprocesses (OMP_NUM_THREADS=1): the same kernels
    try:
        out = tmp_path_factory.mktemp('reference')/'run'
        rep = Distiller(_cfg(teacher_dir, out), progress=False).run()
    finally: torch.set_num_threads(n)
    assert rep['status'] == 'finished'
    return dict(out=out, weights=_weights(out), records=_records(out), report=rep)


@pytest.fixture(scope='module')
def stopped(teacher_dir, tmp_path_factory):
    "A run stopped after step STOP_AT: checkpoints ckpt-<STOP_AT - 1> and ckpt-<STOP_AT> (both mid-stage 3) and a saved student."
    out = tmp_path_factory.mktemp('stopped')/'run'
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try: res = Distiller(_cfg(teacher_dir, out), progress=False).run(max_steps=STOP_AT)
    finally: torch.set_num_threads(n)
    assert res['status'] == 'stopped'
    assert [p.name for p in checkpoints(out)] == [f'ckpt-{STOP_AT - 1:08d}-s2', f'ckpt-{STOP_AT:08d}-s2']
    return out


@pytest.fixture
def one_thread_here():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _weights(out) -> dict:
    return load_file(str(Path(out)/'student'/'model.safetensors'))


def _records(out) -> list[dict]:
    "The step / eval / stage_end records of `out`'s metrics.jsonl, without their timing fields (a cut line fails here)."
    recs = [json.loads(l) for l in (Path(out)/'metrics.jsonl').read_text().splitlines() if l.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING and k != 'eval'} for r in recs]


def _assert_same_run(out, ref):
    "The run in `out` finished with the reference's final weights bit for bit and exactly its records."
    w = _weights(out)
    assert sorted(w) == sorted(ref['weights'])
    assert [k for k in w if not torch.equal(w[k], ref['weights'][k])] == [], 'final weights differ from the uninterrupted run'
    got, want = _records(out), ref['records']
    assert [(r['event'], r['global_step']) for r in got] == [(r['event'], r['global_step']) for r in want]
    assert [r.get('loss') for r in got] == [r.get('loss') for r in want]
    assert json.loads((Path(out)/'report.json').read_text())['status'] == 'finished'
    assert not list((Path(out)/'checkpoints').glob('.tmp-*')), 'a half-written checkpoint was left behind'


def _one_line(err:str) -> str:
    "The single line an SsmDistillError leaves on stderr (no traceback)."
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and 'Traceback' not in err, err[-3000:]
    return lines[0]


def _tree(folder) -> dict:
    "Every file under `folder` with its SHA-256."
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).rglob('*')) if p.is_file()}


# ---- 1. kill -9 at chosen moments, then --resume in a fresh process
CHILD = textwrap.dedent("""
    # Run the CLI; with a fault given, SIGKILL this process at that moment (deterministically: the n-th matching call).
    import json, os, signal, sys
    from pathlib import Path
    fault = json.loads(sys.argv[1]); argv = sys.argv[2:]
    if fault:
        import ssm_distill.checkpoints as C
        from ssm_distill.callbacks import JSONLLogger
        from ssm_distill.train import Distiller
        owners = dict(checkpoints=C, os=os, JSONLLogger=JSONLLogger, Distiller=Distiller)
        owner, name = owners[fault['owner']], fault['name']
        orig, seen = getattr(owner, name), [0]
        def die(): os.kill(os.getpid(), signal.SIGKILL)
        def matches(args):
            if fault.get('event') is not None and args[2] != fault['event']: return False   # JSONLLogger._write(self, d, event, m)
            if fault.get('dest_prefix') and not Path(args[1]).name.startswith(fault['dest_prefix']): return False   # os.rename(src, dst)
            return True
        def patched(*args, **kw):
            if not matches(args): return orig(*args, **kw)
            seen[0] += 1
            if seen[0] != fault['nth']: return orig(*args, **kw)
            if fault['when'] == 'before': die()
            if fault['when'] == 'half_line':   # JSONLLogger._write: half of the record reaches the file
                d, event, m = args[1:4]
                line = json.dumps({'event': event, **m}, default=float) + '\\n'
                with open(args[0].file, 'a') as f: f.write(line[:len(line) // 2]); f.flush(); os.fsync(f.fileno())
                die()
            res = orig(*args, **kw); die()
        setattr(owner, name, patched)
    from ssm_distill.cli import main
    sys.exit(main(argv))
""")


def _child(tmp_path, fault:dict|None, *argv, timeout=600) -> subprocess.CompletedProcess:
    script = tmp_path/'child.py'
    if not script.exists(): script.write_text(CHILD)
    return subprocess.run([sys.executable, str(script), json.dumps(fault), *argv], capture_output=True, text=True, env=ENV,
                          timeout=timeout, cwd=tmp_path)


KILLS = {   # moment -> (patched owner, name, which call, before/after it, event or rename filter)
    'mid_step': dict(owner='Distiller', name='train_step', nth=10, when='after'),   # the optimizer stepped; no record, no checkpoint
    'writing_tmp_ckpt': dict(owner='checkpoints', name='write_manifest', nth=6, when='before'),   # .tmp-ckpt-* without its manifest
    'tmp_ckpt_written': dict(owner='checkpoints', name='_write_checkpoint', nth=13, when='after'),   # a complete .tmp-ckpt-*, not renamed
    'just_after_rename': dict(owner='os', name='rename', nth=8, when='after', dest_prefix='ckpt-'),   # stage 2's end: before the pruning
    'between_step_record_and_checkpoint': dict(owner='JSONLLogger', name='_write', nth=6, when='after', event='step'),
    'between_stage_end_record_and_checkpoint': dict(owner='JSONLLogger', name='_write', nth=1, when='after', event='stage_end'),
    'cut_record': dict(owner='JSONLLogger', name='_write', nth=7, when='half_line', event='step'),
    'before_final_save': dict(owner='Distiller', name='save_student', nth=1, when='before'),
    'after_final_save': dict(owner='Distiller', name='save_student', nth=1, when='after'),   # student written, report.json not
}
DEFAULT_KILLS = ('mid_step', 'writing_tmp_ckpt', 'just_after_rename', 'between_step_record_and_checkpoint', 'after_final_save')   # ~10 s each


@pytest.mark.parametrize('moment', [m if m in DEFAULT_KILLS else pytest.param(m, marks=pytest.mark.slow) for m in KILLS])
def test_kill_then_resume_equals_uninterrupted(moment, teacher_dir, reference, tmp_path):
    out, config = tmp_path/'run', _yaml(_cfg(teacher_dir, None), tmp_path/'run.yaml')
    args = ['distill', '--config', str(config), '--out', str(out), '--no-progress']
    t0 = time.time()
    r = _child(tmp_path, KILLS[moment], *args)
    assert r.returncode == -signal.SIGKILL, f"the fault did not fire (rc {r.returncode}): {r.stderr[-3000:]}"
    killed = time.time() - t0
    if moment in ('writing_tmp_ckpt', 'tmp_ckpt_written'): assert list((out/'checkpoints').glob('.tmp-ckpt-*')), 'the kill left no .tmp-ckpt-*'
    if moment == 'cut_record': assert not (out/'metrics.jsonl').read_text().endswith('\n')
    if moment.startswith('between_'):   # the record reached the log, its checkpoint did not
        last = json.loads((out/'metrics.jsonl').read_text().splitlines()[-1])
        assert last['event'] == KILLS[moment]['event'] and last['global_step'] > read_checkpoint_state(latest_checkpoint(out))[0].global_step
    t0 = time.time()
    r = _child(tmp_path, None, *args, '--resume')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'Traceback' not in r.stderr, r.stderr[-3000:]
    print(f"{moment}: killed after {killed:.1f} s, resumed in {time.time() - t0:.1f} s")
    _assert_same_run(out, reference)


# ---- 1b. a streamed split (load_dataset('parquet', ..., streaming=True)): killed after the stream started again

def _stream_cfg(teacher_dir, out, stream_file):
    "The tiny run on the stream: 4 + 4 + 80 steps of 4 blocks (more than the file holds: it starts again at step 71), a checkpoint every 25."
    from ssm_distill.config import load_config
    d = asdict(_cfg(teacher_dir, out, checkpoint_every=25, stages=[dict(kind='matrix_orientation', lr=1e-2, tokens=512),
                                              dict(kind='hidden_state_alignment', lr=1e-2, tokens=512), dict(kind='kd', lr=3e-3, tokens=10240)]))
    d['data'] = dict(source='hub', name='parquet', data_files=str(stream_file), streaming=True, seq_len=32, batch_size=4,
                     eval_fraction=0.1, eval_blocks=4, shuffle_buffer=64)
    return load_config(d)


def test_streamed_kill_then_resume_equals_uninterrupted(teacher_dir, stream_file, tmp_path, one_thread_here):
    "SIGKILL in the middle of step 78, then --resume in a new process from step 75's checkpoint (the stream's second epoch): the uninterrupted run, bit for bit."
    ref_out = tmp_path/'reference'
    t0 = time.time()
    assert Distiller(_stream_cfg(teacher_dir, ref_out, stream_file), progress=False).run()['status'] == 'finished'
    ref = dict(weights=_weights(ref_out), records=_records(ref_out))
    out, config = tmp_path/'run', _yaml(_stream_cfg(teacher_dir, None, stream_file), tmp_path/'run.yaml')
    args = ['distill', '--config', str(config), '--out', str(out), '--no-progress']
    t1 = time.time()
    r = _child(tmp_path, dict(owner='Distiller', name='train_step', nth=78, when='after'), *args)
    t2 = time.time()
    assert r.returncode == -signal.SIGKILL, f"the fault did not fire (rc {r.returncode}): {r.stderr[-3000:]}"
    state = read_checkpoint_state(latest_checkpoint(out))[0]
    assert state.global_step == 75 and state.stream['epoch'] == 1, state
    r = _child(tmp_path, None, *args, '--resume')
    assert r.returncode == 0 and 'Traceback' not in r.stderr, r.stderr[-3000:]
    print(f"reference {t1 - t0:.1f} s, killed after {t2 - t1:.1f} s, resumed in {time.time() - t2:.1f} s")
    _assert_same_run(out, ref)
    assert json.loads((out/'report.json').read_text())['data'] == json.loads((ref_out/'report.json').read_text())['data']


# ---- 2. the 12 corruptions of the newest checkpoint
def _cut(f:Path): f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])
def _garble(f:Path):
    b = bytearray(f.read_bytes()); mid = len(b) // 2
    for i in range(mid, min(mid + 64, len(b))): b[i] ^= 0xFF   # same size, 64 bytes flipped (invalid UTF-8 in a JSON file)
    f.write_bytes(bytes(b))

CORRUPTIONS = {   # name -> (file, what is done to it)
    'safetensors_cut': ('model.safetensors', _cut),
    'safetensors_emptied': ('model.safetensors', lambda f: f.write_bytes(b'')),
    'safetensors_deleted': ('model.safetensors', Path.unlink),
    'safetensors_garbled': ('model.safetensors', _garble),
    'state_cut': ('state.json', _cut),
    'state_empty_object': ('state.json', lambda f: f.write_text('{}')),
    'state_wrong_type': ('state.json', lambda f: f.write_text('[]')),
    'optimizer_cut': ('optimizer.pt', _cut),
    'scheduler_deleted': ('scheduler.pt', Path.unlink),
    'rng_cut': ('rng-0.pt', _cut),
    'manifest_deleted': ('manifest.json', Path.unlink),
    'manifest_garbled': ('manifest.json', _garble),
}


@pytest.mark.parametrize('corruption', list(CORRUPTIONS))
def test_damaged_newest_checkpoint(corruption, teacher_dir, stopped, reference, tmp_path, caplog, one_thread_here):
    "Resumed from the older checkpoint with one warning naming the broken file, to the uninterrupted run's weights; or one clear error."
    out = tmp_path/'run'; shutil.copytree(stopped, out)
    newest = latest_checkpoint(out); older = checkpoints(out)[-2]
    fname, damage = CORRUPTIONS[corruption]
    damage(newest/fname)
    caplog.set_level(logging.WARNING, logger='ssm_distill')
    try: rep = Distiller(_cfg(teacher_dir, out), progress=False).run(resume=True)
    except SsmDistillError as e:   # the other acceptable end: one clear line
        msg = str(e)
        print(f"{corruption}: refused: {msg}")
        assert '\n' not in msg and fname.split('.')[0] in msg, msg
        return
    assert rep['status'] == 'finished'
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith('ssm_distill')]
    print(f"{corruption}: {warned}")
    if corruption == 'manifest_deleted' and not warned:
        # a checkpoint without a manifest reads as one from before manifests: its (intact) files are used as they are
        pass
    else:
        assert len(warned) == 1, warned
        assert newest.name in warned[0] and older.name in warned[0], warned[0]
        assert (fname if fname != 'manifest.json' else 'manifest') in warned[0], warned[0]
        assert (out/'checkpoints'/f'damaged-{newest.name}').is_dir() and not newest.exists()
    _assert_same_run(out, reference)


# ---- 3. a full disk
@pytest.fixture
def small_disk(tmp_path):
    "A 4 MiB tmpfs at tmp_path/'disk' (skipped where mounting is not permitted); unmounted afterwards."
    d = tmp_path/'disk'; d.mkdir()
    try: r = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4096k', 'tmpfs', str(d)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e: pytest.skip(f"cannot mount a tmpfs here: {e}")
    if r.returncode != 0: pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try: yield d
    finally:
        if subprocess.run(['umount', str(d)], capture_output=True).returncode != 0: subprocess.run(['umount', '-l', str(d)], capture_output=True)


def _grow(disk, size='65536k'):
    r = subprocess.run(['mount', '-o', f'remount,size={size}', str(disk)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


class _FillDisk(Callback):
    "After the record of step `at`, fill the disk of `folder` but for `leave(need)` bytes (need: the next checkpoint's estimate)."
    order = 100
    def __init__(self, folder, at, leave): self.folder, self.at, self.leave = Path(folder), at, leave
    def on_step_end(self, d, m):
        if m['global_step'] != self.at: return
        from ssm_distill.checkpoints import checkpoint_bytes
        need = checkpoint_bytes(d.out, d.student, True)
        room = shutil.disk_usage(self.folder).free - self.leave(need)
        with open(self.folder/'filler', 'wb') as f:
            while room > 0: n = min(room, 1 << 20); f.write(b'\0' * n); room -= n


@pytest.mark.parametrize('where', ['free_space_check', 'while_writing'])
def test_disk_full_stops_cleanly_then_resumes(where, small_disk, teacher_dir, reference, tmp_path, monkeypatch, capsys, one_thread_here):
    """The run stops with DiskFullError (one line from the CLI, no traceback), no .tmp-ckpt-* is left; after freeing space --resume
    finishes with the uninterrupted run's weights. 'free_space_check': less room than the newest checkpoint; 'while_writing': room for
    the newest checkpoint (stage 2's end, no optimizer state) but not for the next one (mid-stage, with AdamW's moments)."""
    import ssm_distill.train as T
    out = small_disk/'run'
    at, leave = (10, lambda need: need // 2) if where == 'free_space_check' else (9, lambda need: need + 64 * 1024)
    fill = _FillDisk(small_disk, at, leave)
    base = T.default_callbacks
    monkeypatch.setattr(T, 'default_callbacks', lambda cfg, progress=True: base(cfg, progress) + [fill])
    config = _yaml(_cfg(teacher_dir, None, keep_checkpoints=1), tmp_path/'run.yaml')
    args = ['distill', '--config', str(config), '--out', str(out), '--no-progress']
    capsys.readouterr()
    assert cli.main(args) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith('ssm-distill distill: error: no room on the disk') and '--resume' in line and 'checkpoints' in line, line
    if where == 'free_space_check': assert 'needed' in line, line
    assert not list((out/'checkpoints').glob('.tmp-*')), 'a partial checkpoint stayed on the full disk'
    ck = latest_checkpoint(out)
    assert read_checkpoint_state(ck)[0].global_step == at - 1
    # free the space (the filler goes, and the disk grows: the CLI's report.html alone takes a few MiB), then continue
    (small_disk/'filler').unlink()
    _grow(small_disk)
    monkeypatch.setattr(T, 'default_callbacks', base)
    assert cli.main(args + ['--resume']) == 0, capsys.readouterr().err[-3000:]
    _assert_same_run(out, reference)


def test_disk_full_while_the_cli_writes_its_report(small_disk, teacher_dir, tmp_path, monkeypatch, capsys, one_thread_here):
    "The disk fills once the run has finished, as the CLI writes report.html: still one line and exit 2, not a traceback."
    import ssm_distill.train as T
    class FillAtEnd(Callback):
        def on_run_end(self, d, report):
            with open(small_disk/'filler', 'wb') as f:
                try:
                    while True: f.write(b'\0' * (1 << 16)); f.flush()
                except OSError: pass
    base = T.default_callbacks
    monkeypatch.setattr(T, 'default_callbacks', lambda cfg, progress=True: base(cfg, progress) + [FillAtEnd()])
    _grow(small_disk, '2048k')
    config = _yaml(tiny_run_config(teacher_dir, None, stages=[dict(kind='kd', lr=3e-3, tokens=512)]), tmp_path/'run.yaml')
    capsys.readouterr()
    rc = cli.main(['distill', '--config', str(config), '--out', str(small_disk/'run'), '--no-progress'])
    err = capsys.readouterr().err
    assert rc == 2, err[-3000:]
    line = _one_line(err)
    assert 'no room on the disk' in line and '--resume' in line, line


def test_disk_full_error_is_raised_by_the_api(small_disk, teacher_dir):
    "The same stop through the Python API: a DiskFullError (an SsmDistillError) with one line."
    out = small_disk/'run'
    with pytest.raises(DiskFullError) as e:
        Distiller(_cfg(teacher_dir, out, keep_checkpoints=1), [_FillDisk(small_disk, 5, lambda need: need // 4)], progress=False).run()
    assert '\n' not in str(e.value) and '--resume' in str(e.value)
    assert not list((out/'checkpoints').glob('.tmp-*'))


# ---- 4. refusals, one line each
def _timed_cli(capsys, *args) -> tuple[int, str, float]:
    capsys.readouterr()
    t0 = time.time(); rc = cli.main(list(args)); dt = time.time() - t0
    return rc, capsys.readouterr().err, dt


def test_rerun_without_resume_is_refused(teacher_dir, stopped, tmp_path):
    "A folder with checkpoints, neither --resume nor --overwrite: exit 2, one line naming both, every file untouched (a real process)."
    out = tmp_path/'run'; shutil.copytree(stopped, out)
    before = _tree(out)
    config = _yaml(_cfg(teacher_dir, None), tmp_path/'run.yaml')
    t0 = time.time()
    r = subprocess.run([sys.executable, '-m', 'ssm_distill.cli', 'distill', '--config', str(config), '--out', str(out), '--no-progress'],
                       capture_output=True, text=True, env=ENV, timeout=300)
    print(f"refusal of a rerun without --resume (a fresh process, imports included): {time.time() - t0:.2f} s")
    assert r.returncode == 2, r.stderr[-3000:]
    line = _one_line(r.stderr)
    print(line)
    assert '--resume' in line and '--overwrite' in line and str(out) in line, line
    assert _tree(out) == before


def test_overwrite_starts_afresh(teacher_dir, stopped, tmp_path, capsys):
    "--overwrite deletes the earlier checkpoints and runs from step 1 (here a shorter, other config: nothing of the old run remains)."
    out = tmp_path/'run'; shutil.copytree(stopped, out)
    old = {p.name for p in checkpoints(out)}
    config = _yaml(tiny_run_config(teacher_dir, None, stages=[dict(kind='kd', lr=3e-3, tokens=512)]), tmp_path/'short.yaml')
    rc, err, dt = _timed_cli(capsys, 'distill', '--config', str(config), '--out', str(out), '--no-progress', '--overwrite')
    assert rc == 0, err[-3000:]
    assert not old & {p.name for p in checkpoints(out)}
    recs = _records(out)
    assert [r['global_step'] for r in recs if r['event'] == 'step'] == [1, 2, 3, 4]
    assert json.loads((out/'report.json').read_text())['status'] == 'finished'


def _text_docs(n=24) -> list[str]:
    from ssm_distill.data import load_builtin_corpus
    docs = load_builtin_corpus()[:n]
    return [f"Café, naïve façade, déjà vu -- Größe {i}.\n" + d for i, d in enumerate(docs)]


@pytest.mark.parametrize('encoding', ['latin-1', 'utf-16'])
def test_data_file_encoding(encoding, teacher_dir, tmp_path, capsys):
    "Text files in another encoding: refused in one line naming data.encoding without it, read with it."
    folder = tmp_path/'texts'; folder.mkdir()
    for i, d in enumerate(_text_docs()): (folder/f'doc{i:02d}.txt').write_bytes(d.encode(encoding, errors='replace'))
    cfg = asdict(tiny_run_config(teacher_dir, None, stages=[dict(kind='kd', lr=3e-3, tokens=512)]))
    cfg.pop('out')
    cfg['data'].update(source='files', path=str(folder))
    (tmp_path/'bad.yaml').write_text(yaml.safe_dump(cfg))
    rc, err, dt = _timed_cli(capsys, 'distill', '--config', str(tmp_path/'bad.yaml'), '--out', str(tmp_path/'bad'), '--no-progress')
    assert rc == 2, err[-3000:]
    line = _one_line(err)
    with capsys.disabled(): print(f"\nrefusal of a {encoding} file read as UTF-8: {dt:.2f} s\n{line}")
    assert 'not utf-8 text' in line and 'data.encoding' in line, line
    cfg['data']['encoding'] = encoding
    (tmp_path/'good.yaml').write_text(yaml.safe_dump(cfg))
    rc, err, dt = _timed_cli(capsys, 'distill', '--config', str(tmp_path/'good.yaml'), '--out', str(tmp_path/'good'), '--no-progress')
    assert rc == 0, err[-3000:]
    assert json.loads((tmp_path/'good'/'report.json').read_text())['status'] == 'finished'


def test_seq_len_beyond_the_teachers_positions(tmp_path, capsys):
    "The built-in teacher reads 256 positions: data.seq_len 300 is refused in one line, before any model loads."
    cfg = dict(teacher='builtin', device='cpu', mixed_precision='no', stages=[dict(kind='kd', tokens=2400)],
               data=dict(source='builtin', seq_len=300, batch_size=4, max_tokens=30000, eval_blocks=4))
    (tmp_path/'run.yaml').write_text(yaml.safe_dump(cfg))
    rc, err, dt = _timed_cli(capsys, 'distill', '--config', str(tmp_path/'run.yaml'), '--out', str(tmp_path/'run'), '--no-progress')
    print(f"refusal of data.seq_len=300 (teacher: 256 positions): {dt:.2f} s")
    assert rc == 2, err[-3000:]
    line = _one_line(err)
    print(line)
    assert 'data.seq_len=300' in line and '256' in line, line
    assert not (tmp_path/'run'/'metrics.jsonl').exists()


@pytest.mark.parametrize('case', ['student_is_a_teacher', 'unknown_task', 'limit_zero'])
def test_eval_refusals(case, teacher_dir, stopped, tmp_path, capsys):
    "eval refuses a teacher given as --student, an unknown task and --limit 0: exit 2, one line, before any model loads."
    student = str(stopped/'student')
    args, want = {'student_is_a_teacher': (['--student', str(teacher_dir)], 'not a saved student'),
                  'unknown_task': (['--student', student, '--tasks', 'ssm_nope'], 'ssm_nope'),
                  'limit_zero': (['--student', student, '--limit', '0'], 'limit=0')}[case]
    rc, err, dt = _timed_cli(capsys, 'eval', *args, '--out', str(tmp_path/'eval'))
    print(f"eval refusal ({case}): {dt:.2f} s")
    assert rc == 2, err[-3000:]
    line = _one_line(err)
    print(line)
    assert line.startswith('ssm-distill eval: error:') and want in line, line
    assert not (tmp_path/'eval'/'eval.json').exists()


# ---- 5. divergence
DIVERGE_LR, DIVERGE_STEPS = 10.0, 40   # KD at lr 10 collapses the built-in teacher's student within a few steps (stopped at step ~21)


def test_divergence_stops_and_keeps_a_good_checkpoint(tmp_path, one_thread_here):
    """KD at a huge learning rate ends in DivergenceError (never `status: finished`); the checkpoint left is finite and from before the
    collapse: its student's held-out perplexity is well below the vocabulary size (uniform guessing; here: below V/2, the bar the
    engine itself sets for the teacher)."""
    out = tmp_path/'run'
    cfg = dict(teacher='builtin', out=str(out), device='cpu', mixed_precision='no', checkpoint_every=1, keep_checkpoints=2,
               data=dict(source='builtin', seq_len=32, batch_size=4, max_tokens=30000, eval_blocks=4),
               stages=[dict(kind='kd', lr=DIVERGE_LR, tokens=128 * DIVERGE_STEPS)])
    d = Distiller(cfg, progress=False)
    t0 = time.time()
    with pytest.raises(DivergenceError) as e: d.run()
    msg = str(e.value)
    print(f"diverged after {d.state.global_step} steps, {time.time() - t0:.1f} s: {msg}")
    assert '\n' not in msg and 'the run stopped. The last good checkpoint is' in msg, msg
    assert d.state.global_step < DIVERGE_STEPS
    assert not (out/'report.json').exists() or json.loads((out/'report.json').read_text())['status'] != 'finished'
    ck = latest_checkpoint(out)
    if ck is None:
        assert 'none (no checkpoint was written yet)' in msg, msg
        return
    assert str(ck) in msg, msg
    w = load_file(str(ck/'model.safetensors'))
    assert all(torch.isfinite(v).all() for v in w.values()), 'the checkpoint left holds non-finite weights'
    V = d.teacher.config.vocab_size
    load_student_weights(d.accelerator.unwrap_model(d.student), ck)
    ev = d.evaluate()
    print(f"the checkpoint left ({ck.name}): held-out perplexity {ev['perplexity']:.4g}, teacher {ev['teacher_perplexity']:.4g}, vocabulary {V}")
    losses = [round(r['loss'], 3) for r in _records(out) if r['event'] == 'step']
    print(f"step losses: {losses}")
    assert ev['perplexity'] < V / 2, (f"the 'last good checkpoint' {ck.name} holds a collapsed student: held-out perplexity "
                                      f"{ev['perplexity']:.6g}, about the vocabulary size {V} (uniform guessing); the step losses: {losses}")

"""train/ppo_lstm.py end to end, as a user runs it: a subprocess with tiny settings.

The environment variables set by tests/conftest.py (offline, bundled MNIST, private cache) are
inherited by the subprocesses.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import matchenv
from matchenv.agents.script_args import resumed_args

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train" / "ppo_lstm.py"
ENV_ID = "TemplateSearch-TranslatedMNIST-v0"
TINY = [
    "--env-id", ENV_ID, "--imitation-steps", "768", "--imitation-envs", "16", "--ppo-timesteps", "256",
    "--n-envs", "4", "--n-steps", "12", "--batch-size", "24", "--eval-pairs", "20", "--eval-every", "512",
    "--checkpoint-every", "256", "--render-pairs", "2", "--threads", "1",
]


def train(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def check_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    check_ok(train(*TINY, "--out-dir", str(out)))
    return out


def test_tiny_run_writes_every_output(tiny_run):
    for name in ("last.zip", "best.zip", "state.json", "summary.json", "search_paths.png", "args.json"):
        assert (tiny_run / name).is_file(), name
    assert list((tiny_run / "tb").glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert json.loads((tiny_run / "args.json").read_text())["env_id"] == ENV_ID


def test_tiny_run_summary(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert 0.0 <= summary["final"]["success_rate"] <= 1.0
    assert set(summary["minutes"]) == {"imitation", "ppo"}
    assert summary["evaluations"] and all(0.0 <= e["success_rate"] <= 1.0 for e in summary["evaluations"])
    assert summary["imitation_steps"] >= 768 and summary["ppo_steps"] >= 256
    assert summary["unreadable_training_pairs"]["skipped"] == 0 and summary["unreadable_training_pairs"]["drawn"] > 0
    state = json.loads((tiny_run / "state.json").read_text())
    assert state["imitation_steps_done"] == summary["imitation_steps"]


def test_resume_continues_ppo_without_redoing_imitation(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # leave the shared run untouched
    before = json.loads((run / "state.json").read_text())
    log_before = (run / "tb" / "progress.csv").read_text().splitlines()
    proc = train(*TINY, "--out-dir", str(run), "--resume", str(run / "last.zip"), "--ppo-timesteps", "512")
    check_ok(proc)
    assert "resumed from" in proc.stdout and "state.json" in proc.stdout
    log_after = (run / "tb" / "progress.csv").read_text().splitlines()
    assert len(log_after) > len(log_before) and log_after[1 : len(log_before)] == log_before[1:]  # appended
    summary = json.loads((run / "summary.json").read_text())
    state = json.loads((run / "state.json").read_text())
    assert summary["ppo_steps"] >= 512
    assert state["imitation_steps_done"] == before["imitation_steps_done"] == summary["imitation_steps"]
    assert state["minutes_imitation"] == before["minutes_imitation"]  # no imitation time was added
    assert "imitation:" not in proc.stderr  # the progress bar never entered the imitation stage
    assert state["minutes_ppo"] > before["minutes_ppo"]


def test_bad_command_lines_exit_with_a_message(tmp_path):
    # Both start together: most of each run is importing torch.
    nothing = subprocess.Popen([sys.executable, str(SCRIPT), "--no-imitation", "--no-ppo", "--out-dir", str(tmp_path / "a")],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    unknown = subprocess.Popen([sys.executable, str(SCRIPT), "--env-id", "NoSuchEnv-v0", "--out-dir", str(tmp_path / "b")],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, nothing_err = nothing.communicate(timeout=60)
    _, unknown_err = unknown.communicate(timeout=60)
    assert nothing.returncode != 0 and "nothing to train" in nothing_err
    assert unknown.returncode != 0 and "NoSuchEnv-v0" in unknown_err
    assert all(env_id in unknown_err for env_id in matchenv.ENV_IDS)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _sigint_as_in_a_terminal() -> None:
    # A shell starts background jobs (`pytest ... &`) with SIGINT ignored, and Python then never
    # raises KeyboardInterrupt; the child gets the default, as when a user runs the script.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "--imitation-steps", "1000000", "--checkpoint-every", "96", "--eval-every", "1000000", "--out-dir", str(out)]
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_as_in_a_terminal)
    try:
        deadline = time.time() + 60
        while not (out / "last.zip").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert (out / "last.zip").exists(), "no checkpoint within 60 s"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    assert "interrupted" in stdout and f"--resume {out / 'last.zip'}" in stdout
    assert (out / "last.zip").is_file() and not list(out.glob(".*.tmp.zip"))
    state = json.loads((out / "state.json").read_text())
    assert 0 < state["imitation_steps_done"] < 1_000_000
    assert not (out / "summary.json").exists()  # an interrupted run does not pretend to have finished


def test_ctrl_c_during_a_checkpoint_write_is_held_until_the_write_is_done():
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location("ppo_lstm_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    sys.modules["ppo_lstm_script"] = script  # dataclasses look their module up there
    spec.loader.exec_module(script)
    finished = []
    # Python's own handler, whatever this process inherited (SIGINT is ignored under `pytest &`)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with script._sigint_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the signal is delivered here; the block must still run to its end
                finished.append(True)
        assert finished == [True]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_photograph_dataset_by_name_with_an_overview(tmp_path):
    """--dataset/--dataset-kwargs/--overview-size: a colour, scale-aware run whose model the searcher replays."""
    fixture = ROOT / "tests" / "fixtures" / "manifest" / "pairs.csv"
    tiny = [a for a in TINY[2:]]  # no --env-id
    proc = train("--dataset", "ManifestPairs", "--dataset-kwargs", json.dumps({"path": str(fixture)}),
                 "--overview-size", "32", *tiny, "--out-dir", str(tmp_path))
    check_ok(proc)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dataset"] == "ManifestPairs" and summary["test_pairs"] >= 1

    from matchenv.agents.searcher import TemplateSearcher

    searcher = TemplateSearcher.load(tmp_path / "last.zip")
    assert searcher.channels == 3 and searcher.letterbox and searcher.overview_size == (32, 32)
    assert searcher.scale_range is not None and searcher.window_fraction is not None


def test_bad_dataset_arguments_are_clear_errors(tmp_path):
    proc = train("--dataset", "NoSuchData", "--out-dir", str(tmp_path))
    assert proc.returncode == 2 and "valid names" in proc.stderr
    proc = train("--dataset", "ManifestPairs", "--dataset-kwargs", "[1, 2]", "--out-dir", str(tmp_path))
    assert proc.returncode == 2 and "JSON object" in proc.stderr


def test_ktm_is_refused_for_training_and_taken_for_evaluation(tmp_path):
    ktm = ROOT / "tests" / "fixtures" / "ktm_pairs"
    for flags in (["--dataset", "KTM"], ["--env-id", "TemplateSearch-KTM-v0"]):
        proc = train(*flags, "--out-dir", str(tmp_path))
        assert proc.returncode == 2 and "evaluation and model selection only" in proc.stderr
    manifest = ROOT / "tests" / "fixtures" / "manifest" / "pairs.csv"
    proc = train("--dataset", "ManifestPairs", "--dataset-kwargs", json.dumps({"path": str(manifest)}),
                 "--eval-dataset", "KTM", "--eval-dataset-kwargs", json.dumps({"path": str(ktm)}),
                 *TINY[2:], "--out-dir", str(tmp_path / "run"))
    check_ok(proc)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_pairs"] == 4  # KTM's fixture, not the manifest's test pairs


@pytest.mark.filterwarnings("ignore::tqdm.TqdmExperimentalWarning")  # SB3's rich bar is tqdm.rich
def test_learn_shows_a_progress_bar():
    """SB3's progress bar needs tqdm and rich: both are install requirements."""
    import gymnasium as gym
    from stable_baselines3.common.vec_env import DummyVecEnv

    from matchenv.agents import SearchRecurrentPPO

    venv = DummyVecEnv([lambda: gym.make("TemplateSearch-TranslatedMNIST-v0")])
    model = SearchRecurrentPPO("SearchLstmPolicy", venv, n_steps=16, batch_size=16, n_epochs=1, device="cpu", seed=0,
                               policy_kwargs=dict(lstm_hidden_size=16))
    model.learn(total_timesteps=16, progress_bar=True)
    assert model.num_timesteps == 16


def test_an_earlier_run_is_never_replaced_by_accident(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = {name: (run / name).read_bytes() for name in ("best.zip", "last.zip", "state.json", "summary.json", "args.json")}
    proc = train(*TINY, "--out-dir", str(run))
    assert proc.returncode != 0 and "holds an earlier run" in proc.stderr and "--resume" in proc.stderr
    assert {name: (run / name).read_bytes() for name in before} == before  # nothing touched
    # the default folder gets a suffix instead (run in a scratch cwd: the default is relative)
    work = tmp_path / "work"
    (work / "runs").mkdir(parents=True)
    shutil.copytree(tiny_run, work / "runs" / f"{ENV_ID}-seed0")
    proc = subprocess.run([sys.executable, str(SCRIPT), *TINY, "--no-ppo", "--imitation-steps", "96"], cwd=work,
                          capture_output=True, text=True, timeout=90)
    check_ok(proc)
    assert f"writing this one to runs/{ENV_ID}-seed0-2" in proc.stdout
    assert (work / "runs" / f"{ENV_ID}-seed0-2" / "summary.json").is_file()
    assert (work / "runs" / f"{ENV_ID}-seed0" / "best.zip").read_bytes() == before["best.zip"]


def test_a_live_runs_folder_is_locked_and_a_dead_runs_lock_is_not(tmp_path):
    from matchenv.agents.run_dir import LOCK_NAME, RunDir, RunDirError

    first = RunDir.claim(tmp_path / "run", default="unused")
    with pytest.raises(RunDirError, match=f"process {os.getpid()}"):
        RunDir.claim(tmp_path / "run", default="unused", overwrite=True)
    first.release()
    (tmp_path / "run" / LOCK_NAME).write_text("process 999999999 on elsewhere")  # a run that died: no OS lock
    second = RunDir.claim(tmp_path / "run", default="unused")
    with pytest.raises(RunDirError):  # while it holds the folder
        RunDir.claim(tmp_path / "run", default="unused")
    second.release()
    RunDir.claim(tmp_path / "run", default="unused").release()


def test_resume_into_another_runs_folder_is_refused_and_overwrite_clears_it(tiny_run, tmp_path):
    from matchenv.agents.run_dir import RunDir, RunDirError

    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    with pytest.raises(RunDirError, match="holds an earlier run"):
        RunDir.claim(other, default="unused", resume=tiny_run / "last.zip")
    run = RunDir.claim(other, default="unused", overwrite=True)
    run.release()
    assert not (other / "best.zip").exists() and not (other / "tb").exists() and run.notes


def test_sigterm_saves_a_checkpoint_like_ctrl_c(tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "--imitation-steps", "1000000", "--checkpoint-every", "1000000", "--eval-every", "1000000",
            "--out-dir", str(out)]
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "args.json").exists():  # training has started
        time.sleep(0.5)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert "interrupted: saved" in stdout, stderr[-2000:]
    assert (out / "last.zip").is_file() and json.loads((out / "state.json").read_text())["imitation_steps_done"] > 0
    assert proc.returncode == 143  # a scheduler sees the job was terminated


def _script_module():
    spec = importlib.util.spec_from_file_location("ppo_lstm_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ppo_lstm_script"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_resume_refuses_flags_that_change_the_task_or_network(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    proc = train(*TINY, "--out-dir", str(run), "--resume", str(run / "last.zip"), "--cnn-channels", "4,4,4,4,4",
                 "--max-trials", "3")
    assert proc.returncode == 2 and "--cnn-channels '4,4,4,4,4'" in proc.stderr and "--max-trials 3" in proc.stderr
    assert json.loads((run / "args.json").read_text()) == json.loads((tiny_run / "args.json").read_text())  # untouched


def test_resume_takes_the_runs_own_task_flags_and_continues_the_counters(tmp_path):
    module = _script_module()
    run = tmp_path / "run"
    run.mkdir()
    saved = module.Args(max_trials=4, cnn_channels="4,8,8,8,8", out_dir=str(run), dataset_kwargs='{"root": "x"}',
                        learning_rate=3e-4)
    (run / "args.json").write_text(json.dumps(dataclasses.asdict(saved)))
    parser = argparse.ArgumentParser()
    args = resumed_args(module.Args(resume=str(run / "last.zip"), learning_rate=1e-5), {"learning_rate"}, parser,
                        run / "args.json", module.FIXED_ON_RESUME)
    assert args.max_trials == 4 and args.cnn_channels == "4,8,8,8,8" and args.dataset_kwargs == '{"root": "x"}'
    assert args.learning_rate == 1e-5  # given again: the new value


def test_an_imitation_resume_does_not_burst_evaluations(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = json.loads((run / "state.json").read_text())
    proc = train(*TINY, "--out-dir", str(run), "--resume", str(run / "last.zip"), "--imitation-steps",
                 str(before["imitation_steps_done"] + 600), "--eval-every", "100000", "--checkpoint-every", "100000",
                 "--no-ppo")
    check_ok(proc)
    state = json.loads((run / "state.json").read_text())
    new = state["evaluations"][len(before["evaluations"]):]
    assert len(new) <= 2, new  # the one at the end of imitation (and the final one), not one per iteration


def test_ppo_collects_from_subprocesses_as_from_the_batched_env(tmp_path):
    """--vec-env subproc (SB3's SubprocVecEnv, one process per env) trains, with the same episodes:
    PPO alone from the same seed reaches the same test result as with the batched env."""
    results = {}
    for kind in ("batched", "subproc"):
        out = tmp_path / kind
        check_ok(train(*TINY, "--no-imitation", "--vec-env", kind, "--render-pairs", "0", "--out-dir", str(out)))
        summary = json.loads((out / "summary.json").read_text())
        assert summary["args"]["vec_env"] == kind and summary["ppo_steps"] >= 256
        results[kind] = summary["final"]
    assert results["subproc"] == results["batched"]


def test_render_pairs_zero_finishes(tmp_path):
    proc = train(*TINY, "--no-ppo", "--imitation-steps", "96", "--render-pairs", "0", "--out-dir", str(tmp_path / "run"))
    check_ok(proc)
    assert "search paths: none" in proc.stdout and not (tmp_path / "run" / "search_paths.png").exists()


def test_a_full_disk_stops_with_the_last_checkpoint_intact(tmp_path):
    module = _script_module()
    (tmp_path / "last.zip").write_bytes(b"the previous checkpoint")

    class FullDisk:
        def save(self, path):
            Path(path).write_bytes(b"half")
            raise OSError(28, "No space left on device")

    with pytest.raises(module.CheckpointWriteError, match="No space left.*intact.*--resume"):
        module.Checkpointer(tmp_path).save(FullDisk(), module.RunState())
    assert (tmp_path / "last.zip").read_bytes() == b"the previous checkpoint"
    assert not list(tmp_path.glob(".*.tmp.zip"))

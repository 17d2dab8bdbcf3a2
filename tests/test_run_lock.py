"""One run per output directory: the lock refuses a second process and dies with the first."""

import os
import signal
import subprocess
import sys

import pytest

from sam_prompt_learner import run_lock
from sam_prompt_learner.run_lock import LOCK_NAME, DirectoryInUseError, clear_output_dir, lock_directory

# The module is loaded from its file: importing the package would load torch and transformers for a lock.
TRY_LOCK = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("run_lock", sys.argv[1])
run_lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_lock)
try:
    run_lock.lock_directory(sys.argv[2])
except run_lock.DirectoryInUseError as error:
    print(error)
    sys.exit(3)
print("locked", flush=True)
if len(sys.argv) > 3:
    sys.stdin.read()  # hold the lock until killed
"""


def try_lock(directory):
    return subprocess.run(
        [sys.executable, "-c", TRY_LOCK, run_lock.__file__, str(directory)], capture_output=True, text=True, timeout=600
    )


def test_a_second_process_is_refused_until_the_first_releases_the_lock(tmp_path):
    handle = lock_directory(tmp_path / "out")
    assert lock_directory(tmp_path / "out") is handle  # the same process may ask again
    refused = try_lock(tmp_path / "out")
    assert refused.returncode == 3
    assert f"is in use by another process (pid {os.getpid()} on" in refused.stdout
    handle.close()
    assert try_lock(tmp_path / "out").returncode == 0


def test_a_killed_run_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", TRY_LOCK, run_lock.__file__, str(tmp_path / "out"), "hold"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(DirectoryInUseError, match=f"pid {holder.pid} on"):
        lock_directory(tmp_path / "out")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    lock_directory(tmp_path / "out").close()


def test_clearing_keeps_only_the_lock(tmp_path):
    handle = lock_directory(tmp_path)
    (tmp_path / "checkpoints" / "step_1").mkdir(parents=True)
    (tmp_path / "metrics.json").write_text("{}")
    clear_output_dir(tmp_path)
    assert [entry.name for entry in tmp_path.iterdir()] == [LOCK_NAME]
    handle.close()

"""Notebook execution retries a kernel that never started (the port race of parallel kernels) and
nothing else."""

from __future__ import annotations

import papermill
import pytest

from cxr_helpers.run.papermill_exec import START_TRIES, execute_notebook, is_kernel_start_failure

DIED = RuntimeError("Kernel died before replying to kernel_info")


class _FakePapermill:
    """Stands in for ``papermill.execute_notebook``: raises the queued errors in turn, then succeeds."""

    def __init__(self, errors):
        self.errors, self.calls = list(errors), []

    def __call__(self, src, dst, **kwargs):
        self.calls.append((src, dst, kwargs))
        if self.errors:
            raise self.errors.pop(0)


def _run(monkeypatch, tmp_path, errors):
    fake, lines = _FakePapermill(errors), []
    monkeypatch.setattr(papermill, "execute_notebook", fake)
    execute_notebook(tmp_path / "02_train.ipynb", tmp_path / "out.ipynb", {"a": 1}, "k", tmp_path,
                     log=lines.append, pause_s=0.0)
    return fake, lines


def test_a_kernel_that_died_starting_is_started_again(monkeypatch, tmp_path):
    fake, lines = _run(monkeypatch, tmp_path, [DIED, TimeoutError("Kernel didn't respond in 60 seconds")])
    assert len(fake.calls) == 3
    assert all(c[2]["parameters"] == {"a": 1} and c[2]["kernel_name"] == "k" for c in fake.calls)
    assert fake.calls[0][2]["request_save_on_cell_execute"] is True
    assert len(lines) == 2 and "02_train: the notebook kernel did not start" in lines[0]
    assert "try 2 of 3" in lines[0] and "try 3 of 3" in lines[1]


def test_it_gives_up_after_the_last_try(monkeypatch, tmp_path):
    with pytest.raises(RuntimeError, match="kernel_info"):
        _run(monkeypatch, tmp_path, [DIED] * START_TRIES)


def test_a_cell_error_is_never_run_again(monkeypatch, tmp_path):
    err = papermill.PapermillExecutionError(0, 1, "x = 1", "ValueError", "bad config", [])
    fake = _FakePapermill([err])
    monkeypatch.setattr(papermill, "execute_notebook", fake)
    with pytest.raises(papermill.PapermillExecutionError):
        execute_notebook(tmp_path / "a.ipynb", tmp_path / "b.ipynb", {}, "k", tmp_path, pause_s=0.0)
    assert len(fake.calls) == 1


def test_only_kernel_start_messages_count():
    assert is_kernel_start_failure(DIED)
    assert not is_kernel_start_failure(RuntimeError("CUDA out of memory"))
    assert not is_kernel_start_failure(ValueError("Kernel died before replying to kernel_info"))

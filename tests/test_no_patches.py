"""No silent patches: what the studio sets in a library must exist there, and making its objects
changes nothing of the process or the store by itself."""

import signal

from pipelines.runlog import RunLog
from studio.runner import Runner


def test_the_private_trl_setting_dpo_shrinks_still_exists():
    import trl.trainer.utils

    from pipelines.dpo import CHUNK_SETTING

    assert isinstance(getattr(trl.trainer.utils, CHUNK_SETTING), int)


def test_a_run_log_leaves_sigterm_alone_until_run_main_asks(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    log = RunLog(tmp_path)
    assert signal.getsignal(signal.SIGTERM) is before
    try:
        log.cancel_on_sigterm()
        signal.raise_signal(signal.SIGTERM)
        assert log.cancel_requested
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_runner_writes_nothing_until_recovery_is_asked_for(store, workspace):
    with store.transaction() as cur:  # a run left 'running' by a process that is gone
        cur.execute("INSERT INTO runs (kind, config, status, pid, folder) VALUES ('rm', '{}', 'running', 999999, ?)",
                    [str(workspace.runs_dir / "1")])
    runner = Runner(store, workspace)
    assert store.scalar("SELECT status FROM runs") == "running"
    runner.recover()
    assert store.scalar("SELECT status FROM runs") == "failed"


def test_batch_tokenising_leaves_the_tokenizers_padding_side_as_it_was(tiny_model):
    from pipelines.evaluate import answer
    from pipelines.models import choose_placement, load_causal_lm

    tokenizer, model = load_causal_lm(str(tiny_model), tiny_model.parent, choose_placement("cpu"))
    side = tokenizer.padding_side
    answer(model, tokenizer, [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Hello there"}]],
           "cpu", max_new_tokens=2, temperature=1.0, batch_size=2)
    assert tokenizer.padding_side == side

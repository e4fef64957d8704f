"""How tasks end, as Flower shows them: the failure message of a drain, what is declared
an expected failure, which tasks stay out of the task list, and the queues Flower lists.
(tests/e2e/test_flower_browser.py checks the same in Flower's pages.)"""

from __future__ import annotations

from tasks.app import MAINTENANCE_QUEUE, QUEUE, app
from tasks.embeddings import ItemsFailed, MessageRefused, drain, embed_article, embed_articles
from worker.pipeline import DrainResult

MODEL = "text-embedding-3-small"


def test_the_message_says_how_many_items_failed_and_why() -> None:
    result = DrainResult(claimed=5, embedded=3, failed=2, reasons={"not_found": 2})

    assert str(ItemsFailed.of(MODEL, result)) == (
        f"2 items failed: not_found=2 (model {MODEL}; 3 embedded, 0 unchanged; "
        "details: embedder status)"
    )


def test_skipped_items_and_several_reasons_most_first() -> None:
    result = DrainResult(
        claimed=9, embedded=2, unchanged=1, failed=5, skipped=1,
        reasons={"empty_text": 1, "invalid_input": 2, "not_found": 3},
    )  # fmt: skip

    message = str(ItemsFailed.of(MODEL, result))

    assert message.startswith(
        "6 items failed or skipped: not_found=3, invalid_input=2, empty_text=1 "
    )
    assert str(
        ItemsFailed.of(MODEL, DrainResult(failed=1, reasons={"lease_expired": 1}))
    ).startswith("1 item failed: lease_expired=1 ")


def test_failures_that_are_outcomes_are_expected_and_acked() -> None:
    assert ItemsFailed in drain.throws
    assert MessageRefused in embed_articles.throws
    assert MessageRefused in embed_article.throws
    # Acked when they fail, so a failed drain is never redelivered; a lost worker's is.
    assert app.conf.task_acks_late is True
    assert app.conf.task_acks_on_failure_or_timeout is True
    assert app.conf.task_reject_on_worker_lost is True


def test_housekeeping_sends_no_events_and_the_work_does() -> None:
    tasks = {name: task for name, task in app.tasks.items() if not name.startswith("celery.")}
    quiet = {name for name, task in tasks.items() if not task.send_events}
    assert quiet == {"embeddings.sweep", "embeddings.reconcile"}
    assert app.conf.worker_send_task_events is True
    assert app.conf.task_send_sent_event is False


def test_both_queues_are_declared() -> None:
    declared = {queue.name: queue.routing_key for queue in app.conf.task_queues}
    assert declared == {QUEUE: QUEUE, MAINTENANCE_QUEUE: MAINTENANCE_QUEUE}
    assert app.conf.task_default_queue == QUEUE

"""The pure helpers of the queue watcher: channels, kombu messages, notification flags."""

from __future__ import annotations

import json

from warmstart.scheduler.queue_watch import model_of, notifications_on, task_id_of


def test_keyspace_channels_name_the_model_of_infer_queues_only() -> None:
    assert model_of("__keyspace@0__:infer.short-form") == "short-form"
    assert model_of("__keyspace@3__:infer.a.b") == "a.b"
    assert model_of("__keyspace@0__:warmstart.prewarm") is None
    assert model_of("__keyspace@0__:infer.") is None


def test_the_task_id_is_read_from_a_kombu_message() -> None:
    message = json.dumps({"body": "e30=", "headers": {"id": "abc", "task": "warmstart.infer"},
                          "properties": {"correlation_id": "abc"}})
    assert task_id_of(message) == "abc"
    assert task_id_of(json.dumps({"properties": {"correlation_id": "xyz"}})) == "xyz"
    assert task_id_of("not json") is None and task_id_of("[1]") is None and task_id_of("{}") is None


def test_list_events_on_keyspace_channels_are_needed() -> None:
    assert notifications_on("Kl") and notifications_on("KA") and notifications_on("lKE")
    assert not notifications_on("") and not notifications_on("El") and not notifications_on("Kx")

"""``log: {format: json}``: the JSON lines, the node id, and repeated warnings summarised."""

from __future__ import annotations

import io
import json

import pytest
import yaml
from twisted.logger import Logger, LogLevel, LogPublisher

from storg.config import ConfigError, LogSettings, load_config
from storg.logs import Summarizer, json_writer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def logger_to(observer) -> Logger:
    publisher = LogPublisher()
    publisher.addObserver(observer)
    return Logger(namespace="storg.peer", observer=publisher)


def test_every_event_is_one_json_line_with_the_node_id():
    out = io.StringIO()
    log = logger_to(Summarizer("n7", json_writer(out)))
    log.info("connected to peer {peer} at {addr}", peer="n2", addr="127.0.0.1:7002")
    log.warn("refusing peer: {node} came back", node="n3")  # an event's own "node" is kept
    log.warn("odd value {v!r}", v=object())  # not JSON-serializable: kept as text
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    first, own, second = (json.loads(line) for line in lines)
    assert own["text"] == "refusing peer: n3 came back" and own["node"] == "n3" and own["log_node"] == "n7"
    assert first["log_node"] == "n7" and first["peer"] == "n2" and first["log_namespace"] == "storg.peer"
    assert first["log_level"]["name"] == "info"
    assert second["log_node"] == "n7" and "odd value <object object" in second["text"]


def test_a_repeated_warning_is_held_back_counted_and_summarised():
    events: list[dict] = []
    clock = Clock()
    summarizer = Summarizer("n1", events.append, window=60, clock=clock)
    log = logger_to(summarizer)
    for port in range(40000, 40010):  # the same refusal from ten source ports
        log.warn("refused a connection from 127.0.0.1:{port}: bad certificate", port=port)
        clock.now += 1
    log.warn("something else")
    log.info("info always passes")
    log.info("info always passes")
    assert [e.get("port") for e in events if e["log_level"] == LogLevel.warn] == [40000, None]
    assert len([e for e in events if e["log_level"] == LogLevel.info]) == 2
    summarizer.flush()
    assert len(events) == 4  # the window of the refusal is not over yet: nothing to summarise
    clock.now = 61
    summarizer.flush()
    summary = events[-1]
    assert summary["log_repeated"] == 9 and summary["port"] == 40009 and summary["log_node"] == "n1"
    assert "repeated 9 times" in summary["log_format"].format(**summary)
    log.warn("refused a connection from 127.0.0.1:{port}: bad certificate", port=50000)
    assert events[-1]["port"] == 50000 and "log_repeated" not in events[-1]


def _config(tmp_path, log) -> object:
    path = tmp_path / "n1.yaml"
    path.write_text(yaml.safe_dump({"node_id": "n1", "data_dir": "d", "peer_listen": "127.0.0.1:7001",
                                    "client_listen": "127.0.0.1:8001", "log": log,
                                    "cluster": {"n1": {"peer": "127.0.0.1:7001", "client": "127.0.0.1:8001"}}}))
    return load_config(path)


def test_the_log_section(tmp_path):
    assert _config(tmp_path, None).log == LogSettings()
    assert _config(tmp_path, {"format": "json"}).log == LogSettings("json")
    assert _config(tmp_path, {"format": "json", "path": "logs/n1.json"}).log.path == tmp_path / "logs/n1.json"
    for bad, key in (({"format": "xml"}, "log.format"), ({"level": "debug"}, "log.level"),
                     ({"format": "text", "path": "x"}, "log.path"), ("json", "log")):
        with pytest.raises(ConfigError) as err:
            _config(tmp_path, bad)
        assert key in str(err.value)


def test_the_text_log_is_twistds_own_observer_behind_the_summarizer(tmp_path):
    from storg.logs import text_observer

    logfile = tmp_path / "n1.log"
    observer = text_observer("n1", {"logfile": str(logfile), "nodaemon": False})
    assert isinstance(observer, Summarizer)
    log = logger_to(observer)
    for port in (1, 2, 3):
        log.warn("refused a connection from 127.0.0.1:{port}", port=port)
    text = logfile.read_text()
    assert text.count("refused a connection") == 1 and "[storg.peer#warn]" in text
    # Where twistd's options say the operator chose: twistd's default stays.
    assert text_observer("n1", {"syslog": True}) is None
    assert text_observer("n1", {"logger": "my.observer"}) is None
    assert text_observer("n1", None) is None

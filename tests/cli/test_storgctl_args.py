"""storgctl's argument handling: usage errors are one line and exit 2."""

from __future__ import annotations

import pytest

from storg.cli.main import (
    DEFAULT_CLUSTER,
    EXIT_USAGE,
    CliError,
    build_parser,
    cluster_addresses,
    format_status,
    main,
    status_summary,
)


def test_cluster_default_env_and_option(monkeypatch):
    monkeypatch.delenv("STORG_CLUSTER", raising=False)
    assert cluster_addresses(None) == DEFAULT_CLUSTER.split(",")
    monkeypatch.setenv("STORG_CLUSTER", "127.0.0.5:9000")
    assert cluster_addresses(None) == ["127.0.0.5:9000"]
    assert cluster_addresses("127.0.0.1:1,[::1]:2") == ["127.0.0.1:1", "[::1]:2"]


@pytest.mark.parametrize("bad", ["nohost", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:99999", ","])
def test_bad_cluster_address_is_a_usage_error(bad):
    with pytest.raises(CliError) as err:
        cluster_addresses(bad)
    assert err.value.code == EXIT_USAGE


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["--timeout", "x", "status"]])
def test_usage_errors_are_one_line_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("storgctl: ")
    assert err.count("\n") == 1


def test_nonpositive_timeout_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--timeout", "0", "status"])
    assert exit_.value.code == EXIT_USAGE
    assert capsys.readouterr().err.startswith("storgctl: --timeout")


def test_status_table_shows_unreachable_rows_with_dashes():
    rows = [
        {"id": "n1", "role": "leader", "term": 3, "leader": "n1", "commit_index": 7,
         "applied_index": 7, "last_index": 7},
        {"id": "n2", "role": "unreachable", "term": None, "leader": None, "commit_index": None,
         "applied_index": None, "last_index": None},
    ]
    lines = format_status(rows).splitlines()
    assert lines[0].split() == ["ID", "ROLE", "TERM", "LEADER", "COMMIT", "APPLIED", "LAST"]
    assert lines[1].split() == ["n1", "leader", "3", "n1", "7", "7", "7"]
    assert lines[2].split() == ["n2", "unreachable", "-", "-", "-", "-", "-"]


def _row(nid: str, role: str) -> dict:
    return {"id": nid, "role": role, "term": 1, "leader": "", "commit_index": 1, "applied_index": 1,
            "last_index": 1}


@pytest.mark.parametrize("roles, line", [
    (("leader", "follower", "follower"), "cluster healthy: 3 of 3 voters reachable, leader n1, can lose 1 more"),
    (("leader", "unreachable", "follower"),
     "cluster degraded: 2 of 3 voters reachable, leader n1, can lose 0 more"),
    (("leader", "follower", "follower", "learner"),
     "cluster healthy: 3 of 3 voters reachable, leader n1, can lose 1 more"),
    (("candidate", "unreachable", "unreachable"),
     "cluster unavailable: no leader agreed on (1 of 3 voters reachable, quorum 2)"),
    (("leader", "leader", "follower"),
     "cluster unavailable: no leader agreed on (3 of 3 voters reachable, quorum 2)"),
    (("leader",), "cluster healthy: 1 of 1 voters reachable, leader n1, can lose 0 more"),
])
def test_status_starts_with_the_health_and_the_failure_tolerance(roles, line):
    assert status_summary([_row(f"n{i + 1}", role) for i, role in enumerate(roles)]) == line


def test_global_options_come_before_the_command():
    args = build_parser().parse_args(["--json", "--timeout", "5", "status"])
    assert args.json and args.timeout == 5.0 and args.command == "status"

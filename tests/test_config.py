"""storg.config: every bad configuration is one line naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from storg.config import (
    Address,
    ConfigError,
    FileTuning,
    RaftTuning,
    cluster_id,
    load_config,
    parse_address,
)

ETC = Path(__file__).resolve().parent.parent / "etc"

BASE = {
    "node_id": "n1",
    "data_dir": "data/n1",
    "peer_listen": "127.0.0.1:7001",
    "client_listen": "127.0.0.1:8001",
    "cluster": {
        "n1": {"peer": "127.0.0.1:7001", "client": "127.0.0.1:8001"},
        "n2": {"peer": "127.0.0.1:7002", "client": "127.0.0.1:8002"},
    },
}


def write(tmp_path: Path, doc: object, name: str = "node.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return path


def with_(**changes: object) -> dict:
    doc = {k: (dict(v) if isinstance(v, dict) else v) for k, v in BASE.items()}
    for key, value in changes.items():
        if value is _DROP:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


_DROP = object()


def error_of(tmp_path: Path, doc: object) -> ConfigError:
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    text = str(err)
    assert "\n" not in text
    assert text.startswith(f"{path}: ")
    return err


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.node_id == "n1"
    assert cfg.data_dir == tmp_path / "data" / "n1"
    assert cfg.data_dir.is_absolute()
    assert cfg.peer_listen == Address("127.0.0.1", 7001)
    assert cfg.http_listen is None
    assert cfg.join is False
    assert cfg.cluster_token == "storg"
    assert cfg.raft == RaftTuning()
    assert cfg.files == FileTuning()
    assert cfg.source == tmp_path / "node.yaml"
    assert cfg.peer_addresses() == {"n2": Address("127.0.0.1", 7002)}


def test_data_dir_is_relative_to_the_config_folder_not_the_cwd(tmp_path: Path, monkeypatch) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    write(sub, with_(data_dir="../var/n1"))
    monkeypatch.chdir(tmp_path / "etc")
    cfg = load_config("node.yaml")
    assert cfg.data_dir == tmp_path / "var" / "n1"


def test_full_config(tmp_path: Path) -> None:
    doc = with_(
        http_listen="localhost:9001",
        cluster_token="blue",
        raft={"heartbeat_ms": 100, "election_timeout_ms": [500, 1000], "snapshot_every": 7},
        files={"replication_factor": 2, "chunk_size": 65536},
    )
    cfg = load_config(write(tmp_path, doc))
    assert cfg.http_listen == Address("localhost", 9001)
    assert cfg.raft == RaftTuning(100, (500, 1000), 7)
    assert cfg.files == FileTuning(2, 65536)
    assert cfg.cluster_token == "blue"


def test_join_node_need_not_be_a_member(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, with_(node_id="n9", join=True)))
    assert cfg.join and "n9" not in cfg.cluster


@pytest.mark.parametrize("name", ["n1.yaml", "n2.yaml", "n3.yaml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(ETC / name)
    n = name[1]
    assert cfg.node_id == f"n{n}"
    assert cfg.peer_listen == Address("127.0.0.1", 7000 + int(n))
    assert cfg.client_listen == Address("127.0.0.1", 8000 + int(n))
    assert cfg.http_listen == Address("127.0.0.1", 9000 + int(n))
    assert cfg.s3_listen == Address("127.0.0.1", 9100 + int(n))
    assert cfg.data_dir == ETC.parent / "data" / f"n{n}"
    assert set(cfg.cluster) == {"n1", "n2", "n3"}
    assert cfg.cluster[f"n{n}"].peer == cfg.peer_listen


def test_cluster_id_agrees_across_shipped_configs() -> None:
    ids = {cluster_id(load_config(ETC / f"n{i}.yaml")) for i in (1, 2, 3)}
    assert len(ids) == 1
    (cid,) = ids
    assert len(cid) == 32 and int(cid, 16) >= 0


def test_cluster_id_depends_on_token_and_members(tmp_path: Path) -> None:
    a = cluster_id(load_config(write(tmp_path, BASE, "a.yaml")))
    # Same members listed in another order, another node's view: same id.
    reordered = with_(node_id="n2", cluster=dict(reversed(list(BASE["cluster"].items()))))
    assert cluster_id(load_config(write(tmp_path, reordered, "b.yaml"))) == a
    assert cluster_id(load_config(write(tmp_path, with_(cluster_token="other"), "c.yaml"))) != a
    more = dict(BASE["cluster"], n3={"peer": "127.0.0.1:7003", "client": "127.0.0.1:8003"})
    assert cluster_id(load_config(write(tmp_path, with_(cluster=more), "d.yaml"))) != a


BAD_CASES = [
    # (document changes, key named in the message, words in the reason)
    (dict(node_id=_DROP), "node_id", "missing"),
    (dict(data_dir=_DROP), "data_dir", "missing"),
    (dict(peer_listen=_DROP), "peer_listen", "missing"),
    (dict(client_listen=_DROP), "client_listen", "missing"),
    (dict(cluster=_DROP), "cluster", "missing"),
    (dict(node_id=None), "node_id", "no value"),
    (dict(node_id="N1"), "node_id", "a-z"),
    (dict(node_id="n" * 65), "node_id", "1-64"),
    (dict(node_id=""), "node_id", "1-64"),
    (dict(node_id="n3"), "cluster", "not a member"),
    (dict(data_dir=""), "data_dir", "non-empty"),
    (dict(peer_listen="127.0.0.1"), "peer_listen", "HOST:PORT"),
    (dict(peer_listen="127.0.0.1:0"), "peer_listen", "1-65535"),
    (dict(peer_listen="127.0.0.1:65536"), "peer_listen", "1-65535"),
    (dict(peer_listen="127.0.0.1:http"), "peer_listen", "not a number"),
    (dict(peer_listen="300.0.0.1:7001"), "peer_listen", "IPv4"),
    (dict(peer_listen="bad_host:7001"), "peer_listen", "host name"),
    (dict(peer_listen="::1:7001"), "peer_listen", "[ADDR]:PORT"),
    (dict(peer_listen="[127.0.0.1]:7001"), "peer_listen", "IPv6"),
    (dict(peer_listen=7001), "peer_listen", "string"),
    (dict(client_listen="127.0.0.1:7001"), "client_listen", "already used by peer_listen"),
    (dict(http_listen=":9001"), "http_listen", "HOST:PORT"),
    (dict(bogus=1), "bogus", "unknown key"),
    (dict(join="yes please"), "join", "true or false"),
    (dict(cluster_token=""), "cluster_token", "non-empty"),
    (dict(cluster={}), "cluster", "non-empty mapping"),
    (dict(cluster=["n1"]), "cluster", "mapping"),
    (dict(cluster={"n1": {"peer": "127.0.0.1:7001"}}), "cluster.n1.client", "missing"),
    (dict(cluster={"n1": {"peer": "127.0.0.1:7001", "client": "127.0.0.1:8001", "x": 1}}),
     "cluster.n1.x", "unknown key"),
    (dict(cluster={"n1": "127.0.0.1:7001"}), "cluster.n1", "mapping"),
    (dict(cluster={"N-1": {"peer": "h:1", "client": "h:2"}}), "cluster.N-1", "a-z"),
    (dict(cluster={"n1": {"peer": "127.0.0.1:7001", "client": "127.0.0.1:99999"}}),
     "cluster.n1.client", "1-65535"),
    (dict(cluster={"n1": {"peer": "h:1", "client": "h:2"}, "n2": {"peer": "h:1", "client": "h:3"}}),
     "cluster.n2.peer", "also the peer address of n1"),
    (dict(raft=[]), "raft", "mapping"),
    (dict(raft={"heartbeat_ms": 0}), "raft.heartbeat_ms", "positive integer"),
    (dict(raft={"heartbeat_ms": "fast"}), "raft.heartbeat_ms", "positive integer"),
    (dict(raft={"heartbeat_ms": True}), "raft.heartbeat_ms", "positive integer"),
    (dict(raft={"heart_beat": 10}), "raft.heart_beat", "unknown key"),
    (dict(raft={"election_timeout_ms": 500}), "raft.election_timeout_ms", "pair"),
    (dict(raft={"election_timeout_ms": [500]}), "raft.election_timeout_ms", "pair"),
    (dict(raft={"election_timeout_ms": [600, 500]}), "raft.election_timeout_ms", "below the maximum"),
    (dict(raft={"election_timeout_ms": [500, 500]}), "raft.election_timeout_ms", "below the maximum"),
    (dict(raft={"heartbeat_ms": 500, "election_timeout_ms": [400, 800]}),
     "raft.election_timeout_ms", "exceed raft.heartbeat_ms"),
    (dict(raft={"snapshot_every": -1}), "raft.snapshot_every", "positive integer"),
    (dict(files={"replication_factor": 0}), "files.replication_factor", "positive integer"),
    (dict(files={"chunk_size": 1024}), "files.chunk_size", "within"),
    (dict(files={"chunk_size": 4 * 1024 * 1024 + 1}), "files.chunk_size", "within"),
    (dict(files={"chunks": 1}), "files.chunks", "unknown key"),
]


@pytest.mark.parametrize(("changes", "key", "words"), BAD_CASES, ids=[c[1] + ":" + c[2] for c in BAD_CASES])
def test_bad_values_name_key_and_file(tmp_path: Path, changes: dict, key: str, words: str) -> None:
    err = error_of(tmp_path, with_(**changes))
    assert err.key == key
    assert f": {key}: " in str(err)
    assert words in err.reason


def test_chunk_size_bounds_are_inclusive(tmp_path: Path) -> None:
    for size in (64 * 1024, 4 * 1024 * 1024):
        cfg = load_config(write(tmp_path, with_(files={"chunk_size": size})))
        assert cfg.files.chunk_size == size


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: cannot read")
    assert "\n" not in str(info.value)


def test_yaml_syntax_error_is_one_line_with_position(tmp_path: Path) -> None:
    err = error_of(tmp_path, "node_id: n1\ncluster: {n1: [\n  bad: : :\n")
    assert "not valid YAML" in str(err)
    assert "line " in str(err)


@pytest.mark.parametrize("doc", ["- a\n- b\n", "just text\n", ""])
def test_top_level_must_be_a_mapping(tmp_path: Path, doc: str) -> None:
    err = error_of(tmp_path, doc)
    assert "top level must be a mapping" in str(err)


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    text = yaml.safe_dump(BASE) + "node_id: n2\n"
    err = error_of(tmp_path, text)
    assert err.key == "node_id"
    assert "duplicate key" in err.reason


def test_ipv6_and_hostname_addresses() -> None:
    assert parse_address("[::1]:7001") == Address("::1", 7001)
    assert str(parse_address("[::1]:7001")) == "[::1]:7001"
    assert parse_address("node-1.example.com:80") == Address("node-1.example.com", 80)
    assert str(parse_address("10.0.0.1:1")) == "10.0.0.1:1"
    for bad in ("[::1]7001", "[zz]:1", "-bad.example:1", "a..b:1", "h:+1", "h:١٢"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_tls_section_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, with_(tls={"ca": "certs/ca.pem", "cert": "certs/n1.pem",
                                                  "key": "/abs/n1-key.pem"})))
    assert cfg.tls is not None and not cfg.plaintext
    assert cfg.tls.ca == tmp_path / "certs" / "ca.pem"
    assert cfg.tls.key == Path("/abs/n1-key.pem")


@pytest.mark.parametrize("value, key, reason", [
    ({"ca": "ca.pem", "cert": "n1.pem"}, "tls.key", "required key is missing"),
    ({"ca": "ca.pem", "cert": "n1.pem", "key": "k.pem", "crl": "x"}, "tls.crl", "unknown key"),
    (True, "tls", "or off"),
    ("on", "tls", "or off"),
    ({"ca": "", "cert": "n1.pem", "key": "k.pem"}, "tls.ca", "must be a file path"),
])
def test_a_bad_tls_section_is_refused(tmp_path: Path, value, key, reason) -> None:
    err = error_of(tmp_path, with_(tls=value))
    assert err.key == key and reason in err.reason


def test_without_tls_only_loopback_addresses_may_be_served(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, BASE)).plaintext
    assert load_config(write(tmp_path, with_(client_listen="[::1]:8001"))).plaintext
    assert load_config(write(tmp_path, with_(client_listen="localhost:8001"))).plaintext
    for key, address in (("client_listen", "10.0.0.5:8001"), ("peer_listen", "0.0.0.0:7001"),
                         ("http_listen", "myhost:9001"), ("s3_listen", "10.0.0.5:9101")):
        err = error_of(tmp_path, with_(**{key: address}))
        assert err.key == key and "not a loopback address" in err.reason and "tls: off" in err.reason
    # `tls: off` (YAML reads a bare off as false) is the operator saying they mean it.
    path = write(tmp_path, "tls: off\n" + yaml.safe_dump(with_(client_listen="10.0.0.5:8001")))
    cfg = load_config(path)
    assert cfg.tls is None and cfg.tls_off and cfg.plaintext


def test_s3_listen_and_its_section(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.s3_listen is None and cfg.s3.multipart_expiry_s == 7 * 86400
    cfg = load_config(write(tmp_path, with_(s3_listen="127.0.0.1:9101", s3={"multipart_expiry_s": 60})))
    assert cfg.s3_listen == Address("127.0.0.1", 9101)
    assert cfg.listen_addresses()["s3_listen"] == cfg.s3_listen
    assert cfg.s3.multipart_expiry_s == 60.0 and cfg.s3.expiry_interval_s == 3600.0
    err = error_of(tmp_path, with_(s3_listen=BASE["client_listen"]))
    assert err.key == "s3_listen" and "already used by client_listen" in err.reason
    err = error_of(tmp_path, with_(s3={"multipart_expiry": 60}))
    assert err.key == "s3.multipart_expiry" and "unknown key" in err.reason
    err = error_of(tmp_path, with_(s3={"multipart_expiry_s": -1}))
    assert err.key == "s3.multipart_expiry_s" and "positive number" in err.reason

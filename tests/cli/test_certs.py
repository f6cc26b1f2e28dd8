"""``storgctl certs init`` and ``storgctl certs client``: the files, their modes, what they name."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from storg.cli.main import EXIT_USAGE, main
from storg.net.certs import CA_DAYS, LEAF_DAYS, load_ca, write_file
from storg.net.tls import (
    Identity,
    client_options,
    identity_of,
    load_certificates,
    load_private_key,
    server_options,
)


def storgctl(*argv: str) -> int:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    return int(exit_.value.code or 0)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def cert(path) -> x509.Certificate:
    return load_certificates(str(path))[0]


def one_error_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("storgctl: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def cluster_dir(tmp_path, capsys):
    folder = tmp_path / "certs"
    assert storgctl("certs", "init", str(folder), "--nodes", "n1,n2,n3", "--hosts", "10.1.2.3,db.example.com") == 0
    capsys.readouterr()
    return folder


def test_init_writes_every_file_with_the_right_mode(tmp_path, capsys):
    folder = tmp_path / "certs"
    assert storgctl("--json", "certs", "init", str(folder), "--nodes", "n1,n2") == 0
    names = ["ca", "n1", "n2", "admin"]
    expected = [str(folder / f) for n in names for f in (f"{n}.pem", f"{n}-key.pem")]
    assert json.loads(capsys.readouterr().out) == expected
    assert sorted(os.listdir(folder)) == sorted(os.path.basename(p) for p in expected)  # no temporary left
    assert mode(folder) == 0o700
    for n in names:
        assert mode(folder / f"{n}-key.pem") == 0o600
        assert mode(folder / f"{n}.pem") == 0o644


def test_init_identities_parse_back_and_chain_to_the_ca(cluster_dir):
    ca = load_ca(str(cluster_dir))
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for node_id in ("n1", "n2", "n3"):
        leaf = cert(cluster_dir / f"{node_id}.pem")
        assert identity_of(leaf) == Identity.node(node_id)
        leaf.verify_directly_issued_by(ca.cert)
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(san.get_values_for_type(x509.IPAddress)) == {
            ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"), ipaddress.ip_address("10.1.2.3")}
        assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "db.example.com"}
        key = load_private_key(str(cluster_dir / f"{node_id}-key.pem"))
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
        # The material is usable as is: the TLS contexts load and check it.
        server_options(str(cluster_dir / "ca.pem"), str(cluster_dir / f"{node_id}.pem"),
                       str(cluster_dir / f"{node_id}-key.pem"))
    admin = cert(cluster_dir / "admin.pem")
    assert identity_of(admin) == Identity.client("admin", "admin")
    assert list(admin.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    client_options(str(cluster_dir / "ca.pem"), str(cluster_dir / "admin.pem"),
                   str(cluster_dir / "admin-key.pem"), expected_node="n1")


def test_validity_periods(cluster_dir):
    def days(c: x509.Certificate) -> float:
        return (c.not_valid_after_utc - c.not_valid_before_utc) / datetime.timedelta(days=1)

    now = datetime.datetime.now(datetime.UTC)
    ca, leaf = cert(cluster_dir / "ca.pem"), cert(cluster_dir / "n1.pem")
    assert CA_DAYS <= days(ca) < CA_DAYS + 1 and LEAF_DAYS <= days(leaf) < LEAF_DAYS + 1
    assert ca.not_valid_before_utc < now - datetime.timedelta(minutes=4)  # a slow peer clock accepts it


@pytest.mark.parametrize("role", ["readonly", "readwrite", "admin"])
def test_client_with_each_role(cluster_dir, capsys, role):
    assert storgctl("certs", "client", str(cluster_dir), "alice", "--role", role) == 0
    assert capsys.readouterr().out.split() == [str(cluster_dir / "alice.pem"), str(cluster_dir / "alice-key.pem")]
    leaf = cert(cluster_dir / "alice.pem")
    assert identity_of(leaf) == Identity.client("alice", role)
    leaf.verify_directly_issued_by(cert(cluster_dir / "ca.pem"))
    assert mode(cluster_dir / "alice-key.pem") == 0o600 and mode(cluster_dir / "alice.pem") == 0o644


def test_node_added_later_gets_a_node_certificate_from_the_same_ca(cluster_dir, capsys):
    assert storgctl("certs", "node", str(cluster_dir), "n4", "--hosts", "10.1.2.4") == 0
    assert capsys.readouterr().out.split() == [str(cluster_dir / "n4.pem"), str(cluster_dir / "n4-key.pem")]
    leaf = cert(cluster_dir / "n4.pem")
    assert identity_of(leaf) == Identity.node("n4")
    leaf.verify_directly_issued_by(cert(cluster_dir / "ca.pem"))
    assert mode(cluster_dir / "n4-key.pem") == 0o600
    assert storgctl("certs", "node", str(cluster_dir), "n4") == EXIT_USAGE  # exists: --force
    one_error_line(capsys, "exists")
    assert storgctl("certs", "node", str(cluster_dir), "N4!") == EXIT_USAGE
    one_error_line(capsys, "invalid node id")


def test_refuses_to_overwrite_without_force(cluster_dir, capsys):
    before = {name: (cluster_dir / name).read_bytes() for name in os.listdir(cluster_dir)}
    assert storgctl("certs", "init", str(cluster_dir), "--nodes", "n1") == EXIT_USAGE
    one_error_line(capsys, "exists", "--force")
    assert storgctl("certs", "client", str(cluster_dir), "n2", "--role", "readonly") == EXIT_USAGE
    one_error_line(capsys, "n2.pem exists")
    assert {name: (cluster_dir / name).read_bytes() for name in os.listdir(cluster_dir)} == before
    assert storgctl("certs", "client", str(cluster_dir), "admin", "--role", "readonly", "--force") == 0
    assert identity_of(cert(cluster_dir / "admin.pem")) == Identity.client("admin", "readonly")
    assert mode(cluster_dir / "admin-key.pem") == 0o600
    assert storgctl("certs", "init", str(cluster_dir), "--nodes", "n1", "--force") == 0
    assert (cluster_dir / "ca.pem").read_bytes() != before["ca.pem"]


@pytest.mark.parametrize(("argv", "needle"), [
    (["certs", "client", "{dir}", "bob", "--role", "root"], "invalid role 'root'"),
    (["certs", "client", "{dir}", "bob", "--role", "node"], "invalid role 'node'"),
    (["certs", "client", "{dir}", "Bob", "--role", "admin"], "invalid user name"),
    (["certs", "client", "{dir}", "../x", "--role", "admin"], "invalid user name"),
    (["certs", "client", "{dir}", "ca", "--role", "admin"], "may not be named 'ca'"),
    (["certs", "client", "{dir}", "bob"], "--role"),
    (["certs", "client", "{dir}/nowhere", "bob", "--role", "admin"], "cannot read the CA certificate"),
    (["certs", "init", "{dir}/new", "--nodes", "n1,N2"], "invalid node id 'N2'"),
    (["certs", "init", "{dir}/new", "--nodes", "n1,n1"], "given twice"),
    (["certs", "init", "{dir}/new", "--nodes", ","], "at least one node"),
    (["certs", "init", "{dir}/new", "--nodes", "ca"], "may not be named 'ca'"),
    (["certs", "init", "{dir}/new", "--nodes", "admin"], "may not be named 'admin'"),
    (["certs", "init", "{dir}/new", "--nodes", "n1", "--hosts", "bad host"], "invalid host 'bad host'"),
    (["certs", "init", "{dir}/new"], "--nodes"),
    (["certs"], "required"),
])
def test_usage_and_local_errors_exit_2_with_one_line(cluster_dir, capsys, argv, needle):
    argv = [a.replace("{dir}", str(cluster_dir)) for a in argv]
    assert storgctl(*argv) == EXIT_USAGE
    one_error_line(capsys, needle)
    assert not (cluster_dir / "new").exists() and not (cluster_dir / "bob.pem").exists()


def test_client_refuses_a_ca_key_that_is_not_the_cas(cluster_dir, tmp_path, capsys):
    other = tmp_path / "other"
    assert storgctl("certs", "init", str(other), "--nodes", "n1") == 0
    write_file(str(cluster_dir / "ca-key.pem"), (other / "ca-key.pem").read_bytes(), 0o600, force=True)
    assert storgctl("certs", "client", str(cluster_dir), "bob", "--role", "admin") == EXIT_USAGE
    one_error_line(capsys, "ca-key.pem: this key is not the key of")


def test_certs_needs_no_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("STORG_CLUSTER", "not an address")
    assert storgctl("certs", "init", str(tmp_path / "c"), "--nodes", "n1") == 0


def test_write_file_never_exposes_a_key_even_with_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        write_file(str(tmp_path / "k.pem"), b"secret", 0o600)
    finally:
        os.umask(old)
    assert mode(tmp_path / "k.pem") == 0o600 and (tmp_path / "k.pem").read_bytes() == b"secret"

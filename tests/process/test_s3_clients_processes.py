"""The S3 gateway with the command-line clients people use, unmodified, over HTTPS: Debian's
aws CLI (``s3 cp``, ``s3 sync``, ``s3api``), rclone (``copy``, ``sync``, ``check``, ``lsf``),
s3cmd, and curl with presigned GET and PUT URLs (made by boto3), against a 3-node cluster of
real processes with TLS on.

CI installs the tools (.ci/run) and sets STORG_S3_CLIENTS_REQUIRED=1, which turns a missing
tool into a failure rather than a skip.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from storg.testing.devcluster import ProcCluster, wait_for
from storg.testing.s3clients import (
    AWS_CLI,
    aws_env,
    boto3_client,
    create_key,
    endpoint,
    missing_tools,
    rclone_env,
    s3cmd_config,
)

pytestmark = pytest.mark.process

MIB = 1024 * 1024

_missing = missing_tools()
if _missing:
    if os.environ.get("STORG_S3_CLIENTS_REQUIRED") == "1":
        raise RuntimeError(f"S3 clients missing (STORG_S3_CLIENTS_REQUIRED=1): {', '.join(_missing)}")
    pytest.skip(f"S3 clients not installed: {', '.join(_missing)}", allow_module_level=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = ProcCluster.create(tmp_path_factory.mktemp("s3clients"), size=3, s3=True)
    c.start_all()
    try:
        wait_for(c.leader, 60, "a leader", 0.2)
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def key(cluster):
    return create_key(cluster, "clients", "readwrite")


def run(command: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run(command, env=env, capture_output=True, timeout=timeout)
    assert out.returncode == 0, (command, out.stdout.decode()[-2000:], out.stderr.decode()[-2000:])
    return out


def make_tree(root: Path, files: int = 40, large: int = 0) -> dict[str, bytes]:
    contents: dict[str, bytes] = {}
    for i in range(files):
        name = f"d{i % 4}/file-{i:03d}.txt"
        contents[name] = os.urandom(1000 + i * 37)
    if large:
        contents["large.bin"] = os.urandom(large)
    for name, data in contents.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return contents


def tree_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_aws_cli_cp_sync_and_s3api(cluster, key, tmp_path):
    env = aws_env(cluster, key, tmp_path / "home")
    url = endpoint(cluster)
    aws = [AWS_CLI, "--endpoint-url", url]
    run([*aws, "s3", "mb", "s3://aws-cli"], env)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(40 * MIB))  # over the CLI's 8 MiB threshold: a multipart upload
    run([*aws, "s3", "cp", str(big), "s3://aws-cli/big.bin"], env)
    run([*aws, "s3", "cp", "s3://aws-cli/big.bin", str(tmp_path / "big.back")], env)
    assert (tmp_path / "big.back").read_bytes() == big.read_bytes()
    source = tmp_path / "tree"
    contents = make_tree(source)
    run([*aws, "s3", "sync", str(source), "s3://aws-cli/tree"], env)
    back = tmp_path / "back"
    run([*aws, "s3", "sync", "s3://aws-cli/tree", str(back)], env)
    assert tree_of(back) == contents
    # A second sync has nothing to do.
    again = run([*aws, "s3", "sync", str(source), "s3://aws-cli/tree"], env)
    assert b"upload:" not in again.stdout
    listed = json.loads(run([*aws, "s3api", "list-objects-v2", "--bucket", "aws-cli", "--prefix", "tree/",
                             "--delimiter", "/"], env).stdout)
    assert [p["Prefix"] for p in listed["CommonPrefixes"]] == [f"tree/d{i}/" for i in range(4)]
    head = json.loads(run([*aws, "s3api", "head-object", "--bucket", "aws-cli", "--key", "tree/d0/file-000.txt"],
                          env).stdout)
    assert head["ETag"] == f'"{hashlib.md5(contents["d0/file-000.txt"]).hexdigest()}"'
    run([*aws, "s3", "rm", "--recursive", "s3://aws-cli/tree"], env)
    assert json.loads(run([*aws, "s3api", "list-objects-v2", "--bucket", "aws-cli", "--prefix", "tree/"],
                          env).stdout or b"{}").get("KeyCount", 0) == 0


def test_rclone_copy_sync_check_lsf(cluster, key, tmp_path):
    env = rclone_env(cluster, key, tmp_path / "home")
    rclone = ["rclone", "--retries", "1"]
    source = tmp_path / "tree"
    contents = make_tree(source, large=30 * MIB)
    run([*rclone, "mkdir", "storg:rclone"], env)
    run([*rclone, "copy", str(source), "storg:rclone/tree"], env)
    run([*rclone, "check", str(source), "storg:rclone/tree"], env)
    listed = run([*rclone, "lsf", "-R", "--files-only", "storg:rclone/tree"], env).stdout.decode().split()
    assert sorted(listed) == sorted(contents)
    (source / "d0" / "file-000.txt").unlink()
    (source / "new.txt").write_bytes(b"new")
    run([*rclone, "sync", str(source), "storg:rclone/tree"], env)
    run([*rclone, "check", str(source), "storg:rclone/tree"], env)
    back = tmp_path / "back"
    run([*rclone, "copy", "storg:rclone/tree", str(back)], env)
    assert tree_of(back) == tree_of(source)


def test_s3cmd(cluster, key, tmp_path):
    config = s3cmd_config(cluster, key, tmp_path / "home")
    env = dict(os.environ, HOME=str(tmp_path / "home"))
    s3cmd = ["s3cmd", "-c", str(config)]
    run([*s3cmd, "mb", "s3://s3cmd"], env)
    local = tmp_path / "f.bin"
    local.write_bytes(os.urandom(3 * MIB))
    run([*s3cmd, "put", str(local), "s3://s3cmd/dir/f.bin"], env)
    listing = run([*s3cmd, "ls", "s3://s3cmd/dir/"], env).stdout.decode()
    assert "s3://s3cmd/dir/f.bin" in listing
    run([*s3cmd, "get", "s3://s3cmd/dir/f.bin", str(tmp_path / "f.back")], env)
    assert (tmp_path / "f.back").read_bytes() == local.read_bytes()
    run([*s3cmd, "del", "s3://s3cmd/dir/f.bin"], env)
    assert "f.bin" not in run([*s3cmd, "ls", "s3://s3cmd/dir/"], env).stdout.decode()


def test_presigned_get_and_put_with_curl(cluster, key, tmp_path):
    s3 = boto3_client(cluster, key)
    s3.create_bucket(Bucket="presigned")
    ca = str(cluster.certs / "ca.pem")
    body = tmp_path / "up.bin"
    body.write_bytes(os.urandom(200_000))
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": "presigned", "Key": "up.bin"},
                                        ExpiresIn=600)
    out = run(["curl", "-sS", "--fail-with-body", "--cacert", ca, "-T", str(body), put_url], dict(os.environ))
    assert out.returncode == 0
    get_url = s3.generate_presigned_url("get_object", Params={"Bucket": "presigned", "Key": "up.bin"},
                                        ExpiresIn=600)
    got = run(["curl", "-sS", "--fail-with-body", "--cacert", ca, get_url], dict(os.environ)).stdout
    assert got == body.read_bytes()
    # A presigned URL with its signature changed is refused.
    tampered = get_url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
    refused = subprocess.run(["curl", "-sS", "--cacert", ca, "-o", "-", "-w", "%{http_code}", tampered],
                             capture_output=True, timeout=60)
    assert refused.stdout.endswith(b"403") and b"SignatureDoesNotMatch" in refused.stdout

"""Real S3 clients pointed at a :class:`~storg.testing.devcluster.ProcCluster`'s gateways.

For the tests (tests/process/test_s3_*.py) and benchmarks/s3_bench.py: an
access key made with the real ``storgctl s3 key create``, a boto3 client
with the cluster's CA, and the environment or configuration files that the
aws CLI, rclone and s3cmd read, so each tool runs unmodified, as a user
would run it, over HTTPS.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storg.testing.devcluster import ProcCluster

AWS_CLI = "/usr/bin/aws"
"""Debian's aws CLI (v2); the one on PATH may be another (a pip-installed v1)."""

REGION = "us-east-1"


@dataclass(frozen=True)
class S3Key:
    key_id: str
    secret: str
    role: str


def create_key(cluster: ProcCluster, name: str, role: str = "readwrite") -> S3Key:
    """A new access key, through ``storgctl --json s3 key create NAME --role ROLE``."""
    out = cluster.storgctl("--json", "s3", "key", "create", name, "--role", role)
    if out.returncode != 0:
        raise RuntimeError(f"storgctl s3 key create failed: {out.stderr.decode()}")
    data = json.loads(out.stdout)
    return S3Key(data["id"], data["secret"], role)


def endpoint(cluster: ProcCluster, nid: str = "n1") -> str:
    scheme = "https" if cluster.tls else "http"
    return f"{scheme}://{cluster.nodes[nid].s3_address}"


def ca_file(cluster: ProcCluster) -> str | bool:
    return str(cluster.certs / "ca.pem") if cluster.tls else False


def boto3_client(cluster: ProcCluster, key: S3Key, nid: str = "n1", endpoint_url: str | None = None,
                 **config: Any) -> Any:
    """boto3's S3 client as it comes (its default checksums and aws-chunked uploads), path-style;
    to node ``nid``'s S3 port, or to ``endpoint_url`` (benchmarks/null_s3.py, say)."""
    import boto3
    from botocore.config import Config

    # signature_version: botocore still presigns URLs with Signature V2 unless told (requests it signs V4).
    settings: dict[str, Any] = {"s3": {"addressing_style": "path"}, "signature_version": "s3v4",
                                "retries": {"max_attempts": 5, "mode": "standard"}}
    settings.update(config)
    return boto3.client("s3", endpoint_url=endpoint_url or endpoint(cluster, nid), aws_access_key_id=key.key_id,
                        aws_secret_access_key=key.secret, region_name=REGION, verify=ca_file(cluster),
                        config=Config(**settings))


def aws_env(cluster: ProcCluster, key: S3Key, home: Path) -> dict[str, str]:
    """The environment the aws CLI reads: the key, the region, the CA, path-style addressing."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "aws-config"
    config.write_text(f"[default]\nregion = {REGION}\ns3 =\n    addressing_style = path\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=key.key_id, AWS_SECRET_ACCESS_KEY=key.secret, AWS_DEFAULT_REGION=REGION,
               AWS_CONFIG_FILE=str(config), AWS_SHARED_CREDENTIALS_FILE=str(home / "none"),
               AWS_PAGER="", HOME=str(home))
    if cluster.tls:
        env["AWS_CA_BUNDLE"] = str(cluster.certs / "ca.pem")
    return env


def rclone_env(cluster: ProcCluster, key: S3Key, home: Path, nid: str = "n1") -> dict[str, str]:
    """rclone's remote ``storg:`` defined by environment variables (provider Other, path-style)."""
    home.mkdir(parents=True, exist_ok=True)
    # Without the AWS_* variables: rclone's AWS SDK would read AWS_CA_BUNDLE (and refuse it).
    env = dict({k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
               HOME=str(home), RCLONE_CONFIG=str(home / "rclone.conf"),
               RCLONE_CONFIG_STORG_TYPE="s3", RCLONE_CONFIG_STORG_PROVIDER="Other",
               RCLONE_CONFIG_STORG_ENDPOINT=endpoint(cluster, nid),
               RCLONE_CONFIG_STORG_ACCESS_KEY_ID=key.key_id,
               RCLONE_CONFIG_STORG_SECRET_ACCESS_KEY=key.secret,
               RCLONE_CONFIG_STORG_REGION=REGION, RCLONE_CONFIG_STORG_FORCE_PATH_STYLE="true")
    if cluster.tls:
        env["RCLONE_CA_CERT"] = str(cluster.certs / "ca.pem")
    return env


def s3cmd_config(cluster: ProcCluster, key: S3Key, home: Path, nid: str = "n1") -> Path:
    """An s3cmd configuration file for the gateway of ``nid`` (path-style: host_bucket = host_base)."""
    home.mkdir(parents=True, exist_ok=True)
    host = cluster.nodes[nid].s3_address
    path = home / "s3cfg"
    lines = [
        "[default]",
        f"access_key = {key.key_id}",
        f"secret_key = {key.secret}",
        f"host_base = {host}",
        f"host_bucket = {host}",
        f"bucket_location = {REGION}",
        "signature_v2 = False",
        f"use_https = {'True' if cluster.tls else 'False'}",
        "check_ssl_certificate = True",
        "check_ssl_hostname = True",
    ]
    if cluster.tls:
        lines.append(f"ca_certs_file = {cluster.certs / 'ca.pem'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def missing_tools() -> list[str]:
    """Which of the command-line clients the tests drive are not installed here."""
    found = {"aws": os.access(AWS_CLI, os.X_OK), "rclone": shutil.which("rclone") is not None,
             "s3cmd": shutil.which("s3cmd") is not None, "curl": shutil.which("curl") is not None}
    return sorted(name for name, ok in found.items() if not ok)

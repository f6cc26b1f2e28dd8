"""What ``twistd storg`` runs: options, config loading, the node service.

A broken config must stop the start with one clear line and a non-zero
exit status, before twistd daemonizes (so the line reaches the terminal).
"""

from __future__ import annotations

import sys

from twisted.python import usage

from storg.config import ConfigError, load_config


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, "the node's YAML configuration file (required)"],
    ]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")


def makeService(options: Options):
    try:
        config = load_config(options["config"])
    except ConfigError as exc:
        sys.stderr.write(f"storg: {exc}\n")
        sys.exit(2)
    from storg import tracing
    from storg.server.service import make_service
    tracing.set_name(config.node_id)
    tracing.trace_sockets()
    from storg.storage.errors import StorageError
    service = make_service(config)
    service.twistd_options = getattr(options, "parent", None)
    # Open the data_dir now, not in startService: twistd calls that after it
    # has daemonized, where a data_dir of another node or a corrupt log would
    # no longer reach the operator's terminal or the exit status.
    from storg.net.credentials import TLSConfigError
    try:
        service.load_credentials()
    except TLSConfigError as exc:
        sys.stderr.write(f"storg: {config.source}: tls: {exc}\n")
        sys.exit(2)
    from storg.storage.keys import KeyFileError
    try:
        service.open_storage()
    except KeyFileError as exc:
        sys.stderr.write(f"storg: {config.source}: encryption.key_file: {exc}\n")
        sys.exit(1)
    except StorageError as exc:
        sys.stderr.write(f"storg: {config.source}: data_dir: {exc}\n")
        sys.exit(1)
    if config.s3_listen is not None:
        # The S3 gateway sits above the client library, which sits above the server: it is
        # assembled here, the top layer, and starts with the node once its state machine exists.
        from storg.gateway.service import GatewayService
        GatewayService(service).setServiceParent(service)
    return service

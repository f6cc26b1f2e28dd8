"""twistd plugin: ``twistd -n storg --config etc/n1.yaml`` runs one storg node.

Kept tiny on purpose: twistd imports every plugin module when it lists
plugins, so this file imports nothing of storg until the service is built.
"""

from twisted.application.service import ServiceMaker

storg = ServiceMaker(
    "storg",
    "storg.daemon",
    "A storg node: Raft-replicated distributed file store",
    "storg",
)

"""The S3 gateway: an S3 API on twisted.web, served by every node on ``s3_listen``.

It speaks S3 to boto3, the aws CLI, rclone and s3cmd, and storg to the
cluster: each request is checked (AWS Signature V4, :mod:`storg.s3.sigv4`)
against the access keys the node's state machine holds, then carried out
through the ordinary client library (:class:`storg.client.api.StorgClient`)
with the node's own certificate, so the gateway adds no second store and no
second way to write: a bucket is a top-level folder, an object a file.

Modules: :mod:`~storg.gateway.request` (a twisted.web request whose body is
streamed, not buffered), :mod:`~storg.gateway.body` (a body's decoding,
checks and flow control), :mod:`~storg.gateway.routing` (path-style URL to
operation), :mod:`~storg.gateway.handler` (one exchange: authenticate, run
the operation, answer), :mod:`~storg.gateway.objects`,
:mod:`~storg.gateway.buckets` and :mod:`~storg.gateway.multipart` (the
operations), :mod:`~storg.gateway.service` (the listener, the client, the
expiry of abandoned uploads).
"""

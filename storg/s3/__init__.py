"""The S3 protocol, pure: bytes and header lists in, decisions and bytes out.

Like h11, nothing here opens a socket, reads a file or knows Twisted: the
gateway (``storg.gateway``) drives these modules and does the I/O.  Each
module has one job:

* :mod:`storg.s3.errors` -- ``S3Error`` and the AWS error document;
* :mod:`storg.s3.uri` -- AWS's URI encoding and query-string parsing;
* :mod:`storg.s3.sigv4` -- Signature Version 4 (header and presigned);
* :mod:`storg.s3.chunked` -- the ``aws-chunked`` body decoder;
* :mod:`storg.s3.checksums` -- CRC32, CRC32C, CRC64NVME, SHA1, SHA256;
* :mod:`storg.s3.names` -- bucket names and the key <-> path mapping;
* :mod:`storg.s3.listing` -- ListObjects V1/V2 paging over ``ls_page``;
* :mod:`storg.s3.xml` -- response documents and request-body parsers;
* :mod:`storg.s3.conditions` -- If-Match and friends (RFC 9110);
* :mod:`storg.s3.ranges` -- ``Range: bytes=...``.
"""

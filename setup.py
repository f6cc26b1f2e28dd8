"""Packaging for storg.

``twisted.plugins`` is listed as a package so that ``twisted/plugins/storg_plugin.py``
is installed where twistd's plugin scan finds it (that folder has no
``__init__.py`` on purpose: it is a namespace shared with Twisted).
"""

from setuptools import find_packages, setup

LINT = ["ruff~=0.17.6", "mypy~=2.4.1", "types-PyYAML>=6.0"]

setup(
    name="storg",
    version="0.3.1",
    description="A small, trustworthy distributed file store on Raft and Twisted",
    python_requires=">=3.11",
    # An explicit root package_dir makes setuptools' editable install a plain .pth
    # to this folder, so twistd's plugin scan finds twisted/plugins/ here after
    # `pip install -e .` too (its default import-hook mode hides it).
    package_dir={"": "."},
    packages=find_packages(include=["storg", "storg.*"]) + ["twisted.plugins"],
    # The status page's files ship in the package: the page works with no internet (no CDN).
    package_data={"twisted.plugins": ["storg_plugin.py"], "storg.server.http": ["static/*"]},
    # Twisted[tls] brings pyOpenSSL, which Twisted's TLS (CertificateOptions,
    # SSL4 endpoints) is built on, and idna; service_identity is what Twisted
    # asks for to verify a peer's certificate (it warns and degrades without it).
    # cryptography generates the keys and certificates (storgctl certs) and
    # reads the storg identity out of a peer's certificate (storg/net/tls.py), and
    # seals everything at rest with its AES-GCM (storg/storage/keys.py).
    # prometheus_client renders /metrics (the text format, histograms, one
    # registry per node): the reference implementation, pure Python, no deps.
    # awscrt is AWS's C runtime (what botocore uses for the same job): the S3
    # gateway's CRC64NVME and CRC32C checksums and the CRC combination of
    # multipart full-object checksums, in C.
    # TLS runs on the standard library's ssl (storg/net/tls_stream.py says why), so
    # pyOpenSSL is a benchmark's only: Twisted's own TLS is the baseline it measures.
    # Where pyOpenSSL is installed, importing twisted.internet.endpoints imports
    # Twisted's TLS, which needs service_identity: the test extras carry both.
    install_requires=["Twisted>=23.8", "PyYAML>=6.0", "google-crc32c>=1.5",
                      "cryptography>=41", "prometheus_client>=0.17", "awscrt>=0.38"],
    # The linters ride in the test extras too, so CI's one install has them
    # (scripts/lint.sh); pinned to a minor release, as new ones add checks.
    # selenium drives the system's headless Chromium (Debian's chromium and
    # chromium-driver, installed by .ci/run) for the status page's browser
    # test; it downloads no browser when /usr/bin/chromedriver is given.
    # boto3 (and its botocore) is the reference S3 client: the S3 protocol tests check
    # storg.s3 against botocore's own signers and encoders, and the gateway's tests and
    # benchmark drive it as it comes (default checksums, aws-chunked uploads).
    extras_require={
        "test": ["pytest>=7.4", "pytest-twisted>=1.14", "hypothesis>=6.80", "selenium>=4.10", "boto3>=1.36",
                 "pyOpenSSL>=23.2", "service_identity>=21.1", *LINT],
        "lint": LINT,
    },
    entry_points={"console_scripts": ["storgctl = storg.cli.main:main"]},
)

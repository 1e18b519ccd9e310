"""An S3-API server over HTTP for the tests of the registry on object storage: moto's server
mode (``moto.server.ThreadedMotoServer``) on a free local port.

:func:`running_s3_server` starts one and points the standard AWS settings at it, as a
deployment would at S3 or an S3-compatible store: ``AWS_ENDPOINT_URL`` (honoured by
botocore, hence s3fs), ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` and the region; they
are restored when it stops. :meth:`S3Server.new_bucket` makes a fresh bucket.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class S3Server:
    """A started S3-API server."""

    endpoint_url: str

    def new_bucket(self) -> str:
        """A new, empty bucket; its name."""
        import boto3

        bucket = f"registry-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=self.endpoint_url).create_bucket(Bucket=bucket)
        return bucket


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_s3_server() -> Iterator[S3Server]:
    """A started S3-API server, stopped on the way out."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint_url = f"http://127.0.0.1:{port}"
    saved = {key: os.environ.get(key) for key in [*_AWS_ENV, "AWS_ENDPOINT_URL"]}
    os.environ.update(_AWS_ENV, AWS_ENDPOINT_URL=endpoint_url)
    try:
        yield S3Server(endpoint_url)
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

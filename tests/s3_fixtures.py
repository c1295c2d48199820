"""A real S3-compatible server (SeaweedFS through deployments/s3/up.sh) for the storage tests.

One server per session on free ports with a private state directory and a test identity; a test may
stop and restart it. Each test gets its own prefix in the bucket, set through the LLC_S3_* settings
and the standard AWS variables, exactly as a user configures it.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

ROOT = Path(__file__).resolve().parents[1]
UP, DOWN = ROOT / "deployments" / "s3" / "up.sh", ROOT / "deployments" / "s3" / "down.sh"
# Distinctive, so the secret scan can look for it; it is a secret of this throwaway server only.
SECRET_KEY = "llc-test-s3-secret-0f3c9a7e5b"


@dataclass
class S3Server:
    state: Path
    port: int
    bucket: str = "llc-test"
    access_key: str = "llc-test-access"
    secret_key: str = SECRET_KEY

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script_env(self) -> dict[str, str]:
        return {
            **os.environ, "LLC_S3_STATE": str(self.state), "LLC_S3_PORT": str(self.port),
            "LLC_S3_BUCKET": self.bucket, "LLC_S3_ACCESS_KEY": self.access_key,
            "LLC_S3_SECRET_KEY": self.secret_key,
        }  # fmt: skip

    def start(self) -> None:
        done = subprocess.run([str(UP)], env=self.script_env(), capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            pytest.fail(f"deployments/s3/up.sh failed:\n{done.stdout}{done.stderr}")

    def stop(self) -> None:
        subprocess.run([str(DOWN)], env=self.script_env(), capture_output=True, check=True, timeout=60)

    def settings_env(self, prefix: str) -> dict[str, str]:
        """What a user sets to store results in this server under `prefix`."""
        return {
            "LLC_S3_BUCKET": self.bucket, "LLC_S3_ENDPOINT_URL": self.endpoint, "LLC_S3_PREFIX": prefix,
            "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }  # fmt: skip

    @staticmethod
    def closed_endpoint() -> str:
        """An endpoint where nobody listens."""
        return f"http://127.0.0.1:{free_port_block()}"

    def client(self) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
        )  # fmt: skip

    def objects(self, prefix: str) -> dict[str, bytes]:
        """Every object under `prefix` (keys relative to it) with its content, found through boto3."""
        s3, found = self.client(), {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix + "/"):
            for item in page.get("Contents", []):
                body = s3.get_object(Bucket=self.bucket, Key=item["Key"])["Body"].read()
                found[item["Key"].removeprefix(prefix + "/")] = body
        return found


def free_port_block() -> int:
    """A port P with P..P+4 and their gRPC twins P+10000..P+10004 all free (up.sh's layout)."""
    for _ in range(200):
        port = random.randrange(20000, 55000)
        if all(_free(p) for base in (port, port + 10000) for p in range(base, base + 5)):
            return port
    raise RuntimeError("no free block of ports for SeaweedFS")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3-state"), free_port_block())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_prefix(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh prefix in the test bucket, configured through the environment like a user would."""
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    for name, value in s3_server.settings_env(prefix).items():
        monkeypatch.setenv(name, value)
    return prefix

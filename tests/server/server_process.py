"""Running `phiquant serve` as a user does: a child process on a free loopback port."""

from __future__ import annotations

import json
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai

from tests.cli.run import cli_environment

START_TIMEOUT = 120


@dataclass
class RunningServer:
    process: subprocess.Popen[str]
    url: str
    model: str
    log: Path  # the server's stderr

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def client(self, api_key: str = "not-needed", timeout: float = 120) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=timeout)

    def async_client(self, api_key: str = "not-needed", timeout: float = 300) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=timeout)

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=10).json()

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def wait_idle(self, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            if health["slots"]["idle"] == health["slots"]["total"] or time.monotonic() > deadline:
                return health
            time.sleep(0.05)


def server_environment(cache: Path) -> dict[str, str]:
    env = cli_environment()
    env["PHIQUANT_CACHE"] = str(cache)
    env.pop("PHIQUANT_API_KEY", None)
    return env


@contextmanager
def running_server(model: Path, *flags: str, cache: Path, threads: int = 1) -> Iterator[RunningServer]:
    command = [sys.executable, "-m", "phiquant", "serve", str(model), "--port", "0", "--json"]
    command += ["--threads", str(threads), *flags]
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / f"server-{time.monotonic_ns()}.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=server_environment(cache)
        )
    try:
        announcement = _first_line(process, log)
        yield RunningServer(process, announcement["url"], announcement["model"], log)
        assert process.poll() is None, "the server died during the test:\n" + log.read_text()
    finally:
        stop(process)


def stop(process: subprocess.Popen[str]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def _first_line(process: subprocess.Popen[str], log: Path) -> dict:
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    if not selector.select(START_TIMEOUT):
        raise AssertionError("the server did not start in time:\n" + log.read_text())
    line = process.stdout.readline()
    if not line:
        process.wait(10)
        raise AssertionError(f"the server exited ({process.returncode}):\n" + log.read_text())
    return json.loads(line)

"""docs/endpoints.md against the worker: its header table names what a real call carries, and its Python and
Node.js ``verify`` functions, taken from the page as written, accept real signed calls (a ``whsec_`` secret
and a plain one) and refuse a changed body, another secret, an old timestamp and an unsigned call."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from tests.integration.runner_harness import Harness

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "endpoints.md"
WHSEC = "whsec_" + base64.b64encode(b"endpoint-guide-test-key-32-bytes").decode()
PLAIN = "a-plain-secret-of-enough-length"

PYTHON_DRIVER = """
import base64, json, sys
case = json.load(sys.stdin)
print(json.dumps(verify(case["secret"], case["headers"], base64.b64decode(case["body"]))))
"""
NODE_DRIVER = """
let input = "";
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const c = JSON.parse(input);
  process.stdout.write(JSON.stringify(module.exports.verify(c.secret, c.headers, Buffer.from(c.body, "base64"))));
});
"""


def snippet(language: str, marker: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), flags=re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


def run_python(case: dict[str, Any], tmp_path: Path) -> bool:
    script = tmp_path / "verify.py"
    script.write_text(snippet("python", "def verify(") + PYTHON_DRIVER)
    result = subprocess.run([sys.executable, str(script)], input=json.dumps(case), capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def run_node(case: dict[str, Any], tmp_path: Path) -> bool:
    node = shutil.which("node")
    assert node, "Node.js is required to check the guide's snippet (.ci/run installs it)"
    script = tmp_path / "verify.cjs"
    script.write_text(snippet("js", "function verify(") + NODE_DRIVER)
    result = subprocess.run([node, str(script)], input=json.dumps(case), capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def documented_headers() -> list[str]:
    section = GUIDE.read_text().split("## What arrives", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)


Call = tuple[dict[str, str], bytes, str]  # headers (lower-case names), raw body, run id


def real_call(harness: Harness, httpserver: HTTPServer, path: str, secret: str | None) -> Call:
    httpserver.expect_request(path).respond_with_data("{}", content_type="application/json")
    job = harness.job(endpoint_url=httpserver.url_for(path), **({"webhook_secret": secret} if secret else {}))
    run = harness.run(job, payload='{"user_id": 42, "note": "caf\\u00e9"}')
    harness.handle(run.id)
    request = next(r for r, _ in httpserver.log if r.path == path)
    return {name.lower(): value for name, value in request.headers.items()}, request.get_data(), run.id


@pytest.mark.parametrize("runner", [run_python, run_node], ids=["python", "node"])
def test_the_guides_verify_functions_check_real_calls(harness: Harness, httpserver: HTTPServer, tmp_path: Path,
                                                      runner: Any) -> None:
    for path, secret in (("/whsec", WHSEC), ("/plain", PLAIN)):
        headers, body, _ = real_call(harness, httpserver, path, secret)
        case = {"secret": secret, "headers": headers, "body": base64.b64encode(body).decode()}
        assert runner(case, tmp_path) is True, (path, headers)
        assert runner({**case, "body": base64.b64encode(body + b" ").decode()}, tmp_path) is False
        assert runner({**case, "secret": PLAIN if secret == WHSEC else WHSEC}, tmp_path) is False
        old = {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) - 3600)}
        assert runner({**case, "headers": old}, tmp_path) is False
        rotated = {**headers, "webhook-signature": "v1,bm90IHRoaXMgb25l " + headers["webhook-signature"]}
        assert runner({**case, "headers": rotated}, tmp_path) is True  # any listed signature may match
    headers, body, _ = real_call(harness, httpserver, "/unsigned", None)
    unsigned = {"secret": WHSEC, "headers": headers, "body": base64.b64encode(body).decode()}
    assert runner(unsigned, tmp_path) is False


def test_the_documented_headers_arrive(harness: Harness, httpserver: HTTPServer) -> None:
    headers, body, run_id = real_call(harness, httpserver, "/headers", WHSEC)
    names = documented_headers()
    assert {"Idempotency-Key", "webhook-signature"} <= set(names)
    assert [name for name in names if name.lower() not in headers] == []
    assert headers["idempotency-key"] == headers["x-sluice-run-id"] == run_id
    assert headers["webhook-id"] == f"{run_id}:1" and headers["x-sluice-attempt"] == "1"
    assert json.loads(body) == {"user_id": 42, "note": "café"}

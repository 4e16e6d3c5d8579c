"""The OpenAPI contract (openapi/remap.yaml) and the server held to it.

- The spec is valid OpenAPI 3.1 (openapi-spec-validator) and lists exactly the
  endpoints and problem codes of docs/api-v1.md.
- schemathesis fuzzes a live remapd over its TCP listener, with the bearer
  token, every check on and every phase (examples, coverage, fuzzing,
  stateful): zero failures and no 5xx besides the documented 507.

Both need the tools of Tests/Contract/requirements.txt in the venv
.build/venv (`make` installs it); without the venv the tests are skipped, and
say so.

Knobs (environment): REMAP_FUZZ_SEED (default 1; "random" for a new one),
REMAP_FUZZ_EXAMPLES (default 25, per operation and phase),
REMAP_FUZZ_MAX_TIME (seconds, default 120), REMAP_FUZZ_WORKERS (default 1).
"""

import collections
import json
import os
import re
import resource
import subprocess
import textwrap
from pathlib import Path

import pytest

from harness import REPO_ROOT, clean_env, free_port

SPEC = REPO_ROOT / "openapi" / "remap.yaml"
DOC = REPO_ROOT / "docs" / "api-v1.md"
VENV = REPO_ROOT / ".build" / "venv"
VENV_PYTHON = VENV / "bin" / "python"
SCHEMATHESIS = VENV / "bin" / "st"
REQUIREMENTS = REPO_ROOT / "Tests" / "Contract" / "requirements.txt"

FUZZ_SEED = os.environ.get("REMAP_FUZZ_SEED", "1")
FUZZ_EXAMPLES = int(os.environ.get("REMAP_FUZZ_EXAMPLES", "25"))
# schemathesis repeats fuzzing and stateful runs until this budget is spent.
FUZZ_MAX_TIME = int(os.environ.get("REMAP_FUZZ_MAX_TIME", "120"))
# One worker: CPython 3.11.2's ast.parse is not thread-safe ("AST constructor
# recursion depth mismatch", fixed in 3.11.5) and hypothesis calls it.
FUZZ_WORKERS = os.environ.get("REMAP_FUZZ_WORKERS", "1")
# Address space allowed to the fuzzed daemon (it uses well under 1 GiB).
DAEMON_MEMORY_LIMIT = 4 << 30


def require_venv(*tools):
    """Skip (with the reason) when the contract tools are not installed."""
    for tool in (VENV_PYTHON, *tools):
        if not tool.exists():
            pytest.skip(f"{tool} is missing: create the venv with "
                        f"`/usr/bin/python3 -m venv {VENV.relative_to(REPO_ROOT)} && "
                        f"{VENV.relative_to(REPO_ROOT)}/bin/pip install -r "
                        f"{REQUIREMENTS.relative_to(REPO_ROOT)}` (make does it)")


def venv_run(args, timeout=120, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=clean_env(), cwd=REPO_ROOT, **kw)


def load_spec():
    """The spec as data, parsed by the venv's PyYAML (the system Python may lack it)."""
    p = venv_run([VENV_PYTHON, "-c",
                  "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
                  SPEC])
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


# ------------------------------------------------------------------ the document

def test_spec_is_valid_openapi_3_1():
    require_venv()
    p = venv_run([VENV_PYTHON, "-m", "openapi_spec_validator", SPEC])
    assert p.returncode == 0, f"openapi-spec-validator:\n{p.stdout}\n{p.stderr}"
    spec = load_spec()
    assert spec["openapi"] == "3.1.0"


HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def operations(spec):
    for path, item in spec["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield path, method, item[method]


def test_spec_matches_the_api_doc():
    """Same endpoints and same problem codes as docs/api-v1.md."""
    require_venv()
    spec = load_spec()
    doc = DOC.read_text()

    documented = set()
    for m in re.finditer(r"^\| (GET|POST|PUT|PATCH|DELETE) (/\S+?)(\?\S*)? \|", doc, re.M):
        documented.add((m.group(1).lower(), m.group(2)))
    assert documented, "no endpoint table found in docs/api-v1.md"
    in_spec = {(method, path) for path, method, _ in operations(spec)}
    assert in_spec == documented, (
        f"only in the spec: {sorted(in_spec - documented)}; "
        f"only in the doc: {sorted(documented - in_spec)}")

    doc_codes = {}
    for m in re.finditer(r"^\| ([a-z-]+) \| (\d{3}) \|", doc, re.M):
        doc_codes[m.group(1)] = int(m.group(2))
    assert doc_codes, "no error code table found in docs/api-v1.md"
    problem = spec["components"]["schemas"]["Problem"]
    assert set(problem["properties"]["code"]["enum"]) == set(doc_codes)

    # Each shared error response pins its status and the codes it may carry.
    for name, resp in spec["components"]["responses"].items():
        schema = resp["content"]["application/problem+json"]["schema"]
        pinned = schema["allOf"][1]["properties"]
        codes = [pinned["code"]["const"]] if "const" in pinned["code"] else pinned["code"]["enum"]
        for code in codes:
            assert doc_codes[code] == pinned["status"]["const"], (name, code)


def test_spec_operations_are_complete():
    """operationIds, auth and the errors every operation can meet."""
    require_venv()
    spec = load_spec()
    ids = []
    for path, method, op in operations(spec):
        where = f"{method.upper()} {path}"
        ids.append(op.get("operationId"))
        assert op.get("operationId"), f"{where} has no operationId"
        responses = op["responses"]
        for status in ("401", "405", "500"):
            assert status in responses, f"{where} lacks {status}"
        if "requestBody" in op:
            for status in ("400", "413", "415"):
                assert status in responses, f"{where} has a body but lacks {status}"
            body_schema = op["requestBody"]["content"]["application/json"]["schema"]
            assert "$ref" in body_schema, where
        if "{name}" in path:
            assert "404" in responses, f"{where} names a resource but lacks 404"
        for status, resp in responses.items():
            if int(status) >= 400:
                assert "$ref" in resp and resp["$ref"].startswith("#/components/responses/"), \
                    f"{where} {status} is not a shared problem response"
    assert len(ids) == len(set(ids)), f"duplicate operationIds: {ids}"
    # Request and response objects refuse unknown fields.
    schemas = spec["components"]["schemas"]
    for name, schema in schemas.items():
        if schema.get("type") == "object" and name != "Labels":
            assert schema.get("additionalProperties") is False, f"{name} allows unknown fields"
    assert spec["components"]["responses"]["MethodNotAllowed"]["headers"]["Allow"]


# ------------------------------------------------------------------ the server

# Loaded by schemathesis (SCHEMATHESIS_HOOKS) in its own process.
HOOKS = textwrap.dedent(r'''
    """Keeps what fuzzing creates small and inside the daemon's supplier dir.

    File suppliers with a well-formed path (absolute, no `..` component) are
    moved into REMAP_FUZZ_SUPPLIER_DIR under a fresh name that keeps the
    fuzzed base name; their sizes from 4 MiB up to 1 PiB become 4 MiB, and
    grown suppliers stop at 16 MiB (bigger sizes stay: they must be refused
    at once, 507 or 400). Malformed paths and sizes are left alone, so every
    negative case stays negative. Positive listVolumes cases only send
    pageTokens the server issued.
    """
    import itertools
    import os
    import re

    import schemathesis

    SUPPLIER_DIR = os.environ["REMAP_FUZZ_SUPPLIER_DIR"]
    PREFIX = f"{SUPPLIER_DIR}/fz{os.getpid()}-"
    CAP = 4 << 20  # the largest chunk size: one chunk at least
    GROW_CAP = 16 << 20
    HUGE = 1 << 50
    _serial = itertools.count()
    _issued_tokens = set()


    def _well_formed(path):
        return isinstance(path, str) and path.startswith("/") and not re.search(r"(^|/)\.\.(/|$)", path)


    def _tame(spec):
        if not isinstance(spec, dict) or spec.get("kind") != "file":
            return
        path = spec.get("path")
        # A case can be sent more than once (checks replay it): keep its path.
        if _well_formed(path) and not path.startswith(PREFIX):
            base = path.rstrip("/").rsplit("/", 1)[-1][:40]
            spec["path"] = f"{PREFIX}{next(_serial)}-{base}"
        _cap_size(spec, CAP)


    def _cap_size(body, cap):
        size = body.get("sizeBytes")
        # JSON Schema integers include integral floats (8589934592.0).
        if isinstance(size, (int, float)) and not isinstance(size, bool) and cap < size < HUGE:
            body["sizeBytes"] = cap


    def _is_positive(case):
        meta = case.meta
        return meta is not None and meta.generation.mode.is_positive


    @schemathesis.hook
    def before_call(context, case, kwargs):
        path, method = case.operation.path, case.method.upper()
        if method == "POST" and path == "/v1/pools" and isinstance(case.body, dict):
            suppliers = case.body.get("suppliers")
            if isinstance(suppliers, list):
                for spec in suppliers:
                    _tame(spec)
        elif method == "POST" and path == "/v1/pools/{name}/suppliers":
            _tame(case.body)
        elif method == "PATCH" and path == "/v1/pools/{name}/suppliers/{id}" and isinstance(case.body, dict):
            _cap_size(case.body, GROW_CAP)
        elif method == "GET" and path == "/v1/snapshots/{id}/content":
            # A snapshot of a fuzzed volume can be 1 PiB of zeros: read one
            # chunk of it at most (schemathesis keeps whole bodies in memory).
            if case.headers is None:
                case.headers = {}
            case.headers["Range"] = "bytes=0-65535"
        elif method == "GET" and path == "/v1/volumes" and isinstance(case.query, dict):
            token = case.query.get("pageToken")
            if token is not None and token not in _issued_tokens and _is_positive(case):
                del case.query["pageToken"]


    @schemathesis.hook
    def after_call(context, case, response):
        if case.method.upper() == "GET" and case.operation.path == "/v1/volumes" \
                and response.status_code == 200:
            try:
                token = response.json().get("nextPageToken")
            except Exception:
                return
            if isinstance(token, str):
                _issued_tokens.add(token)
''')

# Some well-formed requests are still refused with 400 for what a schema
# cannot say: a block device path that is no block device, a supplier smaller
# than the pool's chunk or than it was, a range outside the volume, renewing a
# reservation without TTL, binding a range reservation to an export, deleting
# a volume's own export. And 507 insufficient-space is a documented answer.
CONFIG = textwrap.dedent('''
    # Links inferred by dependency analysis pair a new volume with its
    # revert (404: no snapshot yet) and a fuzzed snapshot with its content
    # (up to 1 PiB); the spec's own links and Location headers stay.
    [phases.stateful.inference]
    algorithms = ["location-headers"]

    [[operations]]
    include-operation-id = ["createPool", "addSupplier", "growSupplier", "createReservation"]
    checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "409", "507"]
    checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "507"]

    [[operations]]
    include-operation-id = ["renewReservation", "createExport", "deleteExport"]
    checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "409"]

    [[operations]]
    include-operation-id = ["patchVolume", "createSnapshot", "revertVolume"]
    checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "507"]

    [[operations]]
    include-operation-id = ["createVolume"]
    checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "409", "507"]
    checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "507"]

    [[operations]]
    include-operation-id = ["getSnapshotContent"]
    checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "404", "409", "416"]
''')


@pytest.mark.timeout(FUZZ_MAX_TIME + 180)
def test_schemathesis_against_remapd(make_remapd, tmp_path):
    require_venv(SCHEMATHESIS)
    port = free_port()
    d = make_remapd(pool_size="64M", extra_args=["--api-listen", f"127.0.0.1:{port}"])
    # Fuzzing asks for huge volumes; a daemon whose memory grew with them
    # must fail alone (and be reported), not push the machine into the OOM killer.
    resource.prlimit(d.proc.pid, resource.RLIMIT_AS, (DAEMON_MEMORY_LIMIT, DAEMON_MEMORY_LIMIT))
    token_file = d.state_dir / "api.token"
    assert token_file.exists(), f"remapd made no {token_file} (TCP bearer auth)"
    token = token_file.read_text().strip()
    assert token, f"{token_file} is empty"
    supplier_dir = d.state_dir / "pools"
    supplier_dir.mkdir(exist_ok=True)

    hooks = tmp_path / "remap_fuzz_hooks.py"
    hooks.write_text(HOOKS)
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    report_dir = tmp_path / "schemathesis-report"

    seed = [] if FUZZ_SEED == "random" else ["--seed", FUZZ_SEED]
    cmd = [SCHEMATHESIS, "--config-file", config, "--no-color",
           "run", SPEC,
           "--url", f"http://127.0.0.1:{port}",
           "-H", f"Authorization: Bearer {token}",
           "--checks", "all",
           "--phases", "examples,coverage,fuzzing,stateful",
           "--max-examples", str(FUZZ_EXAMPLES),
           "--max-time", str(FUZZ_MAX_TIME),
           "--workers", FUZZ_WORKERS,
           "--request-timeout", "20",
           "--generation-database", "none",
           "--suppress-health-check", "all",
           "--report", "ndjson,junit",
           "--report-dir", report_dir,
           "--output-sanitize", "false",
           *seed]
    env = clean_env()
    env.update(SCHEMATHESIS_HOOKS="remap_fuzz_hooks",
               PYTHONPATH=str(tmp_path),
               REMAP_FUZZ_SUPPLIER_DIR=str(supplier_dir),
               COLUMNS="160",
               HYPOTHESIS_STORAGE_DIRECTORY=str(tmp_path / "hypothesis"))
    try:
        p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                           timeout=FUZZ_MAX_TIME + 120, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"schemathesis did not finish in {FUZZ_MAX_TIME + 120}s\n{e.stdout or ''}")
    output = p.stdout + p.stderr
    (tmp_path / "schemathesis.out").write_text(output)

    assert d.running, f"remapd died during fuzzing\n{output[-20000:]}"
    assert p.returncode == 0, (
        f"schemathesis found problems (exit {p.returncode}); report in {report_dir}\n"
        f"{output[-25000:]}")
    statuses, server_errors = answers(report_dir)
    assert not server_errors, f"5xx answers: {sorted(server_errors)}"
    # It really ran: many requests, and both sides of the API answered.
    assert sum(statuses.values()) >= 200, f"only {sum(statuses.values())} requests: {statuses}"
    for status in (200, 201, 204, 400, 401, 404, 405):
        assert statuses.get(status), f"no {status} answer seen: {statuses}"
    # The daemon is still whole: it answers, and every pool's books balance.
    for pool in d.get_ok("/v1/pools")["pools"]:
        assert pool["capacityBytes"] == (pool["allocatedBytes"] + pool.get("reservedBytes", 0)
                                         + pool["freeBytes"]), pool
    # The event log is tens of MB; keep it only when something failed.
    for f in report_dir.glob("*.ndjson"):
        f.unlink()


def answers(report_dir):
    """Counter of the statuses schemathesis got, and the (status, method, url)
    of every 5xx other than the documented 507."""
    statuses = collections.Counter()
    server_errors = set()
    for f in Path(report_dir).glob("*.ndjson"):
        with open(f, errors="replace") as lines:
            for line in lines:
                for status, method, url in _responses(json.loads(line)):
                    statuses[status] += 1
                    if status >= 500 and status != 507:
                        server_errors.add((status, method, url))
    return statuses, server_errors


def _responses(event):
    """Walk an ndjson event for (status, method, url) of recorded interactions."""
    stack = [event]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            resp, req = item.get("response"), item.get("request")
            if isinstance(resp, dict) and isinstance(resp.get("status_code"), int):
                req = req if isinstance(req, dict) else {}
                yield resp["status_code"], req.get("method"), req.get("uri") or req.get("url")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)

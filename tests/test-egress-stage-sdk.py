#!/usr/bin/env python3
"""test-egress-stage-sdk.py - the egress STAGE's real socket bytes read by the
official OpenAI Python SDK.

Runs test-egress-stage with T_EGR_DUMP=<dir>: every HTTP response its fake
clients read off the TCP sockets (streams, bodies, errors, a stop string,
keep-alive, 24 concurrent streams, a stream that survived an egress
restart) is also written raw to <dir>. Each one is parsed here: status
line and headers, chunked framing (minimal hex sizes, one SSE event per
chunk), then the SDK - openai.Stream with ChatCompletionChunk / Completion
for streams, ChatCompletion / Completion.model_validate_json for bodies -
with no field the SDK does not know (model_extra empty, recursively).
Error responses must have exactly the OpenAI error shape. Skips (77)
without the openai package, the built test or the model.
"""
import glob
import json
import os
import subprocess
import sys
import tempfile

try:
    import openai
    from openai.types import Completion
    from openai.types.chat import ChatCompletion, ChatCompletionChunk
    from openai._streaming import Stream
    try:
        import httpx2 as httpx   # the SDK's own HTTP package in newer releases
    except ImportError:
        import httpx
    from pydantic import BaseModel
except ImportError as e:
    print(f"skip: openai SDK not importable ({e})")
    sys.exit(77)

failures = 0


def check(cond, msg):
    global failures
    if not cond:
        print("FAIL:", msg)
        failures += 1


def no_extra(m, path="$"):
    if isinstance(m, BaseModel):
        extra = getattr(m, "model_extra", None) or {}
        check(not extra, f"{path}: fields unknown to the SDK: {sorted(extra)}")
        for k in type(m).model_fields:
            no_extra(getattr(m, k), f"{path}.{k}")
    elif isinstance(m, list):
        for i, v in enumerate(m):
            no_extra(v, f"{path}[{i}]")


def split_head(raw, name):
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    status = int(lines[0].split(" ")[1])
    check(lines[0].startswith("HTTP/1.1 "), f"{name}: status line {lines[0]!r}")
    hdr = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(": ")
        check(k.lower() not in hdr, f"{name}: header {k} twice")
        hdr[k.lower()] = v
    return status, hdr, rest


def dechunk(rest, name):
    body, i = b"", 0
    while True:
        j = rest.index(b"\r\n", i)
        size = int(rest[i:j], 16)
        check(rest[i:j] == format(size, "x").encode(), f"{name}: chunk size not minimal hex")
        i = j + 2
        if size == 0:
            check(rest[i:] == b"\r\n", f"{name}: bytes after the last chunk")
            return body
        check(rest[i + size:i + size + 2] == b"\r\n", f"{name}: chunk not CRLF-ended")
        chunk = rest[i:i + size]
        check(chunk.startswith(b"data: ") and chunk.endswith(b"\n\n"),
              f"{name}: one SSE event per chunk")
        body += chunk
        i += size + 2


def sdk_stream(body, cls):
    client = openai.OpenAI(api_key="test", base_url="http://127.0.0.1:1/v1")
    resp = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body,
                          request=httpx.Request("POST", "http://127.0.0.1:1/v1/x"))
    return list(Stream(cast_to=cls, response=resp, client=client))


def stream(name, hdr, rest):
    check(hdr.get("transfer-encoding") == "chunked", f"{name}: chunked")
    body = dechunk(rest, name)
    check(body.endswith(b"data: [DONE]\n\n"), f"{name}: [DONE] last")
    chat = b'"chat.completion.chunk"' in body
    cls = ChatCompletionChunk if chat else Completion
    chunks = sdk_stream(body, cls)
    finish, ids = None, set()
    for i, c in enumerate(chunks):
        check(isinstance(c, cls), f"{name}: chunk {i} is {type(c).__name__}")
        no_extra(c, f"{name}[{i}]")
        ids.add(c.id)
        check(c.model == "test-model" and c.system_fingerprint == "fp_test", f"{name}: model/fp")
        for ch in c.choices:
            if ch.finish_reason is not None:
                check(finish is None, f"{name}: finish_reason twice")
                finish = ch.finish_reason
    check(len(ids) == 1, f"{name}: one id per stream")
    check(finish in ("stop", "length"), f"{name}: finish {finish!r}")
    return len(chunks)


def body(name, hdr, rest):
    check(int(hdr.get("content-length", -1)) == len(rest), f"{name}: content-length")
    chat = b'"chat.completion"' in rest
    m = (ChatCompletion if chat else Completion).model_validate_json(rest)
    no_extra(m, name)
    check(m.usage is not None and m.usage.prompt_tokens == 5, f"{name}: usage")
    check(m.choices[0].finish_reason in ("stop", "length"), f"{name}: finish")


def error(name, status, hdr, rest):
    check(int(hdr.get("content-length", -1)) == len(rest), f"{name}: content-length")
    e = json.loads(rest)
    check(list(e) == ["error"] and list(e["error"]) == ["message", "type", "param", "code"],
          f"{name}: error shape {e}")
    check(isinstance(e["error"]["message"], str) and e["error"]["message"], f"{name}: message")
    if status == 503:
        check(hdr.get("retry-after", "").isdigit(), f"{name}: Retry-After")
    # the SDK turns it into its status error class
    client = openai.OpenAI(api_key="test", base_url="http://127.0.0.1:1/v1")
    resp = httpx.Response(status, headers={"content-type": "application/json"}, content=rest,
                          request=httpx.Request("POST", "http://127.0.0.1:1/v1/x"))
    err = client._make_status_error_from_response(resp)
    check(isinstance(err, openai.APIStatusError) and err.status_code == status,
          f"{name}: SDK error {type(err).__name__}")


def main():
    exe = os.path.join(os.environ.get("FAVO_BUILD", "build"), "tests", "test-egress-stage")
    if not os.path.exists(exe):
        print(f"skip: {exe} not built")
        return 77
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, T_EGR_DUMP=d)
        p = subprocess.run([exe], env=env, capture_output=True, timeout=300)
        if p.returncode == 77:
            print("skip: test-egress-stage skipped (no model)")
            return 77
        check(p.returncode == 0, f"test-egress-stage exit {p.returncode}: {p.stderr[-500:]!r}")
        files = sorted(glob.glob(os.path.join(d, "*.http")))
        check(len(files) >= 30, f"{len(files)} responses dumped")
        kinds = {"stream": 0, "body": 0, "error": 0}
        for f in files:
            name = os.path.basename(f)
            raw = open(f, "rb").read()
            status, hdr, rest = split_head(raw, name)
            if status != 200:
                error(name, status, hdr, rest)
                kinds["error"] += 1
            elif hdr.get("content-type", "").startswith("text/event-stream"):
                stream(name, hdr, rest)
                kinds["stream"] += 1
            else:
                body(name, hdr, rest)
                kinds["body"] += 1
        check(all(kinds.values()), f"every kind seen: {kinds}")
    print(f"openai {openai.__version__}: {kinds}: {'FAIL' if failures else 'ok'}")
    return 1 if failures else 0


sys.exit(main())

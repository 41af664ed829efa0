#!/usr/bin/env python3
"""test-egress-sdk.py - egress responses read by the official OpenAI Python SDK.

test-egress-fmt --emit <case> writes one raw HTTP response (egress/egr.h).
This test parses the head and the chunked framing itself, then hands the
body to the SDK: streams through openai.Stream (its SSE decoder and
ChatCompletionChunk / Completion models), bodies through
ChatCompletion / Completion.model_validate_json. Every object must carry
no field the SDK does not know (model_extra empty, recursively), so a
misspelled key fails. Skips (77) when the openai package is missing.
"""
import json
import os
import subprocess
import sys

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
    """Every key we sent is a field the SDK model declares."""
    if isinstance(m, BaseModel):
        extra = getattr(m, "model_extra", None) or {}
        check(not extra, f"{path}: fields unknown to the SDK: {sorted(extra)}")
        for k in type(m).model_fields:
            no_extra(getattr(m, k), f"{path}.{k}")
    elif isinstance(m, list):
        for i, v in enumerate(m):
            no_extra(v, f"{path}[{i}]")


def emit(case):
    exe = os.path.join(os.environ.get("FAVO_BUILD", "build"), "tests", "test-egress-fmt")
    if not os.path.exists(exe):
        print(f"skip: {exe} not built")
        sys.exit(77)
    p = subprocess.run([exe, "--emit", case], capture_output=True)
    if p.returncode == 77:
        return None
    check(p.returncode == 0, f"{case}: emit exit {p.returncode}: {p.stderr[-300:]!r}")
    return p.stdout


def sdk_stream(body, cls):
    client = openai.OpenAI(api_key="test", base_url="http://127.0.0.1:1/v1")
    resp = httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body,
                          request=httpx.Request("POST", "http://127.0.0.1:1/v1/x"))
    return list(Stream(cast_to=cls, response=resp, client=client))


def split_head(raw):
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    check(lines[0] == "HTTP/1.1 200 OK", f"status line {lines[0]!r}")
    hdr = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(": ")
        check(k.lower() not in hdr, f"header {k} twice")
        hdr[k.lower()] = v
    return hdr, rest


def dechunk(rest):
    body, i = b"", 0
    while True:
        j = rest.index(b"\r\n", i)
        size = int(rest[i:j], 16)
        check(rest[i:j] == format(size, "x").encode(), "chunk size not minimal lowercase hex")
        i = j + 2
        if size == 0:
            check(rest[i:] == b"\r\n", "bytes after the last chunk")
            return body
        check(rest[i + size:i + size + 2] == b"\r\n", "chunk not CRLF-ended")
        chunk = rest[i:i + size]
        check(chunk.startswith(b"data: ") and chunk.endswith(b"\n\n"), "one SSE event per chunk")
        body += chunk
        i += size + 2


def stream_case(case, chat, want_text, want_finish, want_usage):
    hdr, rest = split_head(emit(case))
    check(hdr.get("content-type", "").startswith("text/event-stream"), f"{case}: content-type")
    check(hdr.get("transfer-encoding") == "chunked", f"{case}: chunked")
    check(hdr.get("cache-control") == "no-cache", f"{case}: cache-control")
    check(hdr.get("x-request-id") == "req-1", f"{case}: request id")
    body = dechunk(rest)
    check(body.endswith(b"data: [DONE]\n\n"), f"{case}: [DONE] last")
    cls = ChatCompletionChunk if chat else Completion
    chunks = sdk_stream(body, cls)
    check(len(chunks) >= 3, f"{case}: {len(chunks)} chunks")
    text, finish, usage = "", None, None
    for i, c in enumerate(chunks):
        check(isinstance(c, cls), f"{case}: chunk {i} is {type(c).__name__}")
        no_extra(c, f"{case}[{i}]")
        check(c.id == ("chatcmpl-abc" if chat else "cmpl-abc"), f"{case}: id")
        check(c.object == ("chat.completion.chunk" if chat else "text_completion"), f"{case}: object")
        check(c.system_fingerprint == "fp_favo" and c.created == 1700000000, f"{case}: fp/created")
        if c.usage is not None:
            check(c.choices == [] and i == len(chunks) - 1, f"{case}: usage chunk last, no choices")
            usage = c.usage
        for ch in c.choices:
            check(ch.index == 0 and ch.logprobs is None, f"{case}: index/logprobs")
            if chat:
                if i == 0:
                    check(ch.delta.role == "assistant" and ch.delta.content == "", f"{case}: role chunk")
                text += ch.delta.content or ""
            else:
                text += ch.text
            if ch.finish_reason is not None:
                check(finish is None, f"{case}: finish_reason twice")
                finish = ch.finish_reason
    check(text == want_text, f"{case}: text {text!r} != {want_text!r}")
    check(finish == want_finish, f"{case}: finish {finish!r}")
    check(usage is not None and usage.completion_tokens == want_usage and usage.prompt_tokens == 5
          and usage.total_tokens == 5 + want_usage, f"{case}: usage {usage}")


def body_case(case, chat, want_text, want_finish, want_usage):
    hdr, body = split_head(emit(case))
    check(hdr.get("content-type") == "application/json", f"{case}: content-type")
    check(int(hdr.get("content-length", -1)) == len(body), f"{case}: content-length")
    json.loads(body)
    m = (ChatCompletion if chat else Completion).model_validate_json(body)
    no_extra(m, case)
    check(m.object == ("chat.completion" if chat else "text_completion"), f"{case}: object")
    ch = m.choices[0]
    got = ch.message.content if chat else ch.text
    if chat:
        check(ch.message.role == "assistant", f"{case}: role")
    check(got == want_text, f"{case}: text {got!r}")
    check(ch.finish_reason == want_finish and ch.logprobs is None, f"{case}: finish/logprobs")
    check(m.usage.completion_tokens == want_usage and m.usage.total_tokens == 5 + want_usage,
          f"{case}: usage")


STOPPED = 'Hello, "wörld" ✓\n\x01'   # tokens: "Hel" "lo, ..\x01" " E" "ND"; stop "END"
stream_case("chat-stream-stop", True, STOPPED + " ", "stop", 4)
stream_case("cmpl-stream-stop", False, STOPPED + " ", "stop", 4)
stream_case("chat-stream-len", True, STOPPED + " END", "length", 4)
stream_case("cmpl-stream-len", False, STOPPED + " END", "length", 4)
body_case("chat-body-stop", True, STOPPED + " ", "stop", 4)
body_case("cmpl-body-len", False, STOPPED + " END", "length", 4)

# logprobs through real token ids (skipped without $FAVO_MODELS): the
# text is "Hello wörld ✓ \"q\"", token i has logprob -0.25 i (-9999 for
# token 3, which was -inf), two alternatives each.
LP_TEXT = 'Hello wörld ✓ "q"'
raw = emit("chat-stream-lp")
if raw is not None:
    _, rest = split_head(raw)
    chunks = sdk_stream(dechunk(rest), ChatCompletionChunk)
    ents = []
    for i, c in enumerate(chunks):
        no_extra(c, f"chat-stream-lp[{i}]")
        for ch in c.choices:
            if ch.logprobs is not None:
                ents += ch.logprobs.content
    check(b"".join(bytes(e.bytes) for e in ents) == LP_TEXT.encode(), "chat-stream-lp: bytes")
    check([e.logprob for e in ents][:5] == [0, -0.25, -0.5, -9999.0, -1.0], "chat-stream-lp: logprobs")
    check(all(len(e.top_logprobs) == 2 for e in ents), "chat-stream-lp: 2 alternatives")
    _, body = split_head(emit("chat-body-lp"))
    m = ChatCompletion.model_validate_json(body)
    no_extra(m, "chat-body-lp")
    lp = m.choices[0].logprobs.content
    check(b"".join(bytes(e.bytes) for e in lp) == LP_TEXT.encode(), "chat-body-lp: bytes")
    check(m.choices[0].message.content == LP_TEXT, "chat-body-lp: text")
    _, rest = split_head(emit("cmpl-stream-lp"))
    chunks = sdk_stream(dechunk(rest), Completion)
    toks, offs = [], []
    for i, c in enumerate(chunks):
        no_extra(c, f"cmpl-stream-lp[{i}]")
        lpc = c.choices[0].logprobs
        if lpc is not None:
            check(len(lpc.top_logprobs[0]) <= 2, "cmpl-stream-lp: alternatives")
            toks += lpc.tokens
            offs += lpc.text_offset
    # "✓" comes as three byte tokens: each piece alone is invalid UTF-8,
    # so its "tokens" string is U+FFFD (chat carries the exact "bytes")
    check("".join(toks).replace("\ufffd", "") == LP_TEXT.replace("✓", ""), f"cmpl-stream-lp: tokens {toks}")
    check(offs == sorted(offs) and offs[0] == 0, "cmpl-stream-lp: text_offset")
else:
    print("logprobs cases skipped: no tokenizer in $FAVO_MODELS")

print(f"openai {openai.__version__}: {'FAIL' if failures else 'ok'}")
sys.exit(1 if failures else 0)

#!/usr/bin/env python3
"""favo serve end to end: the real pipeline (supervisor, ingress, batcher,
engine, egress as separate processes) on the default model, answering curl,
raw sockets and the official OpenAI Python SDK.

Covers: /health /ready /v1/models; chat and completions, streaming and not;
greedy streams equal to the same request not streamed; the same greedy
requests alone and 12 at once give the same text (batch invariance through
the whole pipeline); stop strings; max_tokens; seed reproducibility; usage
agreeing with /tokenize; keep-alive (several requests on one connection);
error classes the SDK maps (NotFoundError, BadRequestError,
AuthenticationError, RateLimitError, InternalServerError for 503); a client
that disconnects mid-stream is cancelled (running gauge back to 0); SIGTERM
with streams in flight: every stream completes, exit 0.
"""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from serve_util import FAVO, Serve, check, failures, gauge, require_model, skip

try:
    import openai
except ImportError:
    skip("the openai package is not installed in the project venv")
require_model()


PROMPTS = ["Name three colours.", "What is the capital of France?", "Count from one to five.",
           "Write a haiku about the sea.", "What is 2+2?", "Say hello in Spanish.",
           "Give one tip for sleeping well.", "What do bees make?", "Describe a cat briefly.",
           "What is water made of?", "Name a planet.", "Why is the sky blue?"]


def main():
    S = Serve()
    try:
        run_main(S)
    finally:
        rc = S.stop()
        check(rc == 0, f"favo serve exits 0 after SIGTERM (got {rc})")
        log = S.logtext()
        for p in PROMPTS:  # no retention: prompts never reach the log
            check(p not in log, f"prompt text absent from the log: {p[:20]}")
    keyed()
    drain()


def run_main(S):
    st, body = S.get("/health")
    check(st == 200, "/health 200")
    st, body = S.get("/ready")
    check(st == 200 and b"ready" in body, f"/ready 200 once serving ({st} {body[:60]})")
    st, body = S.get("/v1/models")
    ids = [m["id"] for m in json.loads(body)["data"]] if st == 200 else []
    check(ids == ["SmolLM2-135M-Instruct.Q4_1"], f"/v1/models lists the model ({ids})")
    model = ids[0] if ids else "x"
    cl = S.client()

    # non-streaming chat, greedy
    r = cl.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPTS[1]}],
                                   max_tokens=24, temperature=0)
    text = r.choices[0].message.content
    check(r.object == "chat.completion" and isinstance(text, str) and len(text) > 0,
          f"chat completion has text: {text!r}")
    letters = sum(ch.isalpha() or ch.isspace() for ch in text)
    check(letters >= 0.7 * len(text), f"the answer is words, not noise ({letters}/{len(text)})")
    check(r.usage.completion_tokens <= 24 and r.usage.total_tokens ==
          r.usage.prompt_tokens + r.usage.completion_tokens, f"usage adds up ({r.usage})")
    check(r.choices[0].finish_reason in ("stop", "length"), "finish_reason")

    # the same, streamed, with usage: same text
    chunks, usage, fin = [], None, None
    for ch in cl.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPTS[1]}],
                                         max_tokens=24, temperature=0, stream=True,
                                         stream_options={"include_usage": True}):
        if ch.usage:
            usage = ch.usage
        for c in ch.choices:
            if c.delta and c.delta.content:
                chunks.append(c.delta.content)
            if c.finish_reason:
                fin = c.finish_reason
    check("".join(chunks) == text, "streamed greedy text == non-streamed text")
    check(usage is not None and usage.completion_tokens == r.usage.completion_tokens and
          usage.prompt_tokens == r.usage.prompt_tokens, "stream usage chunk matches")
    check(fin == r.choices[0].finish_reason, "stream finish_reason matches")

    # completions: usage.prompt_tokens agrees with /tokenize
    prompt = "The quick brown fox"
    st, body = S.post("/tokenize", {"model": model, "prompt": prompt})
    ntok = json.loads(body).get("count") if st == 200 else None
    c = cl.completions.create(model=model, prompt=prompt, max_tokens=5, temperature=0)
    check(c.usage.prompt_tokens == ntok, f"prompt_tokens {c.usage.prompt_tokens} == /tokenize {ntok}")
    check(c.usage.completion_tokens == 5 or c.choices[0].finish_reason == "stop",
          f"max_tokens 5 honoured ({c.usage.completion_tokens}, {c.choices[0].finish_reason})")
    check(c.choices[0].finish_reason in ("length", "stop"), "completion finish_reason")

    # stop strings: the text ends before the stop, finish_reason stop
    full = cl.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=20, temperature=0)
    ft = full.choices[0].text
    m = re.search(r"\d", ft[2:])
    if m:
        stop = ft[2 + m.start()]
        s = cl.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=20,
                                  temperature=0, stop=[stop])
        check(stop not in s.choices[0].text and s.choices[0].finish_reason == "stop" and
              ft.startswith(s.choices[0].text),
              f"stop {stop!r}: {s.choices[0].text!r} is the greedy text cut before it")
    else:
        check(False, f"greedy continuation of a count has a digit: {ft!r}")

    # seed reproducibility
    a = cl.completions.create(model=model, prompt="Once upon a time", max_tokens=16,
                              temperature=0.9, seed=1234).choices[0].text
    b = cl.completions.create(model=model, prompt="Once upon a time", max_tokens=16,
                              temperature=0.9, seed=1234).choices[0].text
    check(a == b, "same seed, same text")

    # batch invariance through the pipeline: alone vs 12 at once
    def one(p):
        return cl.chat.completions.create(model=model, messages=[{"role": "user", "content": p}],
                                          max_tokens=20, temperature=0).choices[0].message.content
    alone = [one(p) for p in PROMPTS]
    together = [None] * len(PROMPTS)

    def worker(i):
        try:
            out = []
            for ch in cl.chat.completions.create(model=model, stream=True, max_tokens=20,
                                                 temperature=0,
                                                 messages=[{"role": "user", "content": PROMPTS[i]}]):
                for c in ch.choices:
                    if c.delta and c.delta.content:
                        out.append(c.delta.content)
            together[i] = "".join(out)
        except Exception as e:  # noqa: BLE001 - reported below
            together[i] = f"error: {e}"
    th = [threading.Thread(target=worker, args=(i,)) for i in range(len(PROMPTS))]
    for t in th:
        t.start()
    for t in th:
        t.join()
    same = sum(1 for x, y in zip(alone, together) if x == y)
    check(same == len(PROMPTS), f"12 concurrent streams equal the same requests alone ({same}/12)")

    # keep-alive: three requests on one connection
    conn = http.client.HTTPConnection("127.0.0.1", S.port, timeout=60)
    oks = 0
    for i in range(3):
        conn.request("POST", "/v1/completions", body=json.dumps(
            {"model": model, "prompt": "Hi", "max_tokens": 3, "temperature": 0}),
            headers={"Content-Type": "application/json"})
        rr = conn.getresponse()
        b = json.loads(rr.read())
        oks += rr.status == 200 and b["object"] == "text_completion"
    conn.close()
    check(oks == 3, f"three completions on one keep-alive connection ({oks}/3)")

    # Connection: close is answered, then the connection closes
    out = subprocess.run(["curl", "-sS", "-m", "60", "-H", "Connection: close", "-D", "-",
                          S.base + "/v1/completions", "-H", "Content-Type: application/json",
                          "-d", json.dumps({"model": model, "prompt": "Hi", "max_tokens": 3})],
                         capture_output=True, text=True)
    check(out.returncode == 0 and "HTTP/1.1 200" in out.stdout and
          "connection: close" in out.stdout.lower() and '"text_completion"' in out.stdout,
          f"a 'Connection: close' request is answered and closed ({out.stdout[:120]!r} "
          f"{out.stderr[:120]!r})")

    # curl, non-streaming
    out = subprocess.run(["curl", "-sS", "-m", "60", S.base + "/v1/completions",
                          "-H", "Content-Type: application/json",
                          "-d", json.dumps({"model": model, "prompt": "Hello", "max_tokens": 4})],
                         capture_output=True, text=True)
    try:
        cj = json.loads(out.stdout)
        check(cj["object"] == "text_completion" and cj["usage"]["completion_tokens"] >= 1,
              "curl gets a completion")
    except (ValueError, KeyError):
        check(False, f"curl gets a completion: {out.stdout[:200]!r} {out.stderr[:200]!r}")

    # the access log: one JSON line per request, with a time to first
    # output even when the first token ended the answer (no text at all)
    st, body = S.post("/v1/completions", {"model": model, "max_tokens": 8, "temperature": 0,
                                          "prompt": "Tell me a short fact about the number 3."},
                      headers={"X-Request-Id": "e2e-ttft-1"})
    rec = None
    for _ in range(100):
        for line in S.logtext().splitlines():
            if '"request_id":"e2e-ttft-1"' in line:
                rec = json.loads(line[line.index("{"):])
        if rec:
            break
        time.sleep(0.02)
    check(st == 200 and rec is not None and rec["status"] == 200 and
          rec["completion_tokens"] == json.loads(body)["usage"]["completion_tokens"] and
          0 < rec["ttft_ms"] <= rec["total_ms"],
          f"the access log line has the request's counts and a TTFT even for an answer "
          f"without text ({rec})")

    # /metrics from the same stats segment: promtool accepts it, and it
    # counts what this test did
    st, body = S.get("/metrics")
    text = body.decode(errors="replace")
    m = re.search(r'^favo_requests_total\{status="ok"\} (\d+)', text, re.M)
    check(st == 200 and m and int(m.group(1)) >= 10, "/metrics counts the finished requests")
    m = re.search(r"^favo_generation_tokens_total (\d+)", text, re.M)
    check(m and int(m.group(1)) >= 100, "/metrics counts generated tokens")
    check("favo_time_to_first_token_seconds_bucket" in text, "/metrics has the TTFT histogram")
    if shutil.which("promtool"):
        pr = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
        check(pr.returncode == 0, f"promtool check metrics: {pr.stdout[:300]!r} {pr.stderr[:300]!r}")

    # errors the SDK maps
    try:
        cl.completions.create(model="no-such-model", prompt="x", max_tokens=2)
        check(False, "unknown model raises NotFoundError")
    except openai.NotFoundError:
        check(True, "unknown model raises NotFoundError")
    try:
        cl.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}],
                                   max_tokens=2, logprobs=True, top_logprobs=21)
        check(False, "top_logprobs 21 raises BadRequestError")
    except openai.BadRequestError:
        check(True, "top_logprobs 21 raises BadRequestError")
    try:
        cl.completions.create(model=model, prompt="x", max_tokens=2, temperature=-3)
        check(False, "temperature -3 raises BadRequestError")
    except openai.BadRequestError:
        check(True, "temperature -3 raises BadRequestError")

    # a client that leaves mid-stream is cancelled
    s = socket.create_connection(("127.0.0.1", S.port))
    body = json.dumps({"model": model, "prompt": "Tell me a very long story.", "max_tokens": 2000,
                       "temperature": 0.8, "stream": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    got = s.recv(4096)
    check(got.startswith(b"HTTP/1.1 200"), "long stream starts")
    running = None
    for _ in range(50):
        running = gauge(S.stat(), "running")
        if running == 1:
            break
        time.sleep(0.05)
    check(running == 1, f"the stats see the stream running ({running})")
    s.close()
    running = None
    for _ in range(100):
        time.sleep(0.1)
        running = gauge(S.stat(), "running")
        if running == 0:
            break
    check(running == 0, f"the disconnected client's sequence is cancelled (running {running})")


def keyed():
    d = tempfile.mkdtemp()
    kf = os.path.join(d, "keys")
    out = subprocess.run([FAVO, "keys", "add", "--keys", kf, "--name", "k1", "--tenant", "a",
                          "--rpm", "2", "--tpm", "0"], capture_output=True, text=True)
    key = out.stdout.strip().split()[-1] if out.returncode == 0 else None
    if not key:
        check(False, f"favo keys add: {out.stderr}")
        return
    S = Serve("--keys", kf, "--max-seqs", "1", "--max-queue", "1")
    try:
        model = "SmolLM2-135M-Instruct.Q4_1"
        try:
            S.client(key="favo-wrong").completions.create(model=model, prompt="x", max_tokens=2)
            check(False, "a wrong key raises AuthenticationError")
        except openai.AuthenticationError:
            check(True, "a wrong key raises AuthenticationError")
        cl = S.client(key=key)
        cl.completions.create(model=model, prompt="x", max_tokens=2)
        cl.completions.create(model=model, prompt="x", max_tokens=2)
        try:
            cl.completions.create(model=model, prompt="x", max_tokens=2)
            check(False, "the third request in a minute at rpm 2 raises RateLimitError")
        except openai.RateLimitError:
            check(True, "the third request in a minute at rpm 2 raises RateLimitError")
        # SIGHUP reloads the keys file: a new key works, a revoked one is refused
        out = subprocess.run([FAVO, "keys", "add", "--keys", kf, "--name", "k2", "--tenant", "b",
                              "--rpm", "0", "--tpm", "0"], capture_output=True, text=True)
        key2 = out.stdout.strip().split()[-1]
        subprocess.run([FAVO, "keys", "revoke", "--keys", kf, "k1"], capture_output=True)
        S.p.send_signal(signal.SIGHUP)
        ok2 = False
        for _ in range(50):
            time.sleep(0.1)
            try:
                S.client(key=key2).completions.create(model=model, prompt="x", max_tokens=2)
                ok2 = True
                break
            except openai.AuthenticationError:
                pass
        check(ok2, "after SIGHUP a key added to the file is accepted")
        try:
            cl.completions.create(model=model, prompt="x", max_tokens=2)
            check(False, "after SIGHUP a revoked key raises AuthenticationError")
        except openai.AuthenticationError:
            check(True, "after SIGHUP a revoked key raises AuthenticationError")
        check("reloaded" in S.logtext(), "the reload is logged")
    finally:
        check(S.stop() == 0, "keyed server exits 0")
    # 503: one running, one waiting, the rest refused at once
    S = Serve("--max-seqs", "1", "--max-queue", "1")
    try:
        model = "SmolLM2-135M-Instruct.Q4_1"
        cl = S.client()
        res = []

        def w():
            try:
                cl.completions.create(model=model, prompt="Tell a long story.", max_tokens=200,
                                      temperature=0.5)
                res.append(200)
            except openai.InternalServerError as e:
                res.append(e.status_code)
            except Exception as e:  # noqa: BLE001
                res.append(repr(e))
        th = [threading.Thread(target=w) for _ in range(6)]
        for t in th:
            t.start()
        for t in th:
            t.join()
        check(res.count(200) >= 1 and res.count(503) >= 1 and
              all(x in (200, 503) for x in res),
              f"queue full: 503 (InternalServerError) for the overflow, 200 for the rest ({res})")
    finally:
        check(S.stop() == 0, "small-queue server exits 0")


def drain():
    S = Serve("--drain-timeout", "120", "--queue-timeout", "120")
    model = "SmolLM2-135M-Instruct.Q4_1"
    cl = S.client()
    NS = 100
    res = [None] * NS

    def w(i):
        try:
            n, fin = 0, None
            for ch in cl.completions.create(model=model, prompt=PROMPTS[i % 12], max_tokens=16,
                                            temperature=0.7, seed=i, stream=True):
                for c in ch.choices:
                    n += bool(c.text)
                    fin = c.finish_reason or fin
            res[i] = fin
        except Exception as e:  # noqa: BLE001
            res[i] = f"error: {e}"
    th = [threading.Thread(target=w, args=(i,)) for i in range(NS)]
    for t in th:
        t.start()
    t0 = time.time()
    while time.time() - t0 < 60:
        snap = S.stat()
        done = (snap or {}).get("counters", {}).get("req_ok", 0)
        if done + (gauge(snap, "running") or 0) + (gauge(snap, "waiting") or 0) >= NS:
            break  # every request is in the server: finished, running or queued
        time.sleep(0.05)
    rc = S.stop(timeout=150)
    for t in th:
        t.join()
    ok = sum(1 for r in res if r in ("stop", "length"))
    check(done < NS, f"SIGTERM came with requests in flight ({NS - done} of {NS})")
    check(ok == NS, f"SIGTERM with {NS} streams in flight: all complete ({ok}/{NS}: "
                    f"{[r for r in res if r not in ('stop', 'length')][:5]})")
    check(rc == 0, f"drained server exits 0 (got {rc})")


if __name__ == "__main__":
    main()
    print(f"{len(failures)} failures")
    sys.exit(1 if failures else 0)

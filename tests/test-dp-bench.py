#!/usr/bin/env python3
"""favo bench against a synthetic OpenAI-compatible server with KNOWN delays.

The server (asyncio, stdlib only) answers /v1/completions and
/v1/chat/completions, streaming (SSE over chunked encoding) or not, with a
fixed time to first token, fixed gaps between tokens, a known fraction of
slow requests, some 429/503 answers, and optionally a 1 s freeze.

Tolerances: a measured latency can be below the server's sleep only by
asyncio timer granularity (we allow 3 ms); above it by Python scheduling,
loopback and the client (ASan build included) - we allow up to 90 ms on a
loaded 2-core CI machine, which is still far below every effect we check
(150 ms slow requests, a 1000 ms freeze).
"""
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

FAVO = os.path.join(os.environ.get("FAVO_BUILD", "build"), "favo")
LO, HI = 3.0, 90.0  # ms below / above a known delay
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def near(v, known, what, hi=HI):
    check(v is not None and known - LO <= v <= known + hi, f"{what} = {v} ms, known {known} ms")


class Server:
    def __init__(self, ttft=0.05, itl=0.02, slow_every=0, slow_extra=0.0, err_every=0,
                 freeze_at=None, freeze_len=1.0, key=None, prompts=None, role_first=False):
        self.__dict__.update(locals())
        self.n = 0
        self.t_first = None
        self.bad = []  # request-format violations seen
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.srv = self.loop.run_until_complete(
                asyncio.start_server(self.handle, "127.0.0.1", 0, backlog=1024))
            self.port = self.srv.sockets[0].getsockname()[1]
            started.set()
            self.loop.run_forever()

        self.th = threading.Thread(target=run, daemon=True)
        self.th.start()
        started.wait()

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.th.join()

    async def unfrozen(self):
        if self.freeze_at is None or self.t_first is None:
            return
        now = time.monotonic() - self.t_first
        if self.freeze_at <= now < self.freeze_at + self.freeze_len:
            await asyncio.sleep(self.freeze_at + self.freeze_len - now)

    async def handle(self, rd, wr):
        try:
            head = await rd.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            method, path, _ = lines[0].split(" ")
            hdr = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
            body = json.loads(await rd.readexactly(int(hdr["content-length"])))
            if self.t_first is None:
                self.t_first = time.monotonic()
            k = self.n
            self.n += 1
            chat = path == "/v1/chat/completions"
            if method != "POST" or path not in ("/v1/completions", "/v1/chat/completions"):
                self.bad.append("path")
            if body.get("ignore_eos") is not True or not isinstance(body.get("max_tokens"), int):
                self.bad.append("fields")
            prompt = body["messages"][0]["content"] if chat else body["prompt"]
            if self.prompts is not None and prompt not in self.prompts:
                self.bad.append("prompt")
            await self.unfrozen()
            if self.key and hdr.get("authorization") != "Bearer " + self.key:
                return await self.plain(wr, 401, b'{"error":"key"}')
            if self.err_every and k % self.err_every == self.err_every - 1:
                code = 429 if (k // self.err_every) % 2 == 0 else 503
                return await self.plain(wr, code, b'{"error":"busy"}')
            delay = self.ttft + (self.slow_extra if self.slow_every and k % self.slow_every == 4 else 0)
            ntok = body["max_tokens"]
            if not body.get("stream"):
                await asyncio.sleep(delay + self.itl * (ntok - 1))
                out = json.dumps({"choices": [{"text": "x" * ntok}],
                                  "usage": {"completion_tokens": ntok}}).encode()
                return await self.plain(wr, 200, out)
            wr.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            await wr.drain()
            if self.role_first:  # as OpenAI and vLLM stream chat: a role-only delta at once
                ev = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
                wr.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                await wr.drain()
            await asyncio.sleep(delay)
            for i in range(ntok):
                if i:
                    await asyncio.sleep(self.itl)
                await self.unfrozen()
                ev = (b'data: {"choices":[{"index":0,"delta":{"content":"t"}}]}\n\n' if self.role_first
                      else b'data: {"choices":[{"text":"t"}]}\n\n')
                wr.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                await wr.drain()
            if self.role_first:  # finish-only and usage-only chunks, after a gap
                await asyncio.sleep(self.itl)
                for ev in (b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n',
                           b'data: {"choices":[],"usage":{"completion_tokens":%d}}\n\n' % ntok):
                    wr.write(b"%x\r\n%s\r\n" % (len(ev), ev))
                await wr.drain()
            ev = b"data: [DONE]\n\n"
            wr.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(ev), ev))
            await wr.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            wr.close()

    async def plain(self, wr, code, body):
        wr.write(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                 b"Connection: close\r\n\r\n%s" % (code, len(body), body))
        await wr.drain()


def bench(srv, *args, expect_rc=0, quiet=True, stderr=None):
    with tempfile.TemporaryDirectory() as d:
        jpath = os.path.join(d, "r.json")
        cmd = [FAVO, "bench", "--url", f"http://127.0.0.1:{srv.port}", "--json", jpath,
               *(["-q"] if quiet else []), *args]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        sys.stdout.write(p.stdout)
        if stderr is not None:
            stderr.append(p.stderr)
        check(p.returncode == expect_rc, f"rc {p.returncode} for {' '.join(args)}: {p.stderr.strip()[-300:]}")
        return json.load(open(jpath)) if p.returncode == 0 else None


def main():
    if not os.path.exists(FAVO):
        print("favo binary missing", FAVO)
        return 1

    # A: streaming, open loop at a constant 40/s. TTFT 50 ms, ITL 20 ms, 5 tokens;
    # every 10th request (k%10==4) +150 ms; k%10==9 answers 429 / 503 alternately.
    s = Server(ttft=0.05, itl=0.02, slow_every=10, slow_extra=0.15, err_every=10)
    j = bench(s, "--rate", "40", "--arrivals", "constant", "--requests", "160",
              "--input-tokens", "20", "--output-tokens", "5")
    s.stop()
    check(not s.bad, f"request format: {set(s.bad)}")
    r = j["run"]
    check(r["scheduled"] == 160 and r["ok"] == 144, f"160 scheduled, 144 ok: {r['scheduled']}, {r['ok']}")
    check(r["errors_by_status"] == {"429": 8, "503": 8}, f"errors by status {r['errors_by_status']}")
    check(r["output_tokens"] == 144 * 5, f"output tokens {r['output_tokens']}")
    # 16 of the 144 ok requests are slow (11 %): p50 fast, p99 slow.
    near(r["ttft_ms"]["p50"], 50, "A ttft p50")
    near(r["ttft_ms"]["p99"], 200, "A ttft p99")
    near(r["itl_ms"]["p50"], 20, "A itl p50")
    check(r["itl_ms"]["samples"] == 144 * 4, f"A itl samples {r['itl_ms']['samples']}")
    near(r["e2e_ms"]["p50"], 50 + 4 * 20, "A e2e p50")
    near(r["e2e_ms"]["p99"], 200 + 4 * 20, "A e2e p99")
    for key in ("offered_rate", "requests_per_s", "output_tokens_per_s", "wall_s", "timeouts",
                "connection_errors", "protocol_errors"):
        check(key in r, f"json key {key}")
    for m in ("ttft_ms", "itl_ms", "e2e_ms"):
        check(all(k in r[m] for k in ("samples", "mean", "p50", "p90", "p95", "p99", "p99.9", "max")),
              f"json percentiles for {m}")

    # B: coordinated omission. 50/s constant for 150 requests (3 s); the server
    # freezes from 1.0 s to 2.0 s after the first request. A request intended at
    # t in [1, 2) waits 2 - t, so the top third of TTFTs spreads over 0..1000 ms:
    # the 8th largest (p95 of 150) ~ 1000 - 7*20 = 860 ms, 16th (p90) ~ 700 ms.
    s = Server(ttft=0.02, itl=0.01, freeze_at=1.0, freeze_len=1.0)
    err = []
    j = bench(s, "--rate", "50", "--arrivals", "constant", "--requests", "150",
              "--input-tokens", "10", "--output-tokens", "2", quiet=False, stderr=err)
    s.stop()
    check(err[0].count("scheduled") >= 2, "B progress line once a second on stderr")
    r = j["run"]
    check(r["ok"] == 150, f"B ok {r['ok']}")
    near(r["ttft_ms"]["p50"], 20, "B ttft p50 (outside the freeze)")
    near(r["ttft_ms"]["p90"], 700, "B ttft p90 (inside the freeze)", hi=90)
    near(r["ttft_ms"]["p95"], 860, "B ttft p95 (inside the freeze)", hi=90)
    near(r["ttft_ms"]["max"], 1000, "B ttft max ~ the freeze", hi=90)

    # C: non-streaming, closed loop, chat endpoint with a key, prompts from a file.
    prompts = ["first prompt \"quoted\"\nline", "second prompt é"]
    s = Server(ttft=0.03, itl=0.0, key="k1", prompts=prompts)
    with tempfile.TemporaryDirectory() as d:
        pf = os.path.join(d, "p.jsonl")
        with open(pf, "w") as f:
            for i, p in enumerate(prompts):
                f.write(json.dumps({"prompt": p, "max_tokens": 3 + i}) + "\n")
        svg = os.path.join(d, "c.svg")
        j = bench(s, "--concurrency", "2", "--requests", "20", "--no-stream", "--endpoint", "chat",
                  "--api-key", "k1", "--model", "m", "--prompts", pf, "--svg", svg)
        r = j["run"]
        check(r["ok"] == 20 and r["errors"] == 0, f"C ok {r['ok']} errors {r['errors']}")
        check(60 <= r["output_tokens"] <= 80, f"C output tokens {r['output_tokens']} (3 or 4 each)")
        check(r["ttft_ms"]["samples"] == 0, "C no TTFT when not streaming")
        near(r["e2e_ms"]["p50"], 30, "C e2e p50")
        root = ET.parse(svg).getroot()
        check(root.tag.endswith("svg") and len(root.findall(".//{http://www.w3.org/2000/svg}polyline")) == 1,
              "C svg is XML with one line (E2E)")
        # a bad prompts file names the line and field
        with open(pf, "a") as f:
            f.write('{"prompt": 3, "max_tokens": 2}\n')
        p = subprocess.run([FAVO, "bench", "--url", f"http://127.0.0.1:{s.port}", "--prompts", pf],
                           capture_output=True, text=True, timeout=30)
        check(p.returncode == 2 and "line 3" in p.stderr and "prompt" in p.stderr,
              f"bad prompts file: rc {p.returncode}: {p.stderr.strip()}")
    s.stop()
    check(not s.bad, f"C request format: {set(s.bad)}")
    # wrong key -> 401 counted
    s = Server(ttft=0.0, key="k1")
    j = bench(s, "--concurrency", "1", "--requests", "3", "--input-tokens", "5", "--output-tokens", "2",
              "--api-key", "nope")
    s.stop()
    check(j["run"]["errors_by_status"] == {"401": 3}, f"401 counted {j['run']['errors_by_status']}")

    # E: open loop with --max-connections 1: 50/s arrivals, 30 ms service. The
    # queue grows by 10 ms per request, and that wait counts: request i (0-based)
    # sees >= 30 + 10 i ms, so the largest of 20 is >= 220 ms.
    s = Server(ttft=0.03, itl=0.0)
    j = bench(s, "--rate", "50", "--arrivals", "constant", "--requests", "20", "--max-connections", "1",
              "--input-tokens", "5", "--output-tokens", "1")
    s.stop()
    check(j["run"]["ok"] == 20 and j["run"]["e2e_ms"]["max"] >= 220 - LO,
          f"E waiting for a connection counts: e2e max {j['run']['e2e_ms']['max']} >= 220")
    check(j["run"]["ttft_ms"]["max"] >= 220 - LO,
          f"E ... in TTFT too: ttft max {j['run']['ttft_ms']['max']} >= 220")
    # G: chat streamed as OpenAI does: a role-only delta at once, text after
    # 80 ms, 20 ms gaps, then finish-only and usage-only chunks 20 ms later.
    # TTFT is the first TEXT (80 ms, not ~0), 4 tokens, 3 gaps of 20 ms, and
    # E2E runs to the end of the body (80 + 3*20 + 20 ms).
    s = Server(ttft=0.08, itl=0.02, role_first=True)
    j = bench(s, "--concurrency", "1", "--requests", "6", "--endpoint", "chat",
              "--input-tokens", "5", "--output-tokens", "4")
    s.stop()
    r = j["run"]
    check(r["ok"] == 6 and r["output_tokens"] == 24, f"G 6 ok, 24 text tokens ({r['ok']}, {r['output_tokens']})")
    near(r["ttft_ms"]["p50"], 80, "G ttft p50 (role-only delta not a token)")
    near(r["itl_ms"]["p50"], 20, "G itl p50")
    check(r["itl_ms"]["samples"] == 6 * 3, f"G itl samples {r['itl_ms']['samples']} (3 a request)")
    near(r["e2e_ms"]["p50"], 160, "G e2e p50 (to the end of the body)")
    # F: a server that never answers: per-request --timeout
    s = Server(ttft=30.0)
    j = bench(s, "--concurrency", "1", "--requests", "2", "--timeout", "0.3",
              "--input-tokens", "5", "--output-tokens", "1")
    s.stop()
    check(j["run"]["timeouts"] == 2 and j["run"]["ok"] == 0, f"F timeouts {j['run']['timeouts']}")

    # D: sweep with an SLO: TTFT 10 ms meets ttft_p99_ms=500 at both rates;
    # ttft_p99_ms=1 is met by none.
    s = Server(ttft=0.01, itl=0.005)
    for slo, best in (("ttft_p99_ms=500", 100), ("ttft_p99_ms=1", None)):
        j = bench(s, "--sweep", "50,100", "--requests", "20", "--slo", slo,
                  "--input-tokens", "5", "--output-tokens", "3")
        check(len(j["runs"]) == 2 and j["best_rate"] == best, f"sweep {slo}: best {j['best_rate']}")
    s.stop()

    # options are checked
    for bad in (["--rate", "5", "--concurrency", "2"], ["--slo", "foo=3", "--sweep", "1"],
                ["--url", "https://x"], ["--endpoint", "x"], ["--input-tokens", "5"]):
        p = subprocess.run([FAVO, "bench", *bad], capture_output=True, text=True, timeout=30)
        check(p.returncode == 2 and p.stderr.count("\n") == 1, f"rejects {bad}: {p.stderr.strip()}")

    print("FAILED: %d" % len(failures) if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Tenant fairness through the real pipeline (issue 7, "Fairness and
priority"): a flood of one tenant cannot make another wait for the flood's
sequences to finish.

Tenant A holds every sequence slot (`--max-seqs 4`, four streaming greedy
completions with long generations that count upwards, so none ends early);
once each of A's streams has its first token, tenant B (same priority)
sends one streaming request. The scheduler's fair share (batcher/
bat_sched.h, "FAIR SHARE") preempts A's newest sequence by recompute and
starts B in the next step, so B's first token arrives while all of A's
sequences are still running: no A stream has ended (finish_reason or
[DONE]) at that moment. Without it, B would wait until one of A's
generations finished (hundreds of steps). The check is an ordering of
events, in steps, not a wall-clock bound, so a slow or loaded machine
cannot break it. A's streams are then closed (the server cancels them),
and the access log must show B answered 200 with its queue time, and a
line for each of A's four requests.
"""
import http.client
import json
import os
import subprocess
import tempfile
import threading
import time

from serve_util import FAVO, MODEL_ID, Serve, check, finish, require_model

require_model()

A_MAX_TOKENS = 400  # far more steps than B needs to start (a few)
N_SLOTS = 4


def add_key(kf, tenant):
    out = subprocess.run([FAVO, "keys", "add", "--keys", kf, "--name", "k" + tenant,
                          "--tenant", tenant, "--rpm", "0", "--tpm", "0"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr)
        raise SystemExit("FAIL: favo keys add")
    return out.stdout.strip().split()[-1]


class Stream(threading.Thread):
    """One streaming completion; notes when its first token and its end
    (a finish_reason, [DONE], or the connection closing) arrive, as
    time.monotonic() values, and whether we closed it ourselves."""

    def __init__(self, port, key, prompt, max_tokens):
        super().__init__(daemon=True)
        self.port, self.key, self.prompt, self.max_tokens = port, key, prompt, max_tokens
        self.first = self.end = None
        self.finish_reason = None
        self.status = None
        self.tokens = 0
        self.closing = False
        self.conn = None
        self.got_first = threading.Event()
        self.done = threading.Event()

    def run(self):
        try:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
            body = json.dumps({"model": MODEL_ID, "prompt": self.prompt, "stream": True,
                               "max_tokens": self.max_tokens, "temperature": 0})
            self.conn.request("POST", "/v1/completions", body=body,
                              headers={"Content-Type": "application/json",
                                       "Authorization": "Bearer " + self.key})
            r = self.conn.getresponse()
            self.status = r.status
            for line in r:
                line = line.strip()
                if not line.startswith(b"data: "):
                    continue
                if line == b"data: [DONE]":
                    break
                ev = json.loads(line[6:])
                ch = (ev.get("choices") or [{}])[0]
                if ch.get("text"):
                    self.tokens += 1
                    if self.first is None:
                        self.first = time.monotonic()
                        self.got_first.set()
                if ch.get("finish_reason"):
                    self.finish_reason = ch["finish_reason"]
                    break
        except (OSError, ValueError, http.client.HTTPException):
            pass  # closed by us (A after the check), or a failure the checks report
        finally:
            if not self.closing:
                self.end = time.monotonic()
            self.got_first.set()
            self.done.set()

    def close(self):
        self.closing = True
        try:
            if self.conn and self.conn.sock:
                self.conn.sock.shutdown(2)
        except OSError:
            pass


def main():
    d = tempfile.mkdtemp()
    kf = os.path.join(d, "keys")
    alog = os.path.join(d, "access.log")
    key_a, key_b = add_key(kf, "A"), add_key(kf, "B")
    S = Serve("--keys", kf, "--access-log", alog, "--max-seqs", str(N_SLOTS),
              "--max-batch-tokens", "256", "--kv-cache-mb", "256", "--ctx-size", "1024",
              "--threads", "2", "--drain-timeout", "20", defaults=())
    streams = []
    try:
        # A fills every slot: each stream has its first token, so each is running
        streams = [Stream(S.port, key_a, f"Count from {i + 1} to 1000: {i + 1}, {i + 2}, "
                          f"{i + 3},", A_MAX_TOKENS) for i in range(N_SLOTS)]
        for s in streams:
            s.start()
        for s in streams:
            s.got_first.wait(120)
        check(all(s.first is not None and s.end is None for s in streams),
              f"tenant A holds all {N_SLOTS} slots: every stream has a first token and none "
              f"ended ({[(s.status, s.tokens, s.finish_reason) for s in streams]})")
        snap = S.stat() or {}
        running = (snap.get("gauges") or {}).get("running")
        check(running == N_SLOTS, f"favo stat: {running} sequences running (= --max-seqs)")

        b = Stream(S.port, key_b, "The capital of France is", 4)
        b.start()
        b.got_first.wait(300)
        t_b = b.first
        ended = [s.end for s in streams if s.end is not None and t_b is not None and
                 s.end <= t_b]
        check(t_b is not None, f"tenant B got a first token (status {b.status})")
        check(t_b is not None and not ended,
              "tenant B's first token arrived while all of A's sequences were still running "
              f"(A tokens so far {[s.tokens for s in streams]}, A ended before B: {len(ended)})")
        check(all(s.finish_reason is None for s in streams),
              f"no A stream has finished ({[s.finish_reason for s in streams]})")
        b.done.wait(120)
        check(b.status == 200 and b.finish_reason is not None,
              f"tenant B's stream completes ({b.status}, {b.finish_reason})")
    finally:
        for s in streams:
            s.close()
        for s in streams:
            s.done.wait(30)
    # the access log: egress writes a line per response after its last byte
    rows = []
    t0 = time.time()
    while time.time() - t0 < 30:
        try:
            rows = [json.loads(x) for x in open(alog) if x.startswith("{")]
        except (OSError, ValueError):
            rows = []
        if sum(r.get("tenant") == "A" for r in rows) >= N_SLOTS and \
                any(r.get("tenant") == "B" for r in rows):
            break
        time.sleep(0.1)
    rb = [r for r in rows if r.get("tenant") == "B"]
    ra = [r for r in rows if r.get("tenant") == "A"]
    check(len(rb) == 1 and rb[0].get("status") == 200 and "queue_ms" in rb[0],
          f"access log: B answered 200 with queue_ms ({rb})")
    if rb:
        print(f"     B queue_ms {rb[0].get('queue_ms')} ttft_ms {rb[0].get('ttft_ms')}; A "
              f"total_ms {[r.get('total_ms') for r in ra]}")
    ends = [(r.get("status"), r.get("finish_reason"), r.get("completion_tokens")) for r in ra]
    check(len(ra) == N_SLOTS and all(r.get("finish_reason") != "length" for r in ra),
          f"access log: A's {N_SLOTS} requests ended by our cancel, none ran to its length "
          f"({ends})")
    check(S.stop() == 0, "favo serve drains and exits 0")
    finish()


if __name__ == "__main__":
    main()

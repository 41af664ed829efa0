#!/usr/bin/env python3
"""Specialists and the response cache through the real pipeline (issue 7
"Response cache", "Specialists and models"; issue 9 "SIGHUP reloads
specialists").

favo serve runs the default model with a config file of specialists:

  classify  system prompt, temperature 0, max_tokens cap 8, cache_ttl 60
  brief     system prompt, temperature 0, cache_ttl 2 (expiry)
  chat      system prompt, no cache
  plain     no system prompt, no cache (removed by the SIGHUP below)

Checks:
  - /v1/models lists the model and every specialist (OpenAI's shape,
    owned_by "favo");
  - the system prompt: a specialist's usage.prompt_tokens equals /tokenize
    of the same messages with the system message written out, and of the
    request sent with the specialist's name to /tokenize (chat and
    completions), and differs from the plain model's;
  - the max_tokens cap: max_tokens 100 and no max_tokens both give at most
    8 tokens from `classify`;
  - an unknown model name is 404 (NotFoundError), as without specialists;
  - the cache: a second identical greedy request to `classify` gives the
    same text, counts one hit (favo stat --json cache_hit) and no engine
    token (eng_tok unchanged); streamed or not, the hit is answered the
    same; a seeded temperature>0 request is cached too; a temperature>0
    request without seed is neither a hit nor a miss and runs on the
    engine; another prompt is another entry;
  - TTL: `brief` misses again after its 2 s TTL (its entry expired);
  - SIGHUP with a changed config (adds `fresh`, removes `plain`) while a
    stream on `plain` is in flight: the stream completes with a
    finish_reason and [DONE]; /v1/models shows the new table; `plain` is
    then 404 and `fresh` answers;
  - SIGHUP with a broken config: an error naming file and line in the
    log, the table in use is kept (`fresh` still answers).
"""
import json
import os
import signal
import tempfile
import time

from serve_util import MODEL_ID, Serve, check, finish, require_model, skip

try:
    import openai
except ImportError:
    skip("the openai package is not installed in the project venv")
require_model()

CONFIG = """
[specialist.classify]
system_prompt = You are a sentiment classifier. Answer with one word: positive or negative.
max_tokens = 8
temperature = 0
cache_ttl = 60
priority = 3

[specialist.brief]
system_prompt = Answer in one short sentence.
temperature = 0
cache_ttl = 2

[specialist.chat]
system_prompt = You are a friendly assistant who tells long stories.

[specialist.plain]
temperature = 0
"""

CONFIG2 = CONFIG.replace("[specialist.plain]\ntemperature = 0\n",
                         "[specialist.fresh]\nsystem_prompt = You answer in French.\n")
BROKEN = CONFIG2 + "\n[specialist.bad]\ntemperature = 7\n"


def counters(S, settle=0.4):
    time.sleep(settle)  # the stages flush their counters every few ms
    snap = S.stat() or {}
    c = snap.get("counters", snap)
    return {k: c.get(k, 0) for k in ("cache_hit", "cache_miss", "eng_tok")}


def delta(a, b):
    return {k: b[k] - a[k] for k in a}


def models(S):
    st, body = S.get("/v1/models")
    return json.loads(body)["data"] if st == 200 else []


def chat(cl, model, text, **kw):
    return cl.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                      **kw)


def main():
    d = tempfile.mkdtemp(prefix="favo-cache-")
    cfg = os.path.join(d, "favo.ini")
    with open(cfg, "w") as f:
        f.write(CONFIG)
    S = Serve("--config", cfg, "--cache-mb", "16")
    try:
        run(S, cfg)
    finally:
        rc = S.stop()
        check(rc == 0, f"favo serve exits 0 after SIGTERM (got {rc})")
        log = S.logtext()
        check("positive or negative" not in log and "I adore" not in log,
              "no prompt text in the log")
    finish()


def run(S, cfg):
    cl = S.client()

    # /v1/models
    ms = models(S)
    ids = [m["id"] for m in ms]
    check(ids == [MODEL_ID, "classify", "brief", "chat", "plain"], f"/v1/models: {ids}")
    check(all(m["object"] == "model" and m["owned_by"] == "favo" for m in ms),
          "each entry is an OpenAI model object owned by favo")

    # the system prompt, counted
    msgs = [{"role": "user", "content": "I adore this phone, it is perfect."}]
    sysmsg = [{"role": "system", "content": "You are a sentiment classifier. Answer with one "
               "word: positive or negative."}] + msgs
    st, b1 = S.post("/tokenize", {"messages": sysmsg})
    st2, b2 = S.post("/tokenize", {"model": "classify", "messages": msgs})
    st3, b3 = S.post("/tokenize", {"messages": msgs})
    n_sys = json.loads(b1)["count"] if st == 200 else -1
    n_spec = json.loads(b2)["count"] if st2 == 200 else -2
    n_plain = json.loads(b3)["count"] if st3 == 200 else -3
    # (SmolLM2's template puts its own default system message in when a
    # request has none: the specialist's replaces it, so the counts differ)
    check(n_sys == n_spec and n_spec != n_plain,
          f"/tokenize: system message written out {n_sys} == via specialist {n_spec} != "
          f"plain {n_plain}")
    r = chat(cl, "classify", msgs[0]["content"])
    check(r.usage.prompt_tokens == n_sys, f"chat usage.prompt_tokens {r.usage.prompt_tokens} == "
          f"/tokenize with the system message {n_sys}")
    check(r.model == "classify", f"a specialist's answer names the specialist ({r.model})")
    r0 = chat(cl, MODEL_ID, msgs[0]["content"], max_tokens=4, temperature=0)
    check(r0.model == MODEL_ID, f"the plain model's answer names the model ({r0.model})")
    check(r0.usage.prompt_tokens == n_plain, f"the plain model's prompt gets no specialist's "
          f"system prompt ({r0.usage.prompt_tokens} == {n_plain})")
    st, bc = S.post("/tokenize", {"model": "brief", "prompt": "The capital of Italy is"})
    st0, bc0 = S.post("/tokenize", {"prompt": "The capital of Italy is"})
    c = cl.completions.create(model="brief", prompt="The capital of Italy is", max_tokens=3)
    nc = json.loads(bc)["count"] if st == 200 else -1
    nc0 = json.loads(bc0)["count"] if st0 == 200 else -1
    check(c.usage.prompt_tokens == nc and nc > nc0,
          f"completions: usage.prompt_tokens {c.usage.prompt_tokens} == /tokenize via the "
          f"specialist {nc} > plain {nc0}")

    # max_tokens cap (classify: 8)
    for kw in ({"max_tokens": 100}, {}):
        r = chat(cl, "classify", "Tell me everything about the history of Rome.", **kw)
        check(r.usage.completion_tokens <= 8, f"cap 8 holds with {kw or 'no max_tokens'}: "
              f"{r.usage.completion_tokens} tokens, {r.choices[0].finish_reason}")

    # unknown model
    try:
        chat(cl, "no-such-specialist", "hi", max_tokens=2)
        check(False, "an unknown model is refused")
    except openai.NotFoundError:
        check(True, "an unknown model is 404 (NotFoundError)")

    # the cache: miss, then hit with the same text and no engine work
    q = "This movie was a waste of two hours."
    a = counters(S)
    r1 = chat(cl, "classify", q)
    b = counters(S)
    r2 = chat(cl, "classify", q)
    c2 = counters(S)
    d1, d2 = delta(a, b), delta(b, c2)
    check(d1["cache_miss"] == 1 and d1["cache_hit"] == 0 and d1["eng_tok"] > 0,
          f"first request: a miss, run on the engine {d1}")
    check(d2["cache_hit"] == 1 and d2["cache_miss"] == 0 and d2["eng_tok"] == 0,
          f"second identical request: a hit, no engine token {d2}")
    check(r1.choices[0].message.content == r2.choices[0].message.content and
          r1.usage == r2.usage and r1.choices[0].finish_reason == r2.choices[0].finish_reason,
          f"the hit answers the same: {r2.choices[0].message.content!r}")
    # streamed, the hit gives the same text
    text, fin = [], None
    for ch in cl.chat.completions.create(model="classify", stream=True,
                                         messages=[{"role": "user", "content": q}]):
        for x in ch.choices:
            if x.delta and x.delta.content:
                text.append(x.delta.content)
            if x.finish_reason:
                fin = x.finish_reason
    e = counters(S)
    check("".join(text) == r1.choices[0].message.content and fin == r1.choices[0].finish_reason
          and delta(c2, e)["cache_hit"] == 1 and delta(c2, e)["eng_tok"] == 0,
          f"a streamed hit: same text, finish {fin}, {delta(c2, e)}")
    # a different prompt is its own entry
    r3 = chat(cl, "classify", q + " Really.")
    f = counters(S)
    check(delta(e, f)["cache_miss"] == 1, f"another prompt misses {delta(e, f)}")

    # temperature > 0 without seed: not cacheable (neither hit nor miss)
    g0 = counters(S)
    chat(cl, "classify", q, temperature=0.9)
    chat(cl, "classify", q, temperature=0.9)
    g1 = counters(S)
    dg = delta(g0, g1)
    check(dg["cache_hit"] == 0 and dg["cache_miss"] == 0 and dg["eng_tok"] > 0,
          f"temperature 0.9 without seed is not cached {dg}")
    # ... with a seed it is
    s1 = chat(cl, "classify", q, temperature=0.9, seed=77)
    s2 = chat(cl, "classify", q, temperature=0.9, seed=77)
    g2 = counters(S)
    ds = delta(g1, g2)
    check(ds["cache_miss"] == 1 and ds["cache_hit"] == 1 and
          s1.choices[0].message.content == s2.choices[0].message.content,
          f"a seeded request is cached {ds}")

    # TTL: brief (2 s)
    h0 = counters(S)
    chat(cl, "brief", "What is the capital of Spain?", max_tokens=12)
    chat(cl, "brief", "What is the capital of Spain?", max_tokens=12)
    h1 = counters(S)
    time.sleep(3.2)
    chat(cl, "brief", "What is the capital of Spain?", max_tokens=12)
    h2 = counters(S)
    check(delta(h0, h1)["cache_hit"] == 1 and delta(h0, h1)["cache_miss"] == 1,
          f"brief: miss then hit within its TTL {delta(h0, h1)}")
    check(delta(h1, h2)["cache_hit"] == 0 and delta(h1, h2)["cache_miss"] == 1 and
          delta(h1, h2)["eng_tok"] > 0, f"brief: a miss again after 2 s {delta(h1, h2)}")

    # SIGHUP while a stream on `plain` is in flight: adds fresh, removes plain
    stream = cl.completions.create(model="plain", prompt="Once upon a time, in a kingdom",
                                   max_tokens=100, stream=True)
    it = iter(stream)
    first = next(it)
    check(first.choices and first.choices[0].finish_reason is None,
          "the stream is in flight before the reload")
    with open(cfg, "w") as fh:
        fh.write(CONFIG2)
    S.p.send_signal(signal.SIGHUP)
    t0 = time.time()
    while time.time() - t0 < 10 and "fresh" not in [m["id"] for m in models(S)]:
        time.sleep(0.02)
    ids = [m["id"] for m in models(S)]
    check(ids == [MODEL_ID, "classify", "brief", "chat", "fresh"],
          f"after SIGHUP /v1/models: {ids} ({time.time() - t0:.2f} s)")
    rest, fin = 0, None
    for ch in it:
        rest += 1
        if ch.choices and ch.choices[0].finish_reason:
            fin = ch.choices[0].finish_reason
    check(rest > 0 and fin in ("stop", "length"),
          f"the stream in flight completes across the reload ({rest} more chunks, {fin})")
    try:
        cl.completions.create(model="plain", prompt="hi", max_tokens=2)
        check(False, "a removed specialist is refused")
    except openai.NotFoundError:
        check(True, "the removed specialist is 404")
    r = chat(cl, "fresh", "Say hello.", max_tokens=4)
    check(r.usage.completion_tokens >= 1, "the added specialist answers")

    # SIGHUP with a broken file: the table in use stays
    with open(cfg, "w") as fh:
        fh.write(BROKEN)
    S.p.send_signal(signal.SIGHUP)
    t0 = time.time()
    while time.time() - t0 < 10 and "keeping the specialists in use" not in S.logtext():
        time.sleep(0.02)
    log = S.logtext()
    check(f"{cfg}:" in log and "temperature" in log and "keeping the specialists in use" in log,
          "a broken config on SIGHUP is logged with its file and line")
    ids = [m["id"] for m in models(S)]
    check(ids == [MODEL_ID, "classify", "brief", "chat", "fresh"], f"the table is kept: {ids}")
    r = chat(cl, "fresh", "Say hello.", max_tokens=4)
    check(r.usage.completion_tokens >= 1, "the kept specialist still answers")


if __name__ == "__main__":
    main()

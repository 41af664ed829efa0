#!/usr/bin/env python3
"""Overlap (batcher/bat_sched.h "Overlap"): plan N+1 while the engine runs N.

Through a real `favo serve`: the same greedy requests, sent concurrently so
they share steps, give exactly the same texts with overlap on (the default)
and off (FAVO_NO_OVERLAP=1); with it on the engine fed decodes from its own
previous answers (its drain line counts them), with it off none. Some
requests carry frequency/presence penalties, so a fed decode's history (the
fed id last) is exercised too.
"""
import json
import re
import threading

from serve_util import MODEL_ID, Serve, check, finish, require_model

require_model()

PROMPTS = ["The history of the printing press", "A recipe for bread starts with",
           "The rules of chess say that", "In the year 1900 the city of",
           "The best way to learn a language is", "Rivers flow towards the sea because",
           "Write a short poem about the moon:", "Three facts about elephants:",
           "The capital of France is", "To make a paper plane, first"]
PENALTIES = [(0.0, 0.0), (0.7, 0.0), (0.0, 0.6)]
MAXTOK = 40


def run(env):
    S = Serve(env=env, prefix="ovl")
    out, lock = {}, threading.Lock()

    def one(k, prompt, fp, pp):
        st, body = S.post("/v1/completions", {
            "model": MODEL_ID, "prompt": prompt, "max_tokens": MAXTOK, "temperature": 0,
            "frequency_penalty": fp, "presence_penalty": pp})
        text = json.loads(body)["choices"][0]["text"] if st == 200 else f"HTTP {st}"
        with lock:
            out[k] = text

    jobs = [(f"{i}/{j}", p, fp, pp) for i, p in enumerate(PROMPTS)
            for j, (fp, pp) in enumerate(PENALTIES)]
    th = [threading.Thread(target=one, args=j) for j in jobs]
    for t in th:
        t.start()
    for t in th:
        t.join()
    rc = S.stop()
    log = S.logtext()
    m = re.search(r"(\d+) decodes fed, (\d+) not", log)
    fed = (int(m.group(1)), int(m.group(2))) if m else None
    mode = re.search(r"overlap (on|off)", log)
    return out, rc, fed, mode.group(1) if mode else None


def main():
    on, rc_on, fed_on, mode_on = run({})
    off, rc_off, fed_off, mode_off = run({"FAVO_NO_OVERLAP": "1"})
    check(mode_on == "on" and mode_off == "off",
          f"overlap is on by default and off with FAVO_NO_OVERLAP=1 ({mode_on}, {mode_off})")
    check(rc_on == 0 and rc_off == 0, f"both servers drain and exit 0 ({rc_on}, {rc_off})")
    check(all(not v.startswith("HTTP") for v in on.values()) and
          all(not v.startswith("HTTP") for v in off.values()),
          f"every request answered 200 ({len(on)} + {len(off)})")
    same = [k for k in on if on[k] == off.get(k)]
    check(len(same) == len(on) == len(off) and len(on) == len(PROMPTS) * len(PENALTIES),
          f"greedy texts identical with and without overlap ({len(same)} of {len(on)}"
          + ("" if len(same) == len(on) else f"; differ: {sorted(set(on) - set(same))[:5]}") + ")")
    check(fed_on is not None and fed_on[0] > 0,
          f"with overlap the engine fed decodes from its own answers ({fed_on})")
    check(fed_off is None or fed_off[0] == 0, f"without overlap it fed none ({fed_off})")
    finish()


main()

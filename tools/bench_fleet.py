#!/usr/bin/env python3
"""A fleet benchmark: the shared-prefix workload through the SGLang Model Gateway over two radixserve replicas,
`cache_aware` against `round_robin`, side by side in one run, and one replica alone for its hit rate.

    make bench-fleet      # = .venv/bin/python tools/bench_fleet.py --bin bin/radixserve

Each replica runs on one thread (libtorch --threads 1, RAYON_NUM_THREADS=1) with a KV pool that holds fewer
groups' prefixes than the workload has, so where a group's requests land decides what is recomputed. The workload:
GROUPS groups of REQUESTS requests sharing a long prefix, shuffled, CONCURRENCY at a time, a few output tokens each.
"One replica" holds the two replicas' KV memory together (the same workload on one server of the fleet's cache size)
and, for reference, one of the fleet's own size.
Hit rate = cached prompt tokens / prompt tokens, from the responses' `usage`. Caches are flushed between runs.
The last line reads `fleet: cache_aware X req/s (hit rate H%), round_robin Y req/s (hit rate G%), one replica hit
rate S%, cache_aware/round_robin R.RRx`.
"""
import argparse
import concurrent.futures as cf
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(url, timeout=300):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return r.read()
        except Exception:
            time.sleep(0.2)
    raise SystemExit(f"{url} never answered 200")


def post(url, body, timeout=600):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def replica(binary, model, slots, state_dir):
    port = free_port()
    env = dict(os.environ, RAYON_NUM_THREADS="1")
    p = subprocess.Popen([binary, "serve", "--model", model, "--port", str(port), "--threads", "1",
                          "--max-total-tokens", str(slots), "--state-dir", state_dir],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"
    wait(base + "/health")
    return p, base


def router(workers, policy):
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1",
                          "--port", str(port), "--policy", policy, "--worker-urls", *workers],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while time.time() - t0 < 120:
        try:
            with urllib.request.urlopen(base + "/v1/models", timeout=5) as r:
                if b"unknown" not in r.read():
                    return p, base
        except Exception:
            pass
        time.sleep(0.3)
    p.kill()
    raise SystemExit("the gateway never registered the workers")


def workload(groups, per_group, prefix_words, seed):
    rng = random.Random(seed)
    words = ["cache", "prefix", "router", "replica", "token", "model", "serve", "batch", "radix", "tree", "page",
             "engine", "latency", "throughput", "request", "prompt"]
    prefixes = [f"Document {g}: " + " ".join(rng.choice(words) for _ in range(prefix_words)) for g in range(groups)]
    reqs = [(g, f"{prefixes[g]}\nQuestion {i}: what is this document about?") for g in range(groups)
            for i in range(per_group)]
    rng.shuffle(reqs)
    return reqs


def run(base, model, reqs, concurrency, max_tokens):
    def one(item):
        g, prompt = item
        v = post(base + "/v1/completions", {"model": model, "prompt": prompt, "max_tokens": max_tokens,
                                            "temperature": 0})
        u = v["usage"]
        return u["prompt_tokens"], u.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    t0 = time.time()
    with cf.ThreadPoolExecutor(concurrency) as ex:
        results = list(ex.map(one, reqs))
    wall = time.time() - t0
    prompt = sum(p for p, _ in results)
    cached = sum(c for _, c in results)
    return len(reqs) / wall, 100.0 * cached / max(prompt, 1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "bin/radixserve"))
    ap.add_argument("--model", default=os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--requests", type=int, default=6, help="requests per group")
    ap.add_argument("--prefix-words", type=int, default=600)
    ap.add_argument("--slots", type=int, default=3000, help="KV slots per replica (fewer than all prefixes need)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-out/fleet"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    procs = []
    try:
        r1 = replica(a.bin, a.model, a.slots, os.path.join(a.out, "state-1"))
        r2 = replica(a.bin, a.model, a.slots, os.path.join(a.out, "state-2"))
        procs += [r1[0], r2[0]]
        workers = [r1[1], r2[1]]
        model = json.loads(wait(r1[1] + "/v1/models"))["data"][0]["id"]
        reqs = workload(a.groups, a.requests, a.prefix_words, 7)
        prompt_tokens = post(r1[1] + "/tokenize", {"prompt": reqs[0][1]})["count"]
        print(f"workload: {a.groups} groups x {a.requests} requests, prompts of ~{prompt_tokens} tokens, "
              f"{a.slots} KV slots per replica, concurrency {a.concurrency}", file=sys.stderr)
        results = {}
        for policy in ("cache_aware", "round_robin"):
            for w in workers:
                post(w + "/flush_cache", {})
            rp, base = router(workers, policy)
            try:
                results[policy] = run(base, model, reqs, a.concurrency, a.max_tokens)
            finally:
                rp.kill()
                rp.wait()
            print(f"{policy}: {results[policy][0]:.2f} req/s, hit rate {results[policy][1]:.1f}%", file=sys.stderr)
        post(r1[1] + "/flush_cache", {})
        small = run(r1[1], model, reqs, a.concurrency, a.max_tokens)
        print(f"one replica ({a.slots} slots): {small[0]:.2f} req/s, hit rate {small[1]:.1f}%", file=sys.stderr)
        for p in procs:
            p.terminate()
            p.wait()
        procs = []
        big = replica(a.bin, a.model, 2 * a.slots, os.path.join(a.out, "state-3"))
        procs.append(big[0])
        single = run(big[1], model, reqs, a.concurrency, a.max_tokens)
        print(f"one replica ({2 * a.slots} slots): {single[0]:.2f} req/s, hit rate {single[1]:.1f}%", file=sys.stderr)
    finally:
        for p in procs:
            p.terminate()
            p.wait()
    (ca, ca_hit), (rr, rr_hit) = results["cache_aware"], results["round_robin"]
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"args": vars(a), "cache_aware": results["cache_aware"], "round_robin": results["round_robin"],
                   "one_replica_fleet_memory": single, "one_replica_own_memory": small}, f, indent=1)
    print(f"fleet: cache_aware {ca:.2f} req/s (hit rate {ca_hit:.0f}%), round_robin {rr:.2f} req/s (hit rate "
          f"{rr_hit:.0f}%), one replica hit rate {single[1]:.0f}%, cache_aware/round_robin {ca / rr:.2f}x")


if __name__ == "__main__":
    main()

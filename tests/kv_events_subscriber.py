"""A KV-cache event subscriber decoding radixserve's stream the way llm-d's KV-cache indexer does (ZMQ SUB bound on
ENDPOINT, topic filter "kv@", three frames: topic kv@<pod>@<model>, 8-byte big-endian sequence number, msgpack
batch [ts, [event...]] with array-encoded tagged events), rebuilding the set of cached block hashes.

Usage: python tests/kv_events_subscriber.py ENDPOINT STOP_FILE   (run by tests/tests/kv_events.rs)
Prints "ready" once bound; after STOP_FILE appears and nothing has arrived for a second, prints one JSON line:
{"blocks": [...sorted hashes...], "messages": n, "events": n, "contiguous": bool, "topics": [...]}.
"""
import json
import os
import sys
import time

import msgpack
import zmq


def main(endpoint, stop_file):
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.bind(endpoint)
    sub.setsockopt_string(zmq.SUBSCRIBE, "kv@")
    print("ready", flush=True)
    blocks, seqs, topics, n_events = set(), [], set(), 0
    last = time.time()
    deadline = time.time() + 300
    while time.time() < deadline:
        if sub.poll(100):
            topic, seq, payload = sub.recv_multipart()
            last = time.time()
            parts = topic.decode().split("@")
            assert len(parts) == 3 and parts[0] == "kv", topic
            topics.add(topic.decode())
            seqs.append(int.from_bytes(seq, "big"))
            batch = msgpack.unpackb(payload, raw=False)
            assert isinstance(batch, list) and len(batch) >= 2 and isinstance(batch[0], float), batch
            for ev in batch[1]:
                n_events += 1
                tag = ev[0]
                if tag == "BlockStored":
                    hashes, parent, tokens, block_size = ev[1], ev[2], ev[3], ev[4]
                    assert len(tokens) == len(hashes) * block_size, ev
                    assert parent is None or isinstance(parent, int)
                    for h in hashes:
                        assert h not in blocks, f"block {h} stored twice"
                        blocks.add(h)
                elif tag == "BlockRemoved":
                    for h in ev[1]:
                        assert h in blocks, f"block {h} removed but never stored"
                        blocks.discard(h)
                elif tag == "AllBlocksCleared":
                    blocks.clear()
                else:
                    raise AssertionError(f"unknown tag {tag}")
        elif os.path.exists(stop_file) and time.time() - last > 1.0:
            break
    contiguous = seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else False
    print(json.dumps({"blocks": sorted(blocks), "messages": len(seqs), "events": n_events,
                      "contiguous": contiguous, "topics": sorted(topics)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

# python/example.py: the README's Python example (run: PYTHONPATH=python python3 python/example.py).
import numpy as np
import hisa

rng = np.random.default_rng(0)
topics = rng.standard_normal((8, 128)).astype(np.float32)           # 8 topics x 512 tokens each
keys = (np.repeat(topics, 512, axis=0) + 0.5 * rng.standard_normal((4096, 128))).astype(np.float32)
with hisa.Runtime(n_heads=4, block_size=64, top_blocks=16, topk=256, max_context=8192,
                  max_prefill_queries=4096) as rt:                   # device="cuda:0" on a GPU
    seq = rt.seq_open()
    rt.seq_extend(seq, 4096)                                         # reserve positions 0..4095
    rt.write_range(seq, 0, 0, keys=keys)                             # layer 0, from position 0
    q, w = np.tile(topics[3], (1, 4, 1)), np.ones((1, 4), np.float32)  # [seqs, heads, (128)]
    top = rt.select_decode(0, [seq], q, w)                           # int32 [1, 256]: HISA
    flat = rt.select_decode(0, [seq], q, w, mode="flat")             # exact DSA top-k
print("topic 3 found:", (top // 512 == 3).all(), "same as flat:", set(top.flat) == set(flat.flat))

"""The K-split MatMul across hosts: one torch.distributed (gloo) rank per process, launched by
torchrun. Every rank derives A and B from the same seed and keeps only its K-slice (a real job
would load only its shard); each runs its ONNX MatMul and all_reduce(SUM) combines the partials.

    torchrun --nnodes 2 --nproc-per-node 1 --node-rank R --master-addr HOST0 --master-port 29500 \\
        -m pipeline.parallel.dist --size-n 2048 --size-k 2048 --size-m 2048
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time

import numpy as np

from .operands import split_sizes
from .worker import DTYPES, matmul_session


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.parallel.dist")
    parser.add_argument("--size-n", dest="n", type=int, default=512)
    parser.add_argument("--size-k", dest="k", type=int, default=512)
    parser.add_argument("--size-m", dest="m", type=int, default=512)
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads per rank")
    parser.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds a rank waits for its peers (rendezvous and all_reduce) before failing",
    )
    args = parser.parse_args(argv)

    import torch
    import torch.distributed as dist

    if not args.timeout > 0:
        parser.error(f"--timeout must be > 0 seconds, got {args.timeout}")
    # torchrun's env:// rendezvous; the timeout bounds every collective too, so a stopped or lost
    # peer ends this rank with an error instead of leaving it in all_reduce (gloo's default: 30 min)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout))
    rank, world = dist.get_rank(), dist.get_world_size()
    dtype = DTYPES[args.dtype]
    rng = np.random.default_rng(args.seed)
    a = rng.standard_normal((args.n, args.k)).astype(dtype)
    b = rng.standard_normal((args.k, args.m)).astype(dtype)
    offsets = np.concatenate([[0], np.cumsum(split_sizes(args.k, world))])
    lo, hi = offsets[rank], offsets[rank + 1]
    a_i, b_i = np.ascontiguousarray(a[:, lo:hi]), np.ascontiguousarray(b[lo:hi])
    session = matmul_session(dtype, args.threads)

    start = time.perf_counter()
    partial = torch.from_numpy(session.run(None, {"A": a_i, "B": b_i})[0])
    try:
        dist.all_reduce(partial, op=dist.ReduceOp.SUM)
    except RuntimeError as exc:  # gloo's timeout or a peer that went away
        print(
            f"rank {rank}: all_reduce failed ({str(exc).splitlines()[0][:160]}); "
            f"a peer stopped or did not answer within {args.timeout:g} s",
            file=sys.stderr,
        )
        return 1
    seconds = time.perf_counter() - start
    status = 0
    if rank == 0:
        ref = a.astype(np.float64) @ b.astype(np.float64)
        rel = float(np.abs(partial.numpy() - ref).max() / max(np.abs(ref).max(), 1e-300))
        tol = 1e-12 if args.dtype == "float64" else 1e-5
        print(
            f"world {world}: C [{args.n}, {args.m}] in {seconds * 1e3:.1f} ms; "
            f"max rel diff vs float64 reference {rel:.2e} ({'ok' if rel <= tol else 'FAIL'})"
        )
        status = 0 if rel <= tol else 1
    dist.destroy_process_group()
    return status


if __name__ == "__main__":
    sys.exit(main())

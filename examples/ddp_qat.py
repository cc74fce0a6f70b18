"""Quantization-aware training under DDP, launched with torchrun: every rank exports the same qpack.

    torchrun --nproc_per_node 2 examples/ddp_qat.py                 # CPU: gloo; GPUs: nccl, one per rank
    torchrun --nproc_per_node 8 examples/ddp_qat.py --recipe w4a8 --epochs 5 --out out/ddp
    torchrun --nproc_per_node 2 examples/ddp_qat.py --check --epochs 1   # what the test suite runs

Every rank:
1. builds the same float model (DigitsCNN trained on scikit-learn digits; swap in your own);
2. calls ``qgraph.quantize(..., qat=True)`` with ITS OWN calibration shard: qgraph sees the process
   group and makes the ranks agree (observer statistics reduced over all ranks, state broadcast
   from rank 0; ``qgraph.distributed``);
3. trains the quantized model wrapped in ``DistributedDataParallel`` on its shard of each epoch;
4. exports ``<out>/rank<r>.qpack`` and reports its test accuracy.

``--check`` adds the assertions the test suite relies on: the synchronised calibration equals one
process calibrating on all shards together, and all ranks' qpack files are byte-identical (rank 0
exits non-zero otherwise).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import qgraph  # noqa: E402
from examples.models import accuracy, calib_batches, load_digits_data, train_digits_cnn  # noqa: E402


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="w8a8")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--out", default="out/ddp_qat")
    p.add_argument("--cpu", action="store_true", help="gloo on CPU even when GPUs are present")
    p.add_argument("--check", action="store_true", help="assert synchronised calibration and identical qpacks")
    p.add_argument("--no-sync", action="store_true", help="calibrate each rank on its own shard (sync_ranks=False)")
    a = p.parse_args(argv)

    cuda = torch.cuda.is_available() and not a.cpu
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank))
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    torch.set_num_threads(1)  # several ranks may share one machine's cores

    x_tr, y_tr, x_te, y_te = load_digits_data()
    fp = train_digits_cnn(epochs=10)
    shard = calib_batches(x_tr[rank::world], n=4, batch_size=32)  # this rank's calibration data only
    qm = qgraph.quantize(fp, x_tr[:2], a.recipe, calib_data=shard, qat=True, sync_ranks=False if a.no_sync else None)

    failures = []
    if a.check:  # one process calibrating on every rank's shard must give the same quantizers
        union = [b for r in range(world) for b in calib_batches(x_tr[r::world], n=4, batch_size=32)]
        ref = qgraph.quantize(fp, x_tr[:2], a.recipe, calib_data=union, qat=True, sync_ranks=False)
        ours, theirs = qm.state_dict(), ref.state_dict()
        diff = [k for k in ours if k.endswith(("scale", "zero_point")) and not torch.equal(ours[k], theirs[k])]
        if diff:
            failures.append(f"rank {rank}: calibration differs from the all-shards reference at {diff[:3]}")

    qm = qm.to(dev).train()
    ddp = DistributedDataParallel(qm, device_ids=[local] if cuda else None)
    opt = torch.optim.SGD(ddp.parameters(), lr=a.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)  # the same permutation on every rank; each takes its slice
    for _ in range(a.epochs):
        perm = torch.randperm(len(x_tr), generator=gen)[rank::world]
        for i in range(0, len(perm), 32):
            idx = perm[i:i + 32]
            opt.zero_grad(set_to_none=True)
            loss_fn(ddp(x_tr[idx].to(dev)), y_tr[idx].to(dev)).backward()
            opt.step()

    del ddp, opt  # DDP's reducer holds gloo work objects; freed now, not during interpreter teardown
    qm = qm.cpu().eval()
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, f"rank{rank}.qpack")
    qm.export(path, formats=("qpack",))
    acc = accuracy(qm, x_te, y_te)
    dist.barrier()
    accs = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(accs, torch.tensor([acc]))  # gloo/nccl both carry float tensors; nothing pickled
    if rank == 0:
        shas = [_sha(os.path.join(a.out, f"rank{r}.qpack")) for r in range(world)]
        print(f"{world} ranks, recipe {a.recipe}, {a.epochs} epochs, backend {dist.get_backend()}")
        print("| rank | test accuracy | qpack sha256 |\n|---|---|---|")
        for r in range(world):
            print(f"| {r} | {100 * float(accs[r]):.2f}% | {shas[r][:16]} |")
        same = len(set(shas)) == 1
        print("every rank exported the same qpack" if same else "the ranks' qpacks DIFFER")
        if a.check and not same:
            failures.append("qpack files differ between ranks")
    for f in failures:
        print("CHECK FAILED:", f, file=sys.stderr)
    dist.barrier()  # no rank tears the group down while another still talks to it (gloo aborts on that)
    dist.destroy_process_group()
    return 1 if failures else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The work is done and written. gloo's threads can abort the interpreter's teardown afterwards
    # ("terminate called without an active exception", about one run in 40 on 2 loaded cores),
    # which torchrun reports as a failed rank; leave without running C++ static destructors.
    os._exit(code)

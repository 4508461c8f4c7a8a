"""One run over several processes: PyTorch's own distributed engine, launched with torchrun.

``train.processes=N`` (N > 1) makes the run command start N workers through ``torch.distributed.run`` (torchrun's
programmatic entry) on this machine; each worker (``lora_study.run.worker``) reads the run's resolved config from a
file, joins the process group (NCCL on CUDA, one GPU per worker; gloo on CPU) and runs the same
``run.execute`` as one process does. Only the launching command touches Hydra, so there is one run directory,
Hydra's, and rank 0 alone writes into it.

What each process does:

- Data: every process draws the same shuffled global batch of ``train.batch_size × processes`` examples (padded
  as one batch) and takes its own contiguous slice of ``train.batch_size`` rows, so the global batch per
  optimizer step is ``train.batch_size × train.grad_accum × processes`` and the examples and their order are
  those of one process with ``train.batch_size × processes``.
- Weights: the method's ``distributed`` attribute picks the wrapping. ``ddp`` (LoRA, QLoRA, the frozen base,
  subspace training: few trainable parameters) keeps a full replica per process and averages gradients;
  ``fsdp`` (full finetuning) applies FSDP2's ``fully_shard`` to every transformer block, then to the whole
  model, so weights, gradients and AdamW state are sharded over the processes.
- Loss: gradients are averaged over processes. A classification loss is a mean over examples, so equal shards
  give exactly the mean over the global batch (as one process, to float rounding). The causal-LM loss is a mean
  over each shard's completion tokens, so the step uses the mean of the shards' token means: the same choice
  gradient accumulation makes for micro-batches, equal to one process only when shards hold as many tokens.
- After training the unsharded weights are gathered on rank 0 (DDP: its replica; FSDP: a full state dict loaded
  into a freshly built copy of the model), and rank 0 alone computes ΔW, spectra, the adapter, the test metric,
  held-out probes, truncation and latency exactly as one process does; the other processes exit. Periodic
  validation runs on every process (identical results; FSDP needs every process for a forward pass). Held-out
  probes during training run on rank 0 with DDP (the others wait) and are skipped with FSDP. Optimizer-state
  and gradient bytes are measured per process and summed; the summary keeps the per-device values too.

A failure in any process stops the others (torchrun), fails the run with that process's reason, removes
the partial ΔW, spectra, adapter or model, and records ``status: failed`` in ``summary.json``.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import tempfile
import time
import warnings
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.distributed as dist

from ..schema import ConfigError

STRATEGIES = ("ddp", "fsdp")


class RunFailed(RuntimeError):
    """A process of a multi-process run failed; the message names the rank and its reason."""


# -- where this process stands ----------------------------------------------------------------------

def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def in_worker() -> bool:
    """Whether this process was started by torchrun (it sets WORLD_SIZE and LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


# -- checks before any work ---------------------------------------------------------------------------

def check(cfg) -> None:
    """Refuse, in one sentence, a process count that the method or the device cannot honour."""
    n = int(cfg.train.processes)
    if n == 1:
        return
    from .. import methods
    method = methods.get(cfg.method.name)
    if method.distributed not in STRATEGIES:
        raise ConfigError(f"method={method.name} runs on one process only; set train.processes=1.")
    device = cfg.train.device
    cuda = torch.cuda.is_available()
    if device == "mps" or (device == "auto" and not cuda and _mps()):
        raise ConfigError(f"train.processes={n} needs CUDA GPUs or the CPU, and MPS runs one process; "
                          "set train.processes=1 or train.device=cpu.")
    if device == "cuda" or (device == "auto" and cuda):
        have = torch.cuda.device_count()
        if n > have:
            raise ConfigError(f"train.processes={n} needs {n} CUDA devices, one per process, but this machine has "
                              f"{have}; set train.processes to at most {have} (or train.device=cpu).")


def _mps() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


# -- the process group (inside a worker) --------------------------------------------------------------

@contextlib.contextmanager
def process_group(device: torch.device):
    """Join torchrun's process group (NCCL for CUDA, gloo otherwise) for the duration of the block; yields this
    process's device (cuda:LOCAL_RANK on CUDA)."""
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    # rank 0 prepares held-out features alone while the others wait in their first collective
    dist.init_process_group(backend, timeout=datetime.timedelta(hours=2),
                            device_id=device if device.type == "cuda" else None)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def seed_ranks(seed: int) -> None:
    """Independent random streams (dropout) on ranks > 0; rank 0 keeps the stream one process would have."""
    if rank() > 0:
        torch.manual_seed(int(seed) + 1_000_003 * rank())


# -- the training loop's view --------------------------------------------------------------------------

def shard_batch(batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """This process's contiguous slice of a global batch (every tensor's first dimension); unchanged on one."""
    if not active():
        return batch
    n = batch["input_ids"].shape[0]
    per = n // world_size()
    lo = rank() * per
    return {k: v[lo:lo + per] if v.dim() and v.shape[0] == n else v for k, v in batch.items()}


def mean(value: float) -> float:
    """The mean of ``value`` over processes (the global batch's loss); unchanged on one."""
    return total(value) / world_size() if active() else value


def unwrap(model):
    """The module under a DDP wrapper (evaluation, generation); anything else as it is."""
    from torch.nn.parallel import DistributedDataParallel
    return model.module if isinstance(model, DistributedDataParallel) else model


# -- wrapping and gathering ----------------------------------------------------------------------------

def wrap(model: torch.nn.Module, strategy: str, device: torch.device) -> torch.nn.Module:
    """DDP (a replica per process, gradients averaged) or FSDP2 (``fully_shard`` per transformer block, then
    the root). A model with nothing to train is left as it is (evaluation only)."""
    if not any(p.requires_grad for p in model.parameters()):
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        # Every trainable parameter (LoRA factors, the head, θ_d) takes part in every forward pass, so no search
        # for unused ones; peft's wrapper is an ordinary module to DDP. Buffers are constants built alike on every
        # process (position ids, the subspace projection's int8/int16 indices, which gloo cannot broadcast), so
        # they are never synchronised: broadcast_buffers=False, which torch >= 2.13 marks deprecated but still
        # recommends for exactly this until its replacement (init_sync_buffers) exists.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
            return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                           broadcast_buffers=False)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from ..models.structure import transformer_blocks
    mesh = init_device_mesh(device.type, (world_size(),))
    for block in transformer_blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def gather_model(model: torch.nn.Module, strategy: str, rebuild: Callable[[], Any]):
    """On rank 0, the trained model with its full weights as a plain module (None elsewhere). DDP: the replica.
    FSDP: every process joins in gathering a full state dict onto rank 0's CPU, which loads it into the plain
    copy that ``rebuild()`` returns as ``(prepared, model)``; otherwise ``(None, model)``."""
    if strategy == "ddp" or not any(p.requires_grad for p in model.parameters()):
        return (None, unwrap(model)) if is_main() else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main():
        return None
    prepared, plain = rebuild()
    plain.load_state_dict(full)
    return prepared, plain


def gather_stats(values: Dict[str, Optional[float]]) -> Optional[Dict[str, List]]:
    """{name: [value of rank 0, rank 1, ...]} on rank 0, None elsewhere (one collective on every rank)."""
    out: List[Any] = [None] * world_size()
    dist.all_gather_object(out, values)
    return {k: [o[k] for o in out] for k in values} if is_main() else None


def total(value: float) -> float:
    """The sum of ``value`` over processes."""
    on_gpu = dist.get_backend() == "nccl"
    t = torch.tensor([float(value)], dtype=torch.float64,
                     device=torch.device("cuda", torch.cuda.current_device()) if on_gpu else "cpu")
    dist.all_reduce(t)
    return float(t.cpu())


# -- launching (the run command's side) ----------------------------------------------------------------

def launch(cfg, out) -> Dict[str, Any]:
    """Run ``cfg`` as ``train.processes`` workers under torchrun into the run directory ``out``; returns the
    summary rank 0 wrote. A failure anywhere raises ConfigError (a bad setting found in a worker) or RunFailed,
    after recording it in ``summary.json`` with the failing rank's reason and removing partial artifacts."""
    from omegaconf import OmegaConf
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    n = int(cfg.train.processes)  # cfg was validated by the caller (lora_study.config.validate)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="lora-study-") as tmp:
        path = os.path.join(tmp, "config.yaml")
        OmegaConf.save(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)), path)
        args = get_args_parser().parse_args([
            "--standalone", "--nnodes=1", f"--nproc-per-node={n}", "--max-restarts=0", "--monitor-interval=0.2",
            "-m", "lora_study.run.worker", path, str(out.path)])
        try:
            with _threads_per_process(n):
                run(args)
        except ChildFailedError as e:
            failed_rank, failure = e.get_first_failure()
            reason = _reason(failure)
            if reason.startswith("ConfigError: "):
                raise ConfigError(reason[len("ConfigError: "):]) from None
            message = f"process {failed_rank} of {n} failed: {reason}"
            _record_failure(cfg, out, message, failed_rank, time.time() - started)
            raise RunFailed(message) from None
    return out.summary()


@contextlib.contextmanager
def _threads_per_process(n: int):
    """Give each worker its share of the CPU cores (torchrun's default is one thread each, with a warning)."""
    before = os.environ.get("OMP_NUM_THREADS")
    if before is None:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // n))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)


def _reason(failure) -> str:
    """'<ExceptionType>: <message>' from a worker's error file (written by ``@record``), or the exit signal."""
    msg = failure.message
    if isinstance(msg, dict):
        msg = msg.get("message", "")
    return str(msg).strip() or f"exit code {failure.exitcode}"


def _record_failure(cfg, out, reason: str, failed_rank: int, seconds: float) -> None:
    """Keep what rank 0 recorded if it saw the failure itself (a diverged loss); otherwise write the failure.
    Either way, no partial ΔW, spectra, adapter or model stays behind."""
    from ..artifacts import ArtifactError
    out.discard_partial()
    try:
        if out.summary().get("status") == "failed":
            return
    except ArtifactError:
        pass
    out.write_summary({"status": "failed", "reason": reason, "failed_rank": failed_rank,
                       "member": cfg.run.member, "method": cfg.method.name, "seed": int(cfg.train.seed),
                       "processes": int(cfg.train.processes), "wall_time_s": seconds})

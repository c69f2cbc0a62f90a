"""Partial FC: a margin-softmax head whose class centres are sharded over the data-parallel ranks.

With hundreds of thousands of identities the (C x D) centre matrix and the (B x C) logits dominate
memory; insightface's Partial FC v2 splits the classes into one contiguous shard per rank. Each
step it all-gathers the embeddings and labels of the global batch, computes the cosine logits of
the whole batch against its own shard only, applies the margin at the label where the label falls
in the shard, and evaluates the softmax cross-entropy *distributed*: the row maxima and the sums of
exponentials are all-reduced, so the loss is exactly the full-softmax loss over all C classes,
averaged over the global batch, and identical on every rank. With `sample_rate < 1` each rank keeps
only the classes present in the global batch plus random others, up to `sample_rate` of its shard.

In a single process (no process group, or world size 1) the shard is the whole matrix and this is
the ordinary full margin head followed by `F.cross_entropy`.

Gradients. The centre shard gets its exact gradient (it is not DDP-synchronised: each rank owns
different centres, so the module declares `ddp_ignore = True`). The embeddings' gradient is the
all-reduced gradient of the global loss times the world size, as in insightface: DDP then averages
the backbone gradients over ranks, and the backbone ends up with the gradient of the global-batch
mean loss, the same as one process with the whole batch.

Margins are computed here as the face heads define them (`models/heads.py`): ArcFace
s*cos(theta + m) at the label with the `cos(pi - m)` fallback (easy_margin off, gradient through
the margin), CosFace s*(cos - m). Any other margin is a callable `(cosine, labels) -> logits`
where label -1 marks a row whose class lives on another rank (no margin there), so a head with
supplied, frozen centres (AMLDistill's teacher centres) reuses the same machinery.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from utility.errors import CheckpointError, ConfigError

MarginFn = Callable[[Tensor, Tensor], Tensor]

#: rows of the centre matrix drawn from one seeded generator, so the initial centres do not depend
#: on how the classes are split over ranks
_INIT_CHUNK_ROWS = 4096


def margin_logits(cosine: Tensor, labels: Tensor, margin: str, s: float, m: float) -> Tensor:
    """Scaled logits with the additive margin applied at each row's label column.

    `cosine` (N, K) holds cosines clamped to [-1, 1]; `labels` (N,) holds the column of each row's
    class, or -1 when the row's class is not among these K columns (then the row has no margin).
    ArcFace: s*cos(theta + m) = s*(cos*cos(m) - sin*sin(m)) where cos > cos(pi - m), else
    s*(cos - m*sin(pi - m)); CosFace: s*(cos - m). Non-label columns: s*cos.
    """
    if margin not in ("arcface", "cosface"):
        raise ConfigError(f"Partial FC margin must be 'arcface', 'cosface' or a callable, got {margin!r}")
    # gather/scatter over every row (rows without a label here keep their value): no data-dependent
    # shapes, so no host synchronisation on CUDA
    valid = (labels >= 0).unsqueeze(1)
    columns = labels.clamp(min=0).unsqueeze(1)
    target = cosine.gather(1, columns)
    if margin == "arcface":
        sine = torch.sqrt((1.0 - target * target).clamp_min(0.0))
        shifted = target * math.cos(m) - sine * math.sin(m)
        target_new = torch.where(target > math.cos(math.pi - m), shifted, target - m * math.sin(math.pi - m))
    else:
        target_new = target - m
    logits = cosine.scatter(1, columns, torch.where(valid, target_new, target))
    return logits * s


class _AllGatherWithGrad(torch.autograd.Function):
    """Concatenate every rank's (N, D) tensor into (world*N, D); backward all-reduces the gradient,
    keeps this rank's rows and multiplies them by `grad_scale`."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, grad_scale: float) -> Tensor:
        world = dist.get_world_size()
        ctx.rank, ctx.rows, ctx.grad_scale = dist.get_rank(), tensor.shape[0], grad_scale
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        local = grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]
        return local * ctx.grad_scale, None


def all_gather_with_grad(tensor: Tensor, grad_scale: float = 1.0) -> Tensor:
    """Every rank's `tensor` stacked along dim 0 (equal shapes on every rank), with gradients
    flowing back to each rank's own rows (summed over the ranks' losses, times `grad_scale`)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return tensor
    return _AllGatherWithGrad.apply(tensor, grad_scale)


def _all_gather_plain(tensor: Tensor) -> Tensor:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class _DistCrossEntropy(torch.autograd.Function):
    """Softmax cross-entropy over classes split column-wise across ranks, mean over the rows.

    Each rank holds the (N, K_r) logits of its classes; `labels` is the column on this rank, or -1.
    Row maxima (MAX) and the sums of exponentials plus the target logit (SUM) are all-reduced, so
    loss_i = log(sum_j exp(x_ij - max_i)) - (x_iy - max_i) is the full-softmax value on every rank.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, labels: Tensor, distributed: bool) -> Tensor:
        row_max = logits.max(dim=1, keepdim=True)[0]
        if distributed:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX)
        shifted = logits - row_max
        exp = shifted.exp()
        valid = (labels >= 0).unsqueeze(1)  # masks, not row lists: no host synchronisation on CUDA
        columns = labels.clamp(min=0).unsqueeze(1)
        target = torch.where(valid, shifted.gather(1, columns), torch.zeros_like(row_max))
        sums = torch.cat([exp.sum(dim=1, keepdim=True), target], dim=1)
        if distributed:
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        sum_exp, target = sums[:, :1], sums[:, 1:]
        ctx.save_for_backward(exp.div_(sum_exp), valid, columns)
        return (sum_exp.log() - target).mean()

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor) -> tuple[Tensor, None, None]:
        probabilities, valid, columns = ctx.saved_tensors
        grad = probabilities.clone().scatter_add_(1, columns, -valid.to(probabilities.dtype))
        return grad * (grad_loss / probabilities.shape[0]), None, None


def dist_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean softmax cross-entropy when each rank holds a column block of the logits (see
    `_DistCrossEntropy`); in a single process equal to `F.cross_entropy(logits, labels)`."""
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    return _DistCrossEntropy.apply(logits.float(), labels, distributed)


def class_shard(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """(first class, number of classes) of rank's shard, split as insightface: the first
    `num_classes % world_size` ranks hold one class more."""
    base, extra = divmod(num_classes, world_size)
    return base * rank + min(rank, extra), base + int(rank < extra)


def _seeded_centres(num_classes: int, embedding_size: int, start: int, count: int, seed: int) -> Tensor:
    """Rows [start, start+count) of an N(0, 0.01^2) matrix that is the same for any sharding:
    each fixed block of rows comes from its own generator seeded with (seed, block)."""
    rows = []
    first_block, last_block = start // _INIT_CHUNK_ROWS, (start + count - 1) // _INIT_CHUNK_ROWS
    for block in range(first_block, last_block + 1):
        generator = torch.Generator().manual_seed((seed + 1_000_003 * block) % (2**63))
        block_start = block * _INIT_CHUNK_ROWS
        block_rows = min(_INIT_CHUNK_ROWS, num_classes - block_start)
        values = torch.randn(block_rows, embedding_size, generator=generator) * 0.01
        lo, hi = max(start, block_start) - block_start, min(start + count, block_start + block_rows) - block_start
        rows.append(values[lo:hi])
    return torch.cat(rows) if rows else torch.empty(0, embedding_size)


class PartialFC(nn.Module):
    """Margin softmax loss with class centres sharded over ranks (insightface Partial FC v2).

    `PartialFC(embedding_size, num_classes, margin="arcface", s=64.0, m=0.5, sample_rate=1.0, env=None)`;
    `forward(embeddings, labels) -> loss` takes this rank's raw (N, D) embeddings (normalised here)
    and (N,) labels and returns the mean loss over the global batch (every rank's N must be equal,
    as with `drop_last=True`). `.weight` is this rank's (local_classes, D) shard, initialised
    N(0, 0.01^2) identically for any world size. `env` is anything with `rank` and `world_size`
    (an `engine.distributed.DistEnv`); None reads the default process group. `weight` (C, D) supplies
    the centres (this rank keeps its rows) and `trainable=False` freezes them.
    """

    #: the shard differs per rank on purpose: DDP must neither broadcast nor average it
    ddp_ignore = True
    #: the head returns the loss, not logits (the distiller reads it as the classification term)
    computes_loss = True

    def __init__(self, embedding_size: int, num_classes: int, margin: str | MarginFn = "arcface",
                 s: float = 64.0, m: float = 0.5, sample_rate: float = 1.0, env: Any = None,
                 weight: Tensor | None = None, trainable: bool = True) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ConfigError(f"SOLVER.SAMPLE_RATE (Partial FC sample_rate) must lie in (0, 1], got {sample_rate}")
        if isinstance(margin, str) and margin not in ("arcface", "cosface"):
            raise ConfigError(f"Partial FC margin must be 'arcface' or 'cosface', got {margin!r}")
        if env is not None:
            self.rank, self.world_size = int(env.rank), int(env.world_size)
        elif dist.is_available() and dist.is_initialized():
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world_size = 0, 1
        if num_classes < self.world_size:
            raise ConfigError(f"Partial FC needs at least one class per rank: {num_classes} classes, "
                              f"{self.world_size} ranks")
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.margin, self.s, self.m = margin, float(s), float(m)
        self.sample_rate = float(sample_rate)
        self.class_start, self.num_local = class_shard(num_classes, self.rank, self.world_size)
        self.num_sample = max(1, int(self.sample_rate * self.num_local))
        self.weight = nn.Parameter(
            _seeded_centres(num_classes, embedding_size, self.class_start, self.num_local, self._shared_seed()),
            requires_grad=trainable)
        if weight is not None:
            self.load_full_weight(weight)
        #: local class indices used in the last step when sampling (sorted); None at sample_rate 1
        self.sampled_index: Tensor | None = None
        self._batch_size = 0

    def _distributed(self) -> bool:
        return self.world_size > 1

    def _shared_seed(self) -> int:
        """One seed drawn from the torch RNG, taken from rank 0 so every shard comes from it."""
        seed = torch.randint(0, 2**62, (1,), dtype=torch.int64)
        if self._distributed():
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
            seed = seed.to(device or "cpu")
            dist.broadcast(seed, src=0)
        return int(seed.item())

    def _margin(self, cosine: Tensor, labels: Tensor) -> Tensor:
        if callable(self.margin):
            return self.margin(cosine, labels)
        return margin_logits(cosine, labels, self.margin, self.s, self.m)

    def _sample(self, local_labels: Tensor) -> tuple[Tensor, Tensor]:
        """Keep the classes of this shard present in the global batch plus random others (insightface:
        topk of uniform noise with positives set to 2), up to `num_sample`; relabel to the kept order."""
        in_shard = local_labels >= 0
        positive = torch.unique(local_labels[in_shard], sorted=True)
        if self.num_sample >= positive.numel():
            noise = torch.rand(self.num_local, device=self.weight.device)
            noise[positive] = 2.0
            index = torch.topk(noise, k=self.num_sample)[1].sort()[0]
        else:
            index = positive
        remapped = local_labels.clone()
        remapped[in_shard] = torch.searchsorted(index, local_labels[in_shard])
        return index, remapped

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        labels = labels.reshape(-1).long()
        if self._distributed():
            if self._batch_size == 0:
                self._batch_size = embeddings.shape[0]
            if embeddings.shape[0] != self._batch_size:
                raise ValueError(f"Partial FC needs the same batch size on every rank and step "
                                 f"(first {self._batch_size}, now {embeddings.shape[0]}); use drop_last")
            embeddings = all_gather_with_grad(embeddings, grad_scale=float(self.world_size))
            labels = _all_gather_plain(labels)
        in_shard = (labels >= self.class_start) & (labels < self.class_start + self.num_local)
        local_labels = torch.where(in_shard, labels - self.class_start, torch.full_like(labels, -1))
        weight = self.weight
        if self.sample_rate < 1.0:
            self.sampled_index, local_labels = self._sample(local_labels)
            weight = self.weight[self.sampled_index]
        # fp32 with autocast off, like the margin heads (models/heads.py): a bf16 cosine at s = 64 moves
        # the logits by ~0.25 and the first steps away from the fp32 run's
        with torch.autocast(embeddings.device.type, enabled=False):
            cosine = F.linear(F.normalize(embeddings.float()), F.normalize(weight.float())).clamp(-1.0, 1.0)
            return dist_cross_entropy(self._margin(cosine, local_labels), local_labels)

    # -- export and checkpoints (collective calls: every rank must make them) --------------------
    @torch.no_grad()
    def full_weight(self) -> Tensor:
        """The whole (num_classes, D) centre matrix, gathered from every rank's shard."""
        if not self._distributed():
            return self.weight.detach().clone()
        largest = self.num_classes // self.world_size + int(self.num_classes % self.world_size > 0)
        padded = self.weight.new_zeros(largest, self.embedding_size)
        padded[:self.num_local] = self.weight
        gathered = _all_gather_plain(padded).view(self.world_size, largest, self.embedding_size)
        counts = [class_shard(self.num_classes, r, self.world_size)[1] for r in range(self.world_size)]
        return torch.cat([gathered[r, :counts[r]] for r in range(self.world_size)])

    @torch.no_grad()
    def load_full_weight(self, weight: Tensor) -> None:
        """Take this rank's rows from a whole (num_classes, D) centre matrix."""
        expected = (self.num_classes, self.embedding_size)
        if tuple(weight.shape) != expected:
            raise CheckpointError(f"Partial FC centres have shape {tuple(weight.shape)}, expected {expected} "
                                  "(num_classes, embedding_size): the checkpoint belongs to another setup")
        self.weight.copy_(weight[self.class_start:self.class_start + self.num_local])

    def full_state_dict(self) -> dict[str, Tensor]:
        """{"weight": (num_classes, D)}: a world-size-independent checkpoint entry (collective)."""
        return {"weight": self.full_weight()}

    def load_full_state_dict(self, state: dict[str, Tensor]) -> None:
        """Inverse of `full_state_dict`, for any world size."""
        if "weight" not in state:
            raise CheckpointError(f"Partial FC state has no 'weight' entry (keys: {sorted(state)})")
        self.load_full_weight(state["weight"])

    def extra_repr(self) -> str:
        margin = self.margin if isinstance(self.margin, str) else getattr(self.margin, "__name__", "callable")
        return (f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, margin={margin}, "
                f"s={self.s}, m={self.m}, sample_rate={self.sample_rate}, shard=[{self.class_start}, "
                f"{self.class_start + self.num_local}) of rank {self.rank}/{self.world_size}")


__all__ = ["PartialFC", "margin_logits", "dist_cross_entropy", "all_gather_with_grad", "class_shard", "MarginFn"]

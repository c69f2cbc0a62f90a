"""`crd`: contrastive representation distillation (Tian et al., ICLR 2020), as RepDistiller computes it.

Both pooled vectors go through a trainable Linear embedding and an exact L2 normalisation. Two
memory banks of n_data rows (one of student embeddings, one of teacher embeddings) supply K
negatives per sample; the student embedding is scored against the teacher bank and vice versa,
each score exp(m . v / T) divided by a normaliser Z that is frozen on the FIRST batch
(Z = mean(score) * n_data) and kept in the `params` buffer [K, T, Z_s, Z_t, momentum] (float32,
as the reference), so it travels with checkpoints and resume is exact. The NCE loss of both
directions is summed; afterwards the banks' rows of the batch move towards the new embeddings by
momentum and are renormalised.

Needs from the data: `index` (dataset index of every sample) and `contrast_index` (B x (K+1)
int64; column 0 the positive, columns 1..K negatives drawn from other classes), which the
datasets return because the distiller's `batch_request` asks for DISTILL.CRD.NCE_K negatives drawn
by DISTILL.CRD.POOL. DISTILL.CRD.N_DATA is the training set size (50000 for CIFAR-100), filled
from the training set when it is 0 (`data_keys`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from data.requests import BatchRequest
from kd import DISTILLERS
from kd.base import Distiller, Probe, Step
from utility.errors import CheckpointError, ConfigError

NCE_EPS = 1e-7  # RepDistiller's ContrastLoss epsilon


def _l2_normalise(x: Tensor) -> Tensor:
    """x / ||x||_2 along dim 1 with no epsilon (RepDistiller's `Normalize`)."""
    return x / x.pow(2).sum(1, keepdim=True).pow(0.5)


def nce_loss(scores: Tensor, n_data: int) -> Tensor:
    """Eq. 18 of the CRD paper: -(1/B)[sum log(o_0/(o_0 + K/N + eps)) + sum_j log((K/N)/(o_j + K/N + eps))].

    scores: B x (K+1) normalised scores, column 0 the positive.
    """
    batch, negatives = scores.shape[0], scores.shape[1] - 1
    noise = negatives * (1 / float(n_data))  # m * P_n, rounded as the reference does
    positive = scores[:, 0]
    log_d1 = torch.log(positive / (positive + (noise + NCE_EPS)))
    negative = scores[:, 1:]
    log_d0 = torch.log(torch.full_like(negative, noise) / (negative + (noise + NCE_EPS)))
    return -(log_d1.sum(0) + log_d0.reshape(-1, 1).sum(0)[0]) / batch


class CRDLoss(nn.Module):
    """Embeddings, memory banks and the two-sided NCE objective; call `(f_s, f_t, idx, contrast_idx)`.

    s_dim, t_dim: sizes of the student's and teacher's pooled vectors; feat_dim: embedding size
    (128); n_data: training-set size (memory rows); nce_k: negatives per sample (16384); nce_t:
    temperature (0.07, stored as float32 like the reference); nce_m: memory momentum (0.5).
    Returns the scalar L(student vs teacher memory) + L(teacher vs student memory).
    State: `embed_s.*`, `embed_t.*`, `memory_s` (RepDistiller `memory_v1`), `memory_t`
    (`memory_v2`), `params` = [K, T, Z_s, Z_t, momentum] with Z = -1 until the first batch.
    """

    def __init__(self, s_dim: int, t_dim: int, feat_dim: int, n_data: int, nce_k: int, nce_t: float,
                 nce_m: float) -> None:
        super().__init__()
        if n_data <= 0:
            raise ConfigError("DISTILL.CRD.N_DATA must be the training-set size (> 0)")
        if nce_k >= n_data:
            raise ConfigError(f"DISTILL.CRD.NCE_K ({nce_k}) must be smaller than the training set ({n_data})")
        self.n_data = int(n_data)
        self.nce_k = int(nce_k)
        self.embed_s = nn.Linear(s_dim, feat_dim)
        self.embed_t = nn.Linear(t_dim, feat_dim)
        self.register_buffer("params", torch.tensor([nce_k, nce_t, -1.0, -1.0, nce_m]))
        bound = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(n_data, feat_dim).mul_(2 * bound).add_(-bound))
        self.register_buffer("memory_t", torch.rand(n_data, feat_dim).mul_(2 * bound).add_(-bound))

    def forward(self, f_s: Tensor, f_t: Tensor, idx: Tensor, contrast_idx: Tensor) -> Tensor:
        batch = f_s.shape[0]
        with torch.autocast(device_type=f_s.device.type, enabled=False):
            v_s = _l2_normalise(self.embed_s(f_s.float().reshape(batch, -1)))
            v_t = _l2_normalise(self.embed_t(f_t.detach().float().reshape(batch, -1)))
            # copies, because `params` is written below while the graph still needs T
            temperature, momentum = self.params[1].clone(), self.params[4].clone()
            rows = contrast_idx.reshape(-1)
            bank_t = self.memory_t.index_select(0, rows).view(batch, contrast_idx.shape[1], -1)
            bank_s = self.memory_s.index_select(0, rows).view(batch, contrast_idx.shape[1], -1)
            # student embedding vs teacher memory, teacher embedding vs student memory
            scores_s = torch.exp(torch.bmm(bank_t, v_s.unsqueeze(2)).squeeze(2) / temperature)
            scores_t = torch.exp(torch.bmm(bank_s, v_t.unsqueeze(2)).squeeze(2) / temperature)
            with torch.no_grad():  # Z is frozen on the first call (where it is still -1)
                first = self.params[2:4] < 0
                fresh = torch.stack([scores_s.mean(), scores_t.mean()]) * self.n_data
                self.params[2:4] = torch.where(first, fresh, self.params[2:4])
            normaliser = self.params[2:4].clone()
            loss = nce_loss(scores_s / normaliser[0], self.n_data) + nce_loss(scores_t / normaliser[1], self.n_data)
            with torch.no_grad():
                self._update_memory(self.memory_s, idx, v_s, momentum)
                self._update_memory(self.memory_t, idx, v_t, momentum)
        return loss

    @staticmethod
    def _update_memory(memory: Tensor, idx: Tensor, embedding: Tensor, momentum: Tensor) -> None:
        """memory[idx] <- normalise(m * memory[idx] + (1 - m) * embedding)."""
        rows = memory.index_select(0, idx) * momentum + embedding.detach() * (1 - momentum)
        memory.index_copy_(0, idx, _l2_normalise(rows))


_REPDISTILLER_KEYS = {
    "embed_s.linear.weight": "embed_s.weight",
    "embed_s.linear.bias": "embed_s.bias",
    "embed_t.linear.weight": "embed_t.weight",
    "embed_t.linear.bias": "embed_t.bias",
    "contrast.memory_v1": "memory_s",
    "contrast.memory_v2": "memory_t",
    "contrast.params": "params",
}


def crd_state_from_repdistiller(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """A RepDistiller `CRDLoss` state dict renamed into `CRDLoss` keys (values unchanged).

    RepDistiller: `embed_s.linear.{weight,bias}`, `embed_t.linear.{weight,bias}`,
    `contrast.memory_v1` (student bank), `contrast.memory_v2` (teacher bank), `contrast.params`
    [K, T, Z_s, Z_t, momentum]. Ours: `embed_s.*`, `embed_t.*`, `memory_s`, `memory_t`, `params`.
    A leading `module.` (DataParallel) is ignored; any other key is an error.
    """
    converted = {}
    for key, value in sd.items():
        plain = key[len("module."):] if key.startswith("module.") else key
        if plain not in _REPDISTILLER_KEYS:
            raise CheckpointError(
                f"RepDistiller CRD state dict: unexpected key '{key}'; expected {sorted(_REPDISTILLER_KEYS)}"
            )
        converted[_REPDISTILLER_KEYS[plain]] = value
    missing = sorted(set(_REPDISTILLER_KEYS.values()) - set(converted))
    if missing:
        raise CheckpointError(f"RepDistiller CRD state dict: missing {missing}")
    return converted


@DISTILLERS.register("crd")
class ContrastiveRepresentationDistillation(Distiller):
    """`CRDLoss` on the pooled vectors, times DISTILL.CRD.WEIGHT; embeddings and banks train/live here."""

    defaults = {
        "WEIGHT": (0.8, "beta (RepDistiller 0.8)"),
        "FEAT_DIM": (128, "embedding size of both heads"),
        "NCE_K": (16384, "negatives per sample (the dataset draws this many per sample)"),
        "NCE_T": (0.07, "temperature"),
        "NCE_M": (0.5, "memory-bank momentum"),
        "N_DATA": (0, "memory-bank rows = training-set size; 0 = filled from the training set"),
        "POOL": ("class", "negatives from every other-class sample, or 'dct_first_n' (DCT scene quirk)",
                 ("class", "dct_first_n")),
    }
    renamed_keys = {"DATA.CRD_NEGATIVES": "NCE_K", "DATA.CRD_POOL": "POOL"}

    @classmethod
    def batch_request(cls, cfg: Any) -> BatchRequest:
        node = cfg.DISTILL.CRD
        if int(node.NCE_K) <= 0:
            raise ConfigError(f"DISTILL.CRD.NCE_K must be a positive number of negatives, got {node.NCE_K}")
        return BatchRequest(contrast_negatives=int(node.NCE_K), contrast_pool=str(node.POOL))

    @classmethod
    def data_keys(cls, cfg: Any, dataset: Any) -> dict[str, Any]:
        return {"N_DATA": len(dataset)} if int(cfg.DISTILL.CRD.N_DATA) <= 0 else {}

    uses_teacher_logits = False  # reads teacher features only

    def setup(self, cfg: Any, probe: Probe) -> None:
        node = cfg.DISTILL.CRD
        if probe.teacher is None or probe.teacher.pooled is None or probe.student.pooled is None:
            raise ConfigError("DISTILL.TYPE 'crd' needs pooled vectors from both student and teacher")
        if int(node.N_DATA) <= 0:
            raise ConfigError("DISTILL.CRD.N_DATA is 0: set it to the training-set size (training fills it "
                              "from the training set before building the distiller)")
        s_dim = probe.student.pooled.flatten(1).shape[1]
        t_dim = probe.teacher.pooled.flatten(1).shape[1]
        self.weight = float(node.WEIGHT)
        self.crd = CRDLoss(s_dim, t_dim, int(node.FEAT_DIM), int(node.N_DATA), int(node.NCE_K),
                           float(node.NCE_T), float(node.NCE_M))
        device = probe.student.pooled.device
        self.crd.to(device)

    def distill_losses(self, step: Step) -> dict[str, Tensor]:
        if "contrast_index" not in step.batch:
            raise ConfigError("DISTILL.TYPE 'crd': the batch has no 'contrast_index'; build the training set "
                              "with kd.batch_request(cfg) so it draws DISTILL.CRD.NCE_K negatives")
        loss = self.crd(step.student.pooled, step.teacher.pooled, step.batch["index"],
                        step.batch["contrast_index"])
        return {"crd": self.weight * loss}

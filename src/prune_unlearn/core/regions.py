"""Linear regions of the Linear/ReLU head ``M_c``, in closed form and batched.

The linear region of a feature vector ``h0`` is fixed by its activation pattern (which hidden
neurons are active). On the region every pre-activation and every logit is affine in ``h``; the
affine maps are masked products of the weight matrices. All of it runs in float64 over many
points at once: one masked forward pass gives the values, one masked backward pass gives any
linear combination of gradient rows (never one autograd pass per neuron).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .split import ModelSplit

__all__ = [
    "HeadNetwork",
    "PointRegions",
    "point_regions",
    "masked_forward",
    "masked_backward",
    "region_offsets",
    "affine_logits",
    "region_halfspaces",
    "pack_patterns",
    "unpack_patterns",
    "pattern_words",
]


@dataclass(frozen=True)
class HeadNetwork:
    """The head ``M_c`` as float64 weight matrices ``W_1 … W_L`` and biases (hidden layers are ReLU)."""

    weights: tuple[torch.Tensor, ...]
    biases: tuple[torch.Tensor, ...]

    @classmethod
    def from_split(cls, split: ModelSplit) -> "HeadNetwork":
        ws, bs = [], []
        for lin in split.linears:
            ws.append(lin.weight.detach().to("cpu", torch.float64).clone())
            b = lin.bias.detach() if lin.bias is not None else torch.zeros(lin.out_features)
            bs.append(b.to("cpu", torch.float64).clone())
        return cls(tuple(ws), tuple(bs))

    @property
    def dtype(self) -> torch.dtype:
        return self.weights[0].dtype

    def to(self, dtype: torch.dtype) -> "HeadNetwork":
        """The same head in another floating-point type (e.g. float32 for a fast search whose result is
        then checked in float64)."""
        return HeadNetwork(tuple(w.to(dtype) for w in self.weights), tuple(b.to(dtype) for b in self.biases))

    @property
    def input_dim(self) -> int:
        return self.weights[0].shape[1]

    @property
    def hidden_sizes(self) -> list[int]:
        return [w.shape[0] for w in self.weights[:-1]]

    @property
    def num_hidden(self) -> int:
        return sum(self.hidden_sizes)

    @property
    def num_classes(self) -> int:
        return self.weights[-1].shape[0]

    def split_hidden(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Split the last dimension of ``t`` (all hidden neurons) into per-layer blocks."""
        return list(torch.split(t, self.hidden_sizes, dim=-1)) if self.hidden_sizes else []

    def join_hidden(self, blocks: list[torch.Tensor], rows: int) -> torch.Tensor:
        """Inverse of :meth:`split_hidden` for (rows, n_i) blocks; (rows, 0) for a head without hidden layers."""
        return torch.cat(blocks, dim=-1) if blocks else torch.zeros(rows, 0, dtype=self.dtype)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain ReLU forward in the head's dtype: ``(pre-activations (n, N), logits (n, C))``."""
        a = h.to(self.dtype)
        zs = []
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            z = a @ w.T + b
            zs.append(z)
            a = torch.relu(z)
        logits = a @ self.weights[-1].T + self.biases[-1]
        z_all = torch.cat(zs, dim=-1) if zs else a.new_zeros(a.shape[:-1] + (0,))
        return z_all, logits


def masked_forward(head: HeadNetwork, masks: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine map of each region, evaluated at ``h``.

    ``masks`` (P, N) are activation patterns; ``h`` is (P, d) or (P, K, d). Returns the region's
    affine pre-activations (…, N) and logits (…, C). Where ``h`` lies in its region these equal
    the network's own values.
    """
    squeeze = h.dim() == 2
    a = h.unsqueeze(1) if squeeze else h
    mask_blocks = head.split_hidden(masks.to(head.dtype).unsqueeze(1))
    zs = []
    for w, b, m in zip(head.weights[:-1], head.biases[:-1], mask_blocks):
        z = a @ w.T + b
        zs.append(z)
        a = z * m
    logits = a @ head.weights[-1].T + head.biases[-1]
    z_all = torch.cat(zs, dim=-1) if zs else a.new_zeros(a.shape[:-1] + (0,))
    if squeeze:
        return z_all.squeeze(1), logits.squeeze(1)
    return z_all, logits


def region_offsets(head: HeadNetwork, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`masked_forward` at ``h = 0``: the offsets ``c`` (P, N) and ``w`` (P, C) of each region's affine
    pre-activations and logits. The first layer's value at 0 is its bias, so its product is skipped."""
    p = masks.shape[0]
    a = head.biases[0].expand(p, -1)
    if not head.hidden_sizes:
        return a.new_zeros(p, 0), a.clone()
    mask_blocks = head.split_hidden(masks.to(head.dtype))
    zs = [a]
    for w, b, m in zip(head.weights[1:], head.biases[1:], mask_blocks):
        a = (zs[-1] * m) @ w.T + b
        zs.append(a)
    return torch.cat(zs[:-1], dim=-1), zs[-1]


def masked_backward(
    head: HeadNetwork,
    masks: torch.Tensor,
    out_coeff: torch.Tensor,
    hidden_coeff: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient rows of linear combinations of a region's affine outputs.

    Returns ``r = out_coeff · ∂logits/∂h + hidden_coeff · ∂z/∂h`` with shape (P, K, d) for
    ``out_coeff`` (P, K, C) and ``hidden_coeff`` (P, K, N). One masked backward pass.
    """
    mask_blocks = head.split_hidden(masks.to(head.dtype).unsqueeze(1))
    hid_blocks = head.split_hidden(hidden_coeff) if hidden_coeff is not None else [None] * len(mask_blocks)
    g = out_coeff.to(head.dtype)
    for j in range(len(head.weights) - 1, 0, -1):
        g = (g @ head.weights[j]) * mask_blocks[j - 1]
        if hid_blocks[j - 1] is not None:
            g = g + hid_blocks[j - 1]
    return g @ head.weights[0]


def affine_logits(head: HeadNetwork, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits on each region as ``W h + w``: ``W`` (P, C, d) and ``w`` (P, C)."""
    p = masks.shape[0]
    eye = torch.eye(head.num_classes, dtype=head.dtype).expand(p, -1, -1)
    weight = masked_backward(head, masks, eye)
    _, offset = masked_forward(head, masks, torch.zeros(p, head.input_dim, dtype=head.dtype))
    return weight, offset


def region_halfspaces(head: HeadNetwork, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden pre-activations on each region as ``z_i(h) = a_i·h + c_i``: ``A`` (P, N, d), ``c`` (P, N).

    The region is ``{h : s_i (a_i·h + c_i) ≥ 0}`` with ``s_i = +1`` for active neurons. This dense
    form costs N×d numbers per region: bounds use :func:`masked_backward` instead; this is for
    exact LPs and tests.
    """
    p, n = masks.shape
    eye = torch.eye(n, dtype=torch.float64).expand(p, -1, -1)
    zero_out = torch.zeros(p, n, head.num_classes, dtype=torch.float64)
    a = masked_backward(head, masks, zero_out, eye)
    c, _ = masked_forward(head, masks, torch.zeros(p, head.input_dim, dtype=torch.float64))
    return a, c


@dataclass
class PointRegions:
    """Activation patterns of a batch of feature vectors, with how far each sits inside its region.

    Attributes
    ----------
    masks : (P, N) bool — the activation pattern (True = active) as the float32 model computes it.
    slack : (P, N) float64 — ``s_i z_i(h)`` in float64, the distance of each neuron from switching.
    min_slack : (P,) float64 — the smallest slack: how deep inside its region the point is.
    float32_error : (P,) float64 — largest difference between float32 and float64 pre-activations.
    consistent : (P,) bool — float32 and float64 agree on the pattern and every slack is positive.
    logits : (P, C) float64.
    """

    masks: torch.Tensor
    slack: torch.Tensor
    min_slack: torch.Tensor
    float32_error: torch.Tensor
    consistent: torch.Tensor
    logits: torch.Tensor


@torch.no_grad()
def point_regions(head: HeadNetwork, split: ModelSplit, features: torch.Tensor) -> PointRegions:
    """Patterns and slacks of ``features`` (the head inputs ``M_p(x)``, float32).

    The float64 part runs in blocks of points: the (P, N) float64 temporaries of a whole batch (41 MB each
    for 10,000 MNIST points) would each cost more in fresh pages than their arithmetic.
    """
    n, n_hidden = len(features), head.num_hidden
    masks = torch.empty(n, n_hidden, dtype=torch.bool)
    slack = torch.empty(n, n_hidden, dtype=torch.float64)
    logits = torch.empty(n, head.num_classes, dtype=torch.float64)
    min_slack = torch.full((n,), float("inf"), dtype=torch.float64)  # a head without hidden layers: one region
    err = torch.zeros(n, dtype=torch.float64)
    consistent = torch.empty(n, dtype=torch.bool)
    # the float32 model in one batch, as it always ran here (a float32 product's rounding may depend on the batch)
    z32_list, _ = split.head_forward(features.to(split.linears[0].weight.dtype))
    z32_all = torch.cat(z32_list, dim=1).cpu() if n_hidden else None
    for start in range(0, n, _BLOCK):
        sl = slice(start, min(n, start + _BLOCK))
        z64, logits[sl] = head.forward(features[sl].to("cpu", torch.float64))
        if not n_hidden:
            consistent[sl] = True
            continue
        z32 = z32_all[sl].to(torch.float64)
        m = masks[sl]
        torch.gt(z32, 0, out=m)
        s = slack[sl]
        torch.where(m, z64, -z64, out=s)  # s_i z_i
        min_slack[sl] = s.min(dim=1).values
        err[sl] = z32.sub_(z64).abs_().max(dim=1).values
        consistent[sl] = (min_slack[sl] > 0) & ((z64 > 0) == m).all(dim=1)
    return PointRegions(masks, slack, min_slack, err, consistent, logits)


_BLOCK = 1024  # points per block of point_regions


# --- packed patterns -----------------------------------------------------------------------------

def pack_patterns(masks: torch.Tensor) -> torch.Tensor:
    """Activation patterns as packed bits, (P, ceil(N/8)) uint8, little bit order within each byte."""
    p, n = masks.shape
    nbytes = (n + 7) // 8
    out = torch.empty(p, nbytes, dtype=torch.uint8, device=masks.device)
    weights = (2 ** torch.arange(8, device=masks.device)).to(torch.uint8)
    for start in range(0, p, _BLOCK):  # blocks: (B, bytes, 8) temporaries stay in cache
        blk = masks[start: start + _BLOCK]
        padded = torch.zeros(blk.shape[0], nbytes * 8, dtype=torch.uint8, device=masks.device)
        padded[:, :n] = blk.to(torch.uint8)
        out[start: start + _BLOCK] = (padded.view(blk.shape[0], nbytes, 8) * weights).sum(dim=2, dtype=torch.int32).to(torch.uint8)
    return out


# bit k of every byte value: row b is the 8 bits of b, little bit order
_BYTE_BITS = ((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1).to(torch.bool)


def unpack_patterns(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_patterns` (one table lookup per byte)."""
    bits = _BYTE_BITS.to(packed.device)[packed.to(torch.int64)]
    return bits.reshape(packed.shape[0], packed.shape[1] * 8)[:, :n]


def pattern_words(masks: torch.Tensor) -> torch.Tensor:
    """Activation patterns as 32-bit words held in int64, (P, ceil(N/32)): exact keys for matching."""
    p, n = masks.shape
    nwords = max(1, (n + 31) // 32)
    out = torch.empty(p, nwords, dtype=torch.int64, device=masks.device)
    shifts = torch.arange(32, device=masks.device, dtype=torch.int64)
    for start in range(0, p, _BLOCK):  # blocks: the (B, words, 32) int64 temporaries stay in cache
        blk = masks[start: start + _BLOCK]
        padded = torch.zeros(blk.shape[0], nwords * 32, dtype=torch.int64, device=masks.device)
        padded[:, :n] = blk.to(torch.int64)
        out[start: start + _BLOCK] = (padded.view(blk.shape[0], nwords, 32) << shifts).sum(dim=2)
    return out

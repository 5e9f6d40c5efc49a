"""Quantisers that turn item embeddings into ``levels`` codes each.

- ``RQVAE``: the paper's residual-quantised autoencoder (trained by gradient).
- ``RQKMeans``: residual k-means on the raw embeddings (no gradient training).
- ``LSH``: random hyperplanes, one group of log2(K) bits per level.
- ``RandomCodes``: random codes, the paper's weakest ablation.

All share one interface: ``fit(embeddings)`` then ``encode(embeddings) -> (N, levels)``
int64 codes, and save/load through safetensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.cluster import KMeans
from torch import nn
from tqdm.auto import tqdm

from .config import IDsConfig
from .io import atomic_path

log = logging.getLogger(__name__)


def residual_quantize(z: torch.Tensor, codebooks: torch.Tensor):
    """Nearest-codeword residual quantisation.

    z: (B, d); codebooks: (levels, K, d). Returns codes (B, levels), the chosen
    codewords (levels, B, d) and the residuals each level quantised (levels, B, d).
    """
    residual = z
    codes, chosen, residuals = [], [], []
    for codebook in codebooks:
        distances = torch.cdist(residual.detach().float(), codebook.detach().float())
        index = distances.argmin(dim=1)
        codeword = codebook[index]
        codes.append(index)
        chosen.append(codeword)
        residuals.append(residual)
        residual = residual - codeword
    return torch.stack(codes, 1), torch.stack(chosen), torch.stack(residuals)


def kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means centroids (k, d); with fewer than k points the rest are sampled with noise."""
    n = len(x)
    fit_k = min(k, n)
    centroids = KMeans(fit_k, n_init=1, random_state=seed).fit(x).cluster_centers_
    if fit_k < k:
        rng = np.random.default_rng(seed)
        extra = x[rng.integers(n, size=k - fit_k)] + 1e-3 * rng.standard_normal((k - fit_k, x.shape[1]))
        centroids = np.concatenate([centroids, extra])
    return centroids.astype(np.float32)


def code_metrics(codes: np.ndarray, codebook_size: int) -> dict:
    """Per-level codebook utilisation and the share of items with a unique code tuple."""
    utilization = [len(np.unique(codes[:, level])) / codebook_size for level in range(codes.shape[1])]
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return {
        "utilization": [round(u, 4) for u in utilization],
        "unique_prefix_share": round(float((counts[inverse.ravel()] == 1).mean()), 4),
        "max_collision_group": int(counts.max()),
    }


class Quantizer(nn.Module):
    scheme = ""

    def __init__(self, input_dim: int, config: IDsConfig):
        super().__init__()
        self.input_dim = input_dim
        self.config = config
        self.history: list[dict] = []  # metrics logged while fitting

    def fit(self, embeddings: np.ndarray) -> "Quantizer":
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _check_input(self, embeddings: np.ndarray) -> torch.Tensor:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.input_dim:
            raise ValueError(f"expected embeddings of shape (N, {self.input_dim}), got {embeddings.shape}")
        return torch.as_tensor(embeddings, dtype=torch.float32, device=self._device())

    def _device(self):
        for tensor in self.state_dict().values():
            return tensor.device
        return torch.device("cpu")

    def save(self, path) -> None:
        metadata = {"scheme": self.scheme, "input_dim": str(self.input_dim), "config": json.dumps(vars(self.config))}
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata=metadata)


def load_quantizer(path) -> Quantizer:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    config = IDsConfig(**json.loads(metadata["config"]))
    quantizer = make_quantizer(metadata["scheme"], int(metadata["input_dim"]), config)
    quantizer.load_state_dict(load_file(str(path)))
    return quantizer


def make_quantizer(scheme: str, input_dim: int, config: IDsConfig) -> Quantizer:
    schemes = {cls.scheme: cls for cls in (RQVAE, RQKMeans, LSH, RandomCodes)}
    if scheme not in schemes:
        raise ValueError(f"unknown ID scheme {scheme!r}; choose one of {sorted(schemes)}")
    return schemes[scheme](input_dim, config)


# ------------------------------------------------------------------ RQ-VAE

def mlp(dims: list[int]) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(Quantizer):
    """Encoder input->512->256->128->32, 3 residual codebooks of 256x32, mirrored decoder."""

    scheme = "rqvae"

    def __init__(self, input_dim: int, config: IDsConfig):
        super().__init__(input_dim, config)
        dims = [input_dim, *config.hidden_dims, config.code_dim]
        self.encoder = mlp(dims)
        self.decoder = mlp(dims[::-1])
        self.codebooks = nn.Parameter(torch.zeros(config.levels, config.codebook_size, config.code_dim))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: torch.Tensor):
        z = self.encoder(x)
        codes, chosen, residuals = residual_quantize(z, self.codebooks)
        # Codebook loss pulls codewords to the (frozen) residuals; commitment pulls
        # the encoder's residuals to the (frozen) codewords.
        codebook_loss = (residuals.detach() - chosen).pow(2).sum(-1).mean()
        commitment_loss = (residuals - chosen.detach()).pow(2).sum(-1).mean()
        quantized = chosen.sum(0)
        # Straight-through: the decoder sees the quantised latent, the encoder gets its gradient.
        x_hat = self.decoder(z + (quantized - z).detach())
        reconstruction = (x - x_hat).pow(2).sum(-1).mean()
        loss = reconstruction + codebook_loss + self.config.beta * commitment_loss
        return loss, reconstruction, codes

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor) -> None:
        """k-means on the first batch, level by level on that level's residuals."""
        residual = self.encoder(x).cpu().numpy()
        for level in range(self.config.levels):
            centroids = kmeans(residual, self.config.codebook_size, self.config.seed + level)
            self.codebooks[level] = torch.from_numpy(centroids).to(self.codebooks.device)
            nearest = ((residual[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
            residual = residual - centroids[nearest]
        self.initialized.fill_(True)

    def fit(self, embeddings: np.ndarray, log_every: int = 0) -> "RQVAE":
        cfg = self.config
        x = self._check_input(embeddings)
        generator = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        for module in (self.encoder, self.decoder):  # reproducible initial weights
            for layer in module:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
        optimizer = torch.optim.Adagrad(self.parameters(), lr=cfg.lr)
        n = len(x)
        batch_size = min(cfg.batch_size, n)
        log_every = log_every or max(1, cfg.epochs // 20)
        start = time.perf_counter()
        self.train()
        progress = tqdm(range(1, cfg.epochs + 1), desc="RQ-VAE", unit="epoch", mininterval=2)
        for epoch in progress:
            order = torch.randperm(n, generator=generator).to(x.device)
            for begin in range(0, n, batch_size):
                batch = x[order[begin : begin + batch_size]]
                if not self.initialized:
                    self.init_codebooks(batch)
                loss, reconstruction, _ = self(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if epoch % log_every == 0 or epoch == cfg.epochs:
                row = {"epoch": epoch, "seconds": round(time.perf_counter() - start, 1), **self.evaluate(x)}
                self.history.append(row)
                progress.set_postfix(rec=f"{row['reconstruction']:.4f}", util=row["utilization"], unique=row["unique_prefix_share"])
                log.info("RQ-VAE %s", row)
                self.train()
        self.eval()
        return self

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor) -> dict:
        self.eval()
        _, reconstruction, codes = self(x)
        return {"reconstruction": round(float(reconstruction), 5), **code_metrics(codes.cpu().numpy(), self.config.codebook_size)}

    @torch.no_grad()
    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        self.eval()
        z = self.encoder(self._check_input(embeddings))
        return residual_quantize(z, self.codebooks)[0].cpu().numpy()


# ------------------------------------------------------------------ alternatives

class RQKMeans(Quantizer):
    """Residual k-means directly on the embeddings: fast, no gradient training."""

    scheme = "rqkmeans"

    def __init__(self, input_dim: int, config: IDsConfig):
        super().__init__(input_dim, config)
        self.register_buffer("codebooks", torch.zeros(config.levels, config.codebook_size, input_dim))

    def fit(self, embeddings: np.ndarray) -> "RQKMeans":
        residual = self._check_input(embeddings).cpu().numpy()
        for level in tqdm(range(self.config.levels), desc="RQ-KMeans", unit="level"):
            centroids = kmeans(residual, self.config.codebook_size, self.config.seed + level)
            self.codebooks[level] = torch.from_numpy(centroids)
            nearest = residual_quantize(torch.from_numpy(residual), self.codebooks[level : level + 1])[0][:, 0].numpy()
            residual = residual - centroids[nearest]
        reconstruction = float((residual**2).sum(-1).mean())
        self.history.append({"reconstruction": round(reconstruction, 5), **code_metrics(self.encode(embeddings), self.config.codebook_size)})
        return self

    @torch.no_grad()
    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        return residual_quantize(self._check_input(embeddings), self.codebooks)[0].cpu().numpy()


class LSH(Quantizer):
    """Each level: log2(K) random hyperplanes through the data mean; the sign bits form the code."""

    scheme = "lsh"

    def __init__(self, input_dim: int, config: IDsConfig):
        super().__init__(input_dim, config)
        bits = int(math.log2(config.codebook_size))
        if 2**bits != config.codebook_size:
            raise ValueError(f"LSH needs a power-of-two codebook size, got {config.codebook_size}")
        generator = torch.Generator().manual_seed(config.seed)
        self.register_buffer("planes", torch.randn(config.levels, input_dim, bits, generator=generator))
        self.register_buffer("center", torch.zeros(input_dim))

    def fit(self, embeddings: np.ndarray) -> "LSH":
        self.center.copy_(self._check_input(embeddings).mean(0))
        self.history.append(code_metrics(self.encode(embeddings), self.config.codebook_size))
        return self

    @torch.no_grad()
    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        x = self._check_input(embeddings) - self.center
        bits = (torch.einsum("nd,ldb->nlb", x, self.planes) > 0).long()
        weights = 2 ** torch.arange(bits.shape[-1], device=bits.device)
        return (bits * weights).sum(-1).cpu().numpy()


class RandomCodes(Quantizer):
    """Random codes, derived from a hash of each embedding so the same item always gets the same code."""

    scheme = "random"

    def fit(self, embeddings: np.ndarray) -> "RandomCodes":
        self.history.append(code_metrics(self.encode(embeddings), self.config.codebook_size))
        return self

    @torch.no_grad()
    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        self._check_input(embeddings)
        codes = np.empty((len(embeddings), self.config.levels), dtype=np.int64)
        for i, row in enumerate(np.ascontiguousarray(embeddings, dtype=np.float32)):
            digest = int.from_bytes(hashlib.sha256(row.tobytes()).digest()[:8], "little")
            rng = np.random.default_rng([self.config.seed, digest])
            codes[i] = rng.integers(self.config.codebook_size, size=self.config.levels)
        return codes

"""Quantisers that turn item embeddings into ``levels`` codes each.

- ``RQVAE``: the paper's residual-quantised autoencoder (trained by gradient).
- ``RQKMeans``: residual k-means on the raw embeddings (no gradient training).
- ``LSH``: random hyperplanes, one group of log2(K) bits per level.
- ``RandomCodes``: random codes, the paper's weakest ablation.
- ``OPQ``: optimised product quantisation (faiss), RPG's long unordered IDs: one code per
  subspace of a learned rotation, none refining another.

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
from .device import autocast, use_bf16
from .io import atomic_path
from .semantic_ids import group_rows, utilization

log = logging.getLogger(__name__)


# Rows per chunk when a whole catalogue is assigned to codewords: the distances of a chunk to one codebook
# (rows x codebook_size fp32, 64 MB at 256 codes) are all that is held at once. Catalogues up to this size
# are one chunk, so their codes are those of one matmul, as before chunking.
CHUNK_ROWS = 65536


def nearest_codeword(residual: torch.Tensor, codebook: torch.Tensor, chunk: int = CHUNK_ROWS) -> torch.Tensor:
    """Index of the nearest codeword, in fp32 via ||r||^2 - 2 r.C + ||C||^2 (cheaper than cdist), ``chunk``
    rows at a time."""
    c = codebook.detach().float()
    c_norms = c.pow(2).sum(1)
    out = []
    for begin in range(0, max(len(residual), 1), chunk):
        r = residual[begin : begin + chunk].detach().float()
        out.append((r.pow(2).sum(1, keepdim=True) - 2 * r @ c.T + c_norms).argmin(1))
    return out[0] if len(out) == 1 else torch.cat(out)


def residual_quantize(z: torch.Tensor, codebooks: torch.Tensor):
    """Nearest-codeword residual quantisation.

    z: (B, d); codebooks: (levels, K, d). Returns codes (B, levels), the chosen
    codewords (levels, B, d) and the residuals each level quantised (levels, B, d):
    2 x levels copies of ``z``, for training batches; whole catalogues go through ``residual_codes``.
    """
    residual = z
    codes, chosen, residuals = [], [], []
    for codebook in codebooks:
        index = nearest_codeword(residual, codebook)
        codeword = codebook[index]
        codes.append(index)
        chosen.append(codeword)
        residuals.append(residual)
        residual = residual - codeword
    return torch.stack(codes, 1), torch.stack(chosen), torch.stack(residuals)


@torch.no_grad()
def residual_codes(z: torch.Tensor, codebooks: torch.Tensor, chunk: int = CHUNK_ROWS) -> tuple[np.ndarray, float]:
    """Codes (N, levels) of ``residual_quantize`` and the mean squared norm of the last residual (the
    reconstruction error), ``chunk`` rows at a time: memory beyond ``z`` is a few chunks, not levels
    copies of it."""
    codes = np.empty((len(z), len(codebooks)), dtype=np.int64)
    error = 0.0
    for begin in range(0, len(z), chunk):
        residual = z[begin : begin + chunk].float()
        for level, codebook in enumerate(codebooks):
            index = nearest_codeword(residual, codebook, chunk)
            codes[begin : begin + len(residual), level] = index.cpu().numpy()
            residual = residual - codebook[index]
        error += float(residual.pow(2).sum(1).double().sum())
    return codes, error / max(len(z), 1)


def kmeans_sample(n: int, size: int, seed: int) -> np.ndarray | None:
    """The rows (sorted) that k-means is fitted on: ``size`` of ``n`` at random (seeded), or None (all rows)
    when ``size`` is 0 or at least ``n``."""
    if not size or n <= size:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


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
    inverse, counts = group_rows(codes)
    return {
        "utilization": utilization(codes, codebook_size),
        "unique_prefix_share": round(float((counts[inverse] == 1).mean()), 4),
        "max_collision_group": int(counts.max()),
    }


class Quantizer(nn.Module):
    scheme = ""

    def __init__(self, input_dim: int, config: IDsConfig):
        super().__init__()
        self.input_dim = input_dim
        self.config = config
        self.history: list[dict] = []  # metrics logged while fitting
        self.fitted_codes: np.ndarray | None = None  # every fitted item's codes, where fit computes them

    def fit(self, embeddings: np.ndarray) -> Quantizer:
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def fit_encode(self, embeddings: np.ndarray) -> np.ndarray:
        """``fit`` then ``encode`` the same embeddings, without a second pass over the catalogue where ``fit``
        already computed every item's codes (``fitted_codes``)."""
        self.fit(embeddings)
        codes, self.fitted_codes = self.fitted_codes, None
        return codes if codes is not None else self.encode(embeddings)

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
    schemes = {cls.scheme: cls for cls in (RQVAE, RQKMeans, LSH, RandomCodes, OPQ)}
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
        # Input standardisation (identity unless config.standardize); set by fit.
        self.register_buffer("mean", torch.zeros(input_dim))
        self.register_buffer("std", torch.ones(input_dim))

    def _autocast(self, device: torch.device):
        return autocast(str(device), use_bf16(str(device), self.config.bf16))

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised input -> fp32 latent."""
        with self._autocast(x.device):
            return self.encoder(x).float()

    def forward(self, x: torch.Tensor):
        """x is already standardised."""
        z = self._encode(x)
        codes, chosen, residuals = residual_quantize(z, self.codebooks)
        # Codebook loss pulls codewords to the (frozen) residuals; commitment pulls
        # the encoder's residuals to the (frozen) codewords.
        codebook_loss = (residuals.detach() - chosen).pow(2).sum(-1).mean(1).sum()
        commitment_loss = (residuals - chosen.detach()).pow(2).sum(-1).mean(1).sum()
        quantized = chosen.sum(0)
        # Straight-through: the decoder sees the quantised latent, the encoder gets its gradient.
        with self._autocast(x.device):
            x_hat = self.decoder(z + (quantized - z).detach()).float()
        reconstruction = (x - x_hat).pow(2).sum(-1).mean()
        loss = reconstruction + codebook_loss + self.config.beta * commitment_loss
        return loss, x_hat, codes, residuals

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor) -> None:
        """k-means on the first batch, level by level on that level's residuals."""
        residual = self._encode(x).cpu().numpy()
        for level in range(self.config.levels):
            centroids = kmeans(residual, self.config.codebook_size, self.config.seed + level)
            self.codebooks[level] = torch.from_numpy(centroids).to(self.codebooks.device)
            nearest = nearest_codeword(torch.from_numpy(residual), torch.from_numpy(centroids)).numpy()
            residual = residual - centroids[nearest]
        self.initialized.fill_(True)

    def fit(self, embeddings: np.ndarray) -> RQVAE:
        cfg = self.config
        raw = self._check_input(embeddings)
        if cfg.standardize:
            self.mean.copy_(raw.mean(0))
            self.std.copy_(raw.std(0).clamp_min(1e-8))
        x = (raw - self.mean) / self.std
        generator = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        for module in (self.encoder, self.decoder):  # reproducible initial weights
            for layer in module:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
        optimizer = torch.optim.Adagrad(self.parameters(), lr=cfg.lr)
        n = len(x)
        batch_size = min(cfg.batch_size, n)
        log_every = cfg.eval_every or max(1, cfg.epochs // 20)
        start = time.perf_counter()
        self.train()
        progress = tqdm(range(1, cfg.epochs + 1), desc="RQ-VAE", unit="epoch", mininterval=2)
        for epoch in progress:
            order = torch.randperm(n, generator=generator).to(x.device)
            used = torch.zeros(cfg.levels, cfg.codebook_size, dtype=torch.bool, device=x.device)
            for begin in range(0, n, batch_size):
                batch = x[order[begin : begin + batch_size]]
                if not self.initialized:
                    self.init_codebooks(batch)
                loss, _, codes, residuals = self(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                used.scatter_(1, codes.T, True)
            if cfg.dead_code_reset:
                self._reset_dead_codes(used, residuals.detach(), generator)
            if epoch % log_every == 0 or epoch == cfg.epochs:
                row = {"epoch": epoch, "seconds": round(time.perf_counter() - start, 1), **self.evaluate(raw)}
                self.history.append(row)
                progress.set_postfix(
                    rec=f"{row['reconstruction']:.4f}", util=row["utilization"], unique=row["unique_prefix_share"]
                )
                log.info("RQ-VAE %s", row)
                self.train()
        self.eval()
        return self

    @torch.no_grad()
    def _reset_dead_codes(self, used: torch.Tensor, residuals: torch.Tensor, generator: torch.Generator) -> None:
        """Move codewords no item chose this epoch onto random residuals of the last batch."""
        for level in range(self.config.levels):
            dead = (~used[level]).nonzero().squeeze(1)
            if len(dead):
                pick = torch.randint(residuals.shape[1], (len(dead),), generator=generator).to(dead.device)
                self.codebooks[level, dead] = residuals[level, pick]

    @torch.no_grad()
    def evaluate(self, embeddings: torch.Tensor) -> dict:
        """Reconstruction (squared error in input units) and code metrics on raw embeddings."""
        self.eval()
        _, x_hat, codes, _ = self((embeddings - self.mean) / self.std)
        reconstruction = (embeddings - (x_hat * self.std + self.mean)).pow(2).sum(-1).mean()
        return {
            "reconstruction": round(float(reconstruction), 5),
            **code_metrics(codes.cpu().numpy(), self.config.codebook_size),
        }

    @torch.no_grad()
    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        self.eval()
        z = self._encode((self._check_input(embeddings) - self.mean) / self.std)
        return residual_quantize(z, self.codebooks)[0].cpu().numpy()


# ------------------------------------------------------------------ alternatives


class RQKMeans(Quantizer):
    """Residual k-means directly on the embeddings: fast, no gradient training."""

    scheme = "rqkmeans"

    def __init__(self, input_dim: int, config: IDsConfig):
        super().__init__(input_dim, config)
        self.register_buffer("codebooks", torch.zeros(config.levels, config.codebook_size, input_dim))

    def fit(self, embeddings: np.ndarray) -> RQKMeans:
        """Each level's k-means on the residuals of ``ids.kmeans_sample`` items drawn at random (all items
        when there are no more), then every item assigned level by level, in chunks."""
        cfg = self.config
        x = self._check_input(embeddings)
        sample = kmeans_sample(len(x), cfg.kmeans_sample, cfg.seed)
        # Only the fitted rows' residuals are held: one copy of the sample (or of a catalogue below the sample size).
        if sample is None:
            residual = x.cpu().numpy().copy()
        else:
            residual = x[torch.from_numpy(sample).to(x.device)].cpu().numpy()
        start = time.perf_counter()
        for level in tqdm(range(cfg.levels), desc="RQ-KMeans", unit="level"):
            centroids = kmeans(residual, cfg.codebook_size, cfg.seed + level)
            self.codebooks[level] = torch.from_numpy(centroids)
            nearest = nearest_codeword(torch.from_numpy(residual), self.codebooks[level].cpu()).numpy()
            for begin in range(0, len(residual), CHUNK_ROWS):  # in place: no second copy
                residual[begin : begin + CHUNK_ROWS] -= centroids[nearest[begin : begin + CHUNK_ROWS]]
        fit_seconds = time.perf_counter() - start
        del residual
        codes, reconstruction = residual_codes(x, self.codebooks)
        self.fitted_codes = codes
        self.history.append(
            {
                "reconstruction": round(reconstruction, 5),
                **code_metrics(codes, cfg.codebook_size),
                "kmeans_items": len(x) if sample is None else len(sample),
                "kmeans_seconds": round(fit_seconds, 1),
            }
        )
        return self

    @torch.no_grad()
    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        return residual_codes(self._check_input(embeddings), self.codebooks)[0]


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

    def fit(self, embeddings: np.ndarray) -> LSH:
        self.center.copy_(self._check_input(embeddings).mean(0))
        self.fitted_codes = self.encode(embeddings)
        self.history.append(code_metrics(self.fitted_codes, self.config.codebook_size))
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

    def fit(self, embeddings: np.ndarray) -> RandomCodes:
        self.fitted_codes = self.encode(embeddings)
        self.history.append(code_metrics(self.fitted_codes, self.config.codebook_size))
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


class OPQ(Quantizer):
    """Optimised product quantisation, fitted by faiss (``OPQMatrix`` + ``ProductQuantizer``), as in RPG.

    A learned orthogonal rotation of the embedding, cut into ``levels`` equal subspaces, each
    quantised to the nearest of ``codebook_size`` centroids: ``levels`` codes per item that are
    all alike (unordered), for RPG to predict in parallel. With ``pca_dim`` the embeddings are
    first projected onto their top principal components and whitened (the RPG paper: 128). The
    whole linear map (PCA, rotation) and the centroids are saved as tensors, so encoding needs no
    faiss after fitting.
    """

    scheme = "opq"

    def __init__(self, input_dim: int, config: IDsConfig):
        super().__init__(input_dim, config)
        reduced = config.pca_dim or input_dim
        # The rotated space is padded to a multiple of levels (faiss fills the extra dimensions with zeros).
        self.sub_dim = -(-reduced // config.levels)
        rotated = self.sub_dim * config.levels
        self.register_buffer("projection", torch.zeros(rotated, input_dim))  # PCA (if any), then the rotation
        self.register_buffer("offset", torch.zeros(rotated))
        self.register_buffer("centroids", torch.zeros(config.levels, config.codebook_size, self.sub_dim))

    def fit(self, embeddings: np.ndarray) -> OPQ:
        try:
            import faiss
        except ImportError as e:
            raise ImportError(f"ids.scheme=opq needs faiss ({e}); install it with: pip install faiss-cpu") from None
        cfg = self.config
        x = np.ascontiguousarray(self._check_input(embeddings).cpu().numpy(), dtype=np.float32)
        n, levels, size = len(x), cfg.levels, cfg.codebook_size
        if n < size:
            raise ValueError(
                f"OPQ needs at least ids.codebook_size={size} items to fit the centroids of a subspace, got {n}"
            )
        projection, offset = np.eye(self.input_dim, dtype=np.float32), np.zeros(self.input_dim, dtype=np.float32)
        if cfg.pca_dim:
            if not cfg.pca_dim < min(n, self.input_dim + 1):
                raise ValueError(
                    f"ids.pca_dim={cfg.pca_dim} must be at most the embedding size ({self.input_dim}) "
                    f"and below the number of items ({n})"
                )
            pca = faiss.PCAMatrix(self.input_dim, cfg.pca_dim, -0.5)  # eigen_power -1/2: whitened
            pca.train(x)
            projection = faiss.vector_to_array(pca.A).reshape(cfg.pca_dim, self.input_dim)
            offset = faiss.vector_to_array(pca.b)
            x = pca.apply(x)
        rotated = self.sub_dim * levels
        if n < rotated:  # faiss's OPQ training corrupts memory with fewer points than dimensions
            raise ValueError(
                f"OPQ needs at least as many items as dimensions to rotate ({rotated}), got {n} items; "
                f"set ids.pca_dim below {n}"
            )
        opq = faiss.OPQMatrix(x.shape[1], levels, rotated)
        # The quantiser OPQ alternates with (faiss's default has 8 bits). opq.pq does not own it: the
        # Python name keeps it alive while opq trains.
        opq_pq = self._product_quantizer(faiss, rotated)
        opq.pq = opq_pq
        opq.train(x)
        rotation = faiss.vector_to_array(opq.A).reshape(rotated, x.shape[1])
        # As faiss's "OPQ{m},PQ{m}" index does: a product quantiser trained afresh on the rotated data.
        pq = self._product_quantizer(faiss, rotated)
        pq.train(opq.apply(x))
        self.projection.copy_(torch.from_numpy(rotation @ projection))
        self.offset.copy_(torch.from_numpy(rotation @ offset))
        self.centroids.copy_(torch.from_numpy(faiss.vector_to_array(pq.centroids).reshape(levels, size, self.sub_dim)))
        codes, reconstruction = self._quantize(self._check_input(embeddings))
        self.fitted_codes = codes
        self.history.append({"reconstruction": round(reconstruction, 5), **code_metrics(codes, size)})
        return self

    def _product_quantizer(self, faiss, dim: int):
        pq = faiss.ProductQuantizer(dim, self.config.levels, int(math.log2(self.config.codebook_size)))
        pq.cp.seed = self.config.seed
        pq.cp.min_points_per_centroid = 1  # small catalogues: no warning per subspace and iteration
        return pq

    @torch.no_grad()
    def _quantize(self, x: torch.Tensor, chunk: int = CHUNK_ROWS // 2) -> tuple[np.ndarray, float]:
        """Codes (N, levels) of raw embeddings and the mean squared error of their reconstruction in the
        rotated (and whitened) space, ``chunk`` rows at a time (their distances are rows x levels x K)."""
        codes = np.empty((len(x), self.config.levels), dtype=np.int64)
        error = 0.0
        for begin in range(0, len(x), chunk):
            y = (x[begin : begin + chunk] @ self.projection.T + self.offset).view(-1, self.config.levels, self.sub_dim)
            distances = (
                y.pow(2).sum(-1, keepdim=True)
                - 2 * torch.einsum("nld,lkd->nlk", y, self.centroids)
                + self.centroids.pow(2).sum(-1)
            )
            index = distances.argmin(-1)
            codes[begin : begin + len(y)] = index.cpu().numpy()
            residual = y - self.centroids[torch.arange(self.config.levels), index]
            error += float(residual.pow(2).sum((1, 2)).double().sum())
        return codes, error / max(len(x), 1)

    @torch.no_grad()
    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        return self._quantize(self._check_input(embeddings))[0]

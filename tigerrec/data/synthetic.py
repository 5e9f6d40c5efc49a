"""A small generated dataset with learnable structure, for smoke runs and tests.

Items fall into categories with text that names the category, so Semantic IDs
group them. Each user walks a fixed "next item" chain (with some noise), so a
sequence model can learn to predict the next item.
"""

from __future__ import annotations

import numpy as np

from .dataset import Dataset

CATEGORIES = ["Shampoo", "Lipstick", "Nail Polish", "Perfume", "Sunscreen", "Mascara", "Face Cream", "Hair Dryer"]
ADJECTIVES = ["red", "blue", "matte", "glossy", "organic", "deluxe", "travel", "classic", "vegan", "silky"]
BRANDS = ["Acme", "Lumen", "Orchid", "Nova", "Vela"]


def make_tiny(
    num_items: int = 120,
    num_users: int = 300,
    min_len: int = 5,
    max_len: int = 10,
    noise: float = 0.0,
    seed: int = 0,
) -> Dataset:
    rng = np.random.default_rng(seed)
    category = np.arange(num_items) % len(CATEGORIES)
    item_ids = [f"item{i}" for i in range(num_items)]
    meta = []
    for i in range(num_items):
        cat = CATEGORIES[category[i]]
        meta.append(
            {
                "title": f"{ADJECTIVES[(i // len(CATEGORIES)) % len(ADJECTIVES)]} {cat.lower()} no. {i}",
                "brand": BRANDS[i % len(BRANDS)],
                "categories": [["Beauty", cat]],
                "price": float(5 + (i * 7) % 40),
            }
        )
    # A fixed successor for every item, mostly within its category.
    successor = rng.permutation(num_items)
    sequences, user_ids = [], []
    for u in range(num_users):
        length = int(rng.integers(min_len, max_len + 1))
        seq = [int(rng.integers(num_items))]
        while len(seq) < length:
            nxt = int(successor[seq[-1]]) if rng.random() >= noise else int(rng.integers(num_items))
            if nxt in seq:  # like the Amazon data: no repeats inside a sequence
                break
            seq.append(nxt)
        if len(seq) < 3:
            continue
        user_ids.append(f"user{u}")
        sequences.append(np.array(seq, dtype=np.int64))
    return Dataset("tiny", user_ids, item_ids, sequences, meta)

"""Generated datasets with learnable structure: ``make_tiny`` for smoke runs and tests, ``make_scale``
for catalogues of 10k to 1M items.

``make_tiny``: items fall into categories with text that names the category, so Semantic IDs
group them. Each user walks a fixed "next item" chain (with some noise), so a sequence model can
learn to predict the next item.

``make_scale``: 10k to 1M items with 768-d vectors standing in for text embeddings, and users who
follow a hidden process a model can learn, calibrated on Amazon Beauty. Its constants:

- ``ITEMS_PER_TOPIC`` = 50 items per topic, ``TOPICS_PER_CATEGORY`` = 20 topics per category (10k
  items: 200 topics in 10 categories; 1M: 20,000 in 1,000). A topic's items lie on a ring (a product
  line ordered by size or shade, say), so "near the previous item" means something.
- Vectors: category centre + ``TOPIC_SPREAD`` (0.6) x the topic's offset + ``RING_RADIUS`` (0.5) x
  the item's place on the ring (a circle in two random directions of its topic) + ``ITEM_NOISE``
  (0.25) x noise of its own, each random part of norm ~1, then L2-normalised like a sentence
  embedding. An item's nearest neighbours are then its ring neighbours, then its topic, then its
  category: the three levels residual k-means can find.
- Popularity: within a topic, a Zipf law of exponent ``ITEM_ZIPF`` (0.75) over a random order of its
  items; ~10% of items get 5 or fewer interactions (Beauty, a 5-core set: 18% at exactly 5).
- ``INTERACTIONS_PER_ITEM`` = 16 (Beauty: 16.4). Sequence lengths are ``MIN_LEN`` (5) x a Pareto
  variable of tail exponent ``LENGTH_TAIL`` (2.1), rounded down, at most ``MAX_LEN`` (200): Beauty's
  shape (32% of users at 5 items, mean 8.9, a tail to ~200).

The process. Each user has a home category (uniform) and starts with a popular item of a topic of
it. At every later step, given the previous item p, whose topic is the user's current topic:

- with probability ``SWITCH`` (0.82) the user moves to a new topic and takes a popular item there:
  a topic of the home category (uniform) with probability ``HOME`` (0.95), else one from the
  "chart", a Zipf law of exponent ``CHART_ZIPF`` (1.5) over all topics in a random order;
- otherwise, with probability ``FOLLOW`` (0.8) a ring neighbour of p (``STEPS``), else a popular
  item of the current topic.

No item comes twice in a sequence, as in the Amazon data: a repeat is drawn again from the same
state, which draws from the process's probabilities restricted to unseen items, the ranking
``oracle_recall_at_10`` scores.

Why so: the next item depends only on the previous item's topic and place on the ring and on the
user's category, each shared by many items and users. A model that generalises across items (through
Semantic IDs or content) can learn them from all users; the first-order Markov baseline only counts
each item's ~10 training successors, one or two of them ring neighbours, so its counts are sparse and
noisy. ``SWITCH``, ``FOLLOW`` and ``HOME`` set how predictable the next item is. The chart is the part
of popularity that does not spread thinner as the catalogue grows (an exponent above 1 keeps the same
few topics on top at any size), so MostPop stays near Beauty's level from 10k to 100k items, though
it still falls by a quarter.

Tuned with ``benchmarks/scale_synthetic.py`` (seeds 0-2; 100k scored on 20,000 users) to test
Recall@10, history items excluded, at 10k / 100k items: MostPop .014 / .010, Markov .072 / .072
(5.1x / 7.3x MostPop), Semantic_KNN .040 / .040 and the process itself (``oracle_recall_at_10``)
.176 / .175, 2.4x Markov. Beauty: MostPop .0115, Markov .0668 (5.8x), Semantic_KNN .0431, SASRec
.0775, TIGER .0852 (Toys: Markov 7.8x MostPop, Sports 4.1x).
"""

from __future__ import annotations

from dataclasses import dataclass

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


# ------------------------------------------------------------------ make_scale (see the module docstring)

DIM = 768  # all-mpnet-base-v2's width, what TIGER's Semantic IDs are made from
ITEMS_PER_TOPIC, TOPICS_PER_CATEGORY = 50, 20
TOPIC_SPREAD, RING_RADIUS, ITEM_NOISE = 0.6, 0.5, 0.25
CHART_ZIPF, ITEM_ZIPF = 1.5, 0.75
INTERACTIONS_PER_ITEM = 16
MIN_LEN, LENGTH_TAIL, MAX_LEN = 5, 2.1, 200
SWITCH, HOME, FOLLOW = 0.82, 0.95, 0.8
# The ring steps from the previous item to a follow-up, and their probabilities: x0.3 per step of
# distance, forward twice as likely as back (+1: 47%, -1: 23%, +2: 14%, -2: 7%, ...).
STEPS = np.array([-4, -3, -2, -1, 1, 2, 3, 4])
STEP_PROBS = 0.3 ** (np.abs(STEPS) - 1) * np.where(STEPS > 0, 2.0, 1.0)
STEP_PROBS /= STEP_PROBS.sum()
RESAMPLE_TRIES = 20  # a repeat is drawn again from the process this often, then (rarely) from all items


@dataclass
class ScaleData:
    """A ``make_scale`` dataset and the hidden state of the process that generated it.
    Topic t belongs to category ``t // TOPICS_PER_CATEGORY``."""

    dataset: Dataset
    item_vectors: np.ndarray  # (N, DIM) float32, unit rows
    item_topic: np.ndarray  # (N,) each item's topic
    item_slot: np.ndarray  # (N,) each item's place on its topic's ring, 0..ITEMS_PER_TOPIC-1
    item_weight: np.ndarray  # (N,) P(item | its topic) of a popular draw; sums to 1 in each topic
    chart_weight: np.ndarray  # (T,) P(topic) of a jump to the chart; sums to 1
    user_category: np.ndarray  # (U,) each user's home category


def _zipf(n: int, exponent: float) -> np.ndarray:
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return weights / weights.sum()


def _draw(cdf: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Indices drawn by inverse transform from an increasing ``cdf`` (last entry 1)."""
    return np.minimum(np.searchsorted(cdf, uniform, side="right"), len(cdf) - 1)


def _by_slot(item_topic: np.ndarray, item_slot: np.ndarray) -> np.ndarray:
    """(T, ITEMS_PER_TOPIC) the item at each place of each topic's ring."""
    by_slot = np.empty((int(item_topic.max()) + 1, ITEMS_PER_TOPIC), dtype=np.int64)
    by_slot[item_topic, item_slot] = np.arange(len(item_topic))
    return by_slot


class _Sampler:
    """Draws the next items of many users at once: the process of the module docstring."""

    def __init__(self, item_topic, item_slot, item_weight, chart_weight, rng: np.random.Generator):
        self.item_topic, self.item_slot, self.rng = item_topic, item_slot, rng
        self.by_slot = _by_slot(item_topic, item_slot)
        # A popular draw picks a rank, then the topic's item of that rank: by_rank[t, r].
        order = np.argsort(-item_weight[self.by_slot], axis=1, kind="stable")
        self.by_rank = np.take_along_axis(self.by_slot, order, axis=1)
        self.rank_cdf = np.cumsum(_zipf(ITEMS_PER_TOPIC, ITEM_ZIPF))
        self.chart_cdf = np.cumsum(chart_weight)
        self.step_cdf = np.cumsum(STEP_PROBS)

    def popular(self, topic: np.ndarray) -> np.ndarray:
        return self.by_rank[topic, _draw(self.rank_cdf, self.rng.random(len(topic)))]

    def topic_in(self, category: np.ndarray) -> np.ndarray:
        return category * TOPICS_PER_CATEGORY + self.rng.integers(TOPICS_PER_CATEGORY, size=len(category))

    def next(self, category: np.ndarray, prev: np.ndarray) -> np.ndarray:
        """One next item per user, given the user's home category and previous item."""
        rng, n = self.rng, len(prev)
        topic = self.item_topic[prev].astype(np.int64)
        move = rng.random(n)  # below SWITCH: a new topic; above: stay, following p or not
        switch = move < SWITCH
        home = switch & (rng.random(n) < HOME)
        topic[home] = self.topic_in(category[home])
        chart = switch & ~home
        topic[chart] = _draw(self.chart_cdf, rng.random(int(chart.sum())))
        items = self.popular(topic)
        follow = ~switch & (move < SWITCH + (1 - SWITCH) * FOLLOW)
        step = STEPS[_draw(self.step_cdf, rng.random(int(follow.sum())))]
        items[follow] = self.by_slot[topic[follow], (self.item_slot[prev[follow]] + step) % ITEMS_PER_TOPIC]
        return items


def _item_vectors(by_slot: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit (N, DIM) float32 vectors: category centre + topic offset + ring place + own noise (module
    docstring), made a block of topics at a time so that memory holds little beyond the output."""
    topics = len(by_slot)
    out = np.empty((by_slot.size, DIM), dtype=np.float32)
    scale = np.float32(DIM**-0.5)  # a standard normal vector / sqrt(DIM) has norm ~1
    categories = rng.standard_normal((topics // TOPICS_PER_CATEGORY, DIM), np.float32) * scale
    angle = 2 * np.pi * np.arange(ITEMS_PER_TOPIC) / ITEMS_PER_TOPIC
    ring = (RING_RADIUS * np.stack([np.cos(angle), np.sin(angle)], 1)).astype(np.float32)  # (places, 2)
    for begin in range(0, topics, 400):  # 20,000 items, ~60 MB a block
        block = np.arange(begin, min(begin + 400, topics))
        axes = rng.standard_normal((len(block), 3, DIM), np.float32) * scale  # topic offset, two ring axes
        v = rng.standard_normal((len(block), ITEMS_PER_TOPIC, DIM), np.float32) * (scale * ITEM_NOISE)
        v += (categories[block // TOPICS_PER_CATEGORY] + TOPIC_SPREAD * axes[:, 0])[:, None]
        v += ring @ axes[:, 1:]  # (places, 2) @ (topics, 2, DIM): each place's point on its topic's circle
        v /= np.linalg.norm(v, axis=2, keepdims=True)
        out[by_slot[block].ravel()] = v.reshape(-1, DIM)
    return out


def _lengths(num_items: int, rng: np.random.Generator) -> np.ndarray:
    """Sequence lengths (module docstring) of as many users as give ~INTERACTIONS_PER_ITEM per item."""
    sizes = np.arange(MIN_LEN + 1, MAX_LEN + 1)
    mean = MIN_LEN + np.sum((MIN_LEN / sizes) ** LENGTH_TAIL)  # E[L] = sum over x of P(L >= x)
    users = round(num_items * INTERACTIONS_PER_ITEM / mean)
    return np.minimum(MIN_LEN * (1.0 - rng.random(users)) ** (-1.0 / LENGTH_TAIL), MAX_LEN).astype(np.int64)


def make_scale(num_items: int, seed: int = 0) -> ScaleData:
    """A synthetic catalogue of ``num_items`` items (a multiple of 1,000: whole categories) and
    ~INTERACTIONS_PER_ITEM interactions per item; items "i0".."i{N-1}", users "u0"..; the metadata
    stay empty (the vectors stand in for text). Deterministic in (num_items, seed). Made in vectorised
    steps across all users: 1M items (1.8M users) take under a minute on one core and 4.1 GB at the
    peak, 3.1 GB of it the vectors."""
    per_category = ITEMS_PER_TOPIC * TOPICS_PER_CATEGORY
    if num_items <= 0 or num_items % per_category:
        raise ValueError(f"num_items must be a positive multiple of {per_category} (whole categories), got {num_items}")
    # Separate streams, so the sequences do not depend on how the vectors are drawn.
    catalogue, space, users = (np.random.default_rng(s) for s in np.random.SeedSequence([seed, num_items]).spawn(3))
    topics = num_items // ITEMS_PER_TOPIC
    place = catalogue.permutation(num_items)  # item i sits at ring place place[i] % 50 of topic place[i] // 50
    item_topic, item_slot = (place // ITEMS_PER_TOPIC).astype(np.int32), (place % ITEMS_PER_TOPIC).astype(np.int32)
    chart_weight = _zipf(topics, CHART_ZIPF)[catalogue.permutation(topics)]
    ranks = catalogue.permuted(np.tile(np.arange(ITEMS_PER_TOPIC), (topics, 1)), axis=1).ravel()  # per topic
    item_weight = _zipf(ITEMS_PER_TOPIC, ITEM_ZIPF)[ranks[place]]

    sampler = _Sampler(item_topic, item_slot, item_weight, chart_weight, users)
    lengths = _lengths(num_items, users)
    category = users.integers(topics // TOPICS_PER_CATEGORY, size=len(lengths))
    # All sequences in one flat array, user u's t-th item at starts[u] + t. Step t draws the t-th item of
    # every user longer than t at once; those who drew an item they already have draw again.
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    flat = np.empty(int(lengths.sum()), dtype=np.int64)
    prev = sampler.popular(sampler.topic_in(category))
    flat[starts] = prev
    for t in range(1, int(lengths.max())):
        active = np.flatnonzero(lengths > t)
        items = np.empty(len(active), dtype=np.int64)
        pending, tries = np.arange(len(active)), 0
        while len(pending):
            who = active[pending]
            if tries < RESAMPLE_TRIES:
                items[pending] = sampler.next(category[who], prev[who])
            else:
                items[pending] = users.integers(num_items, size=len(pending))
            seen = flat[starts[who, None] + np.arange(t)] == items[pending, None]
            pending, tries = pending[seen.any(1)], tries + 1
        flat[starts[active] + t] = items
        prev[active] = items
    dataset = Dataset(
        f"scale{num_items}",
        [f"u{u}" for u in range(len(lengths))],
        [f"i{i}" for i in range(num_items)],
        [flat[begin:end] for begin, end in zip(starts.tolist(), (starts + lengths).tolist())],
    )
    vectors = _item_vectors(sampler.by_slot, space)
    return ScaleData(dataset, vectors, item_topic, item_slot, item_weight, chart_weight, category.astype(np.int32))


def oracle_recall_at_10(data: ScaleData, users: int | None = 10_000, seed: int = 0) -> float:
    """Recall@10 of the generating process itself on the leave-one-out test step: each user's items
    ranked by their true probability given what the process knew (the home category and the previous
    item), history items excluded as the generator's redraws exclude them. The ceiling for any model on
    this data. Scored on ``users`` users drawn at random (all if None or more)."""
    sequences = data.dataset.sequences
    chosen = np.arange(len(sequences))
    if users is not None and users < len(chosen):
        chosen = np.sort(np.random.default_rng(seed).choice(len(chosen), users, replace=False))
    item_topic, item_category = data.item_topic, data.item_topic // TOPICS_PER_CATEGORY
    by_slot = _by_slot(item_topic, data.item_slot)
    # P(next = i) = chart jump + home jump + popular stay + follow-up, as _Sampler.next draws it.
    chart = SWITCH * (1 - HOME) * data.chart_weight[item_topic] * data.item_weight  # the same for every user
    home = SWITCH * HOME / TOPICS_PER_CATEGORY * data.item_weight  # for items of the user's category
    stay = (1 - SWITCH) * (1 - FOLLOW) * data.item_weight  # for items of the previous item's topic
    hits = 0
    chunk = max(1, 20_000_000 // len(item_topic))  # users at a time: a (chunk, N) matrix of ~160 MB
    for begin in range(0, len(chosen), chunk):
        part = chosen[begin : begin + chunk]
        rows = np.arange(len(part))
        prev = np.array([sequences[u][-2] for u in part])
        scores = chart + np.where(item_category == data.user_category[part, None], home, 0.0)
        scores += np.where(item_topic == item_topic[prev, None], stay, 0.0)
        follow = by_slot[item_topic[prev, None], (data.item_slot[prev, None] + STEPS) % ITEMS_PER_TOPIC]
        scores[rows[:, None], follow] += (1 - SWITCH) * FOLLOW * STEP_PROBS
        history = [sequences[u][:-1] for u in part]
        scores[np.repeat(rows, [len(h) for h in history]), np.concatenate(history)] = -np.inf
        target = scores[rows, [sequences[u][-1] for u in part]]
        hits += int(np.sum((scores > target[:, None]).sum(1) < 10))  # fewer than 10 items more likely
    return hits / len(chosen)

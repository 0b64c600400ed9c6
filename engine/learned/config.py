"""``LearnedConfig``: every knob of the learned recommender (stage-1 models, candidate pool, ranker), JSON-serialisable."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

__all__ = ["LearnedConfig", "SOURCES", "POOL_SOURCES"]

SOURCES = ("cf", "trans", "cooc", "content", "pop", "trend", "pop_at", "sas")
"""Sources with feature columns (score and rank each)."""
POOL_SOURCES = ("cf", "trans", "cooc", "content", "pop", "trend", "pop_at", "fresh")
"""Sources that fill the candidate pool by default; ``fresh`` (content similarity among items with no events yet) only
guarantees new items a few slots -- its score is ``content_score``, so it has no columns of its own. ``sas`` (the
sequence model's next-item probability, ``seqnet.py``) is a feature only: as a pool source too (``sources``) it gave the
same pool recall (0.883) and a lower NDCG@10 (seeds 0-2: 0.1367 vs 0.1402); it fills nothing when no model is fitted."""


@dataclass
class LearnedConfig:
    seed: int = 0
    # stage 1: ALS
    cf_factors: int = 64
    cf_reg: float = 0.05
    cf_alpha: float = 10.0
    cf_iterations: int = 15
    # stage 1: sequence statistics
    max_gap: int = 3
    gap_decay: float = 0.5
    cooc_window: int = 10
    trend_days: float = 30.0
    bucket_days: float = 7.0
    trans_smooth: float = 5.0
    trans_pos_decay: float = 0.6
    recent: int = 10  # recent items used for co-occurrence / content / reasons
    like_threshold: float = 4.0
    # stage 1: the SASRec-style sequence model (``seqnet.py``), trained once on every user's events but the last
    # ``label_folds`` (so no fold's label was ever its target) and kept for serving; its next-item probability
    # and rank are ranker features. 0 epochs: none. Valid, seeds 0-4 (bench/learned_val.py --no-baselines --set seed=S
    # [--set sas_epochs=0]): NDCG@10 0.1364 -> 0.1392 (4 of 5 seeds better), HR@10 0.2556 -> 0.2607, AUC 1:20
    # 0.9236 -> 0.9276 (5 of 5); dropout 0.2 over 0.5 (seeds 0-2, as a pool source: AUC 0.9288 vs 0.9267); +38 s of fit
    # on ml-100k (2 cores). Epochs, maxlen, batch and lr are the offline SASRec baseline's tuned settings
    sas_epochs: int = 39
    sas_dim: int = 64
    sas_maxlen: int = 50
    sas_dropout: float = 0.2
    sas_lr: float = 0.002
    sas_batch: int = 32
    # catalogs above this train with a sampled softmax of ``sas_negatives`` uniform items per batch (``seqnet.py``): the
    # full softmax made fit() 11 -> 56 s at 10k items and 20k events (bench/scale.py). Valid on ml-100k with 256 sampled
    # of 1,682 (--set sas_full_softmax_items=0 --set sas_negatives=256), seeds 0 / 1: NDCG@10 0.1322 / 0.1372 vs
    # 0.1367 / 0.1361 full, AUC 1:20 0.9275 / 0.9287 vs 0.9267 / 0.9278: the same within seed noise (dense Adam then;
    # now lazy Adam on the item vectors, README "The ranker's defaults")
    sas_full_softmax_items: int = 5000
    sas_negatives: int = 2048
    # True: retrained on all events for serving, like the rest of stage 1 (twice the training time). Valid, seeds 0-2,
    # as a pool source: NDCG@10 0.1352 vs 0.1367 without, AUC 0.9269 vs 0.9267: no gain, so the label-free model serves
    sas_refit: bool = False
    # index mode (large catalogs): the sequence model's output layer reads only the items it can score (with events, and
    # read in its training; the rest score 0 either way), relative to the best of those instead of the best item of the
    # catalog. Its cost follows the items with events, not the catalog (bench/request_split.py). Models saved before
    # this field load with False: relative to the catalog's best, as they were fitted
    sas_readable_only: bool = True
    sas_device: str = "cpu"  # torch device for the sequence model's training ("cuda" on a GPU); serving runs in numpy
    # candidates
    sources: tuple = POOL_SOURCES
    # >1 gives a source more of the pool. Valid pool recall at 300: equal 0.825, these 0.878 (cooc alone 0.860)
    source_weights: dict = field(default_factory=lambda: {"cooc": 6.0, "cf": 2.0, "trans": 2.0, "content": 0.5, "fresh": 0.5})
    # 500 (bench/learned_val.py --no-baselines --set seed=S --set pool_size=500), seeds 0 / 1: pool recall 0.884 -> 0.948,
    # NDCG@10 0.1362 / 0.1428 -> 0.1310 / 0.1487, AUC 1:20 0.9282 / 0.9287 -> 0.9268 / 0.9277: AUC lower on both, so 300.
    # 200, seeds 0-4: NDCG@10 0.1440 -> 0.1439, AUC 1:20 0.9282 -> 0.9276 (lower on 5 of 5), ~a third less per-candidate work
    pool_size: int = 300
    # the rank features (a candidate's rank in each source among unseen items) are exact up to this rank and equal to it
    # beyond: an O(n) partition per source instead of an O(n log n) sort, the largest per-request cost at 100k items.
    # 0: exact (models saved before this field load with 0). Valid NDCG@10 / AUC 1:20 (bench/learned_val.py --set
    # seed=S [--set rank_cap=0]): seed 0 0.1408 / 0.9243 capped vs 0.1442 / 0.9238 exact; seed 1 0.1371 / 0.9251 vs
    # 0.1337 / 0.9252: the same on average (seed noise), so the cheaper one is the default
    rank_cap: int = 1000
    # catalogs of at least this many items are served without dense per-request vectors over the catalog for content and
    # cf (content was the largest cost at 100k items: a float64 product with every item's text vector): each is a top
    # list of ``index_depth`` items from the vector index (Qdrant's ``text`` and ``cf`` vectors, HNSW) with ranks within
    # that list, and the sequence model scores relative to its best readable item (no softmax over the catalog). Training computes
    # the same from the exact top lists. 0: never (models saved before this field load with 0). The depth bounds the
    # index's work per query (HNSW's ef) and the hits decoded; the pool reaches ~20-60 deep into these sources.
    # bench/scale.py measures it at 100k items
    index_items: int = 50_000
    index_depth: int = 100
    # ranker
    objective: str = "binary"  # or "lambdarank" (binary won on valid: 0.1443 vs 0.1338 NDCG@10 at 100 trees)
    # leaves per tree. Valid, seeds 0-4 (bench/learned_val.py --no-baselines --set seed=S [--set num_leaves=7]): 15 ->
    # 7 leaves NDCG@10 0.1393 -> 0.1434 (paired +0.0041, 4 of 5 seeds), HR@10 0.2590 -> 0.2662, AUC 1:20 0.9275 -> 0.9282,
    # and ~1 ms less per request on ml-100k; seeds 0 / 1: 31 leaves 0.1280 / 0.1289, 4 leaves 0.1391 / 0.1431
    num_leaves: int = 7
    learning_rate: float = 0.05
    n_estimators: int = 300
    # share of training candidates shown as if they had no events (collaborative, sequential, popularity and item-stat
    # columns set to a new item's values, DropoutNet-style), so the ranker learns to order new items by content.
    # Valid, 10% of items made new (bench/learned_val.py --cold-items 0.1): their AUC 1:20 0.13 -> 0.86 at 0.1 (0.885
    # at 0.25), NDCG@10 of the others 0.1423 -> 0.1451 (0.1362 at 0.25)
    cold_frac: float = 0.1
    # added to the ranker's score (log-odds) of items with no events at serving: the prior that a new item is as likely
    # as an established one with the same content match, which training on masked warm items cannot learn. Off: on
    # ml-100k's valid split +1 / +2 lift new items from median rank 191 to 107 / 38 in their users' lists but none into
    # the top 10, and +2 costs the others 0.1430 -> 0.1364 NDCG@10 (items without events there are obscure ones)
    fresh_boost: float = 0.0
    # 1-based position in recommend()'s list where the best-scored new item (no events in the fitted data) is placed
    # when the ranker put it lower (0: off). A list rule, not a score (the moved item keeps its own, lower score):
    # rank() keeps the ranker's order, recommend(k=50)[:10] == recommend(k=10), and lists with payload filters, MMR
    # or an LLM rerank are ordered by score without it. Reaches users whose next item is new, at the cost of the warm
    # item that position would have held. Off by default, chosen on valid (README, "new-item slot")
    new_item_slot: int = 0
    # subtracted from the score (log-odds) in proportion to the share of a candidate's ties to the recent history
    # (transitions, co-occurrence, cf and content similarity) that come from items the user rated at most
    # ``dislike_rating``: explicit negative feedback, so "because you watched a film you rated 2*" stops filling a list.
    # The ranker reads the same share as a feature (``dislike_share``) and learns what it says about the next event (users
    # often go on to watch, and rate low, more of the same); the penalty is the product's choice beyond that. Valid,
    # seeds 0-4 (bench/learned_val.py --no-baselines --set seed=S --sweep dislike_penalty=0,1), penalty 0 / 1 / 2:
    # NDCG@10 0.1467 / 0.1461 / 0.1455 (1 and 2 lower than 0 on 4 and 5 of 5 seeds), NDCG@10 of the users whose valid film
    # is rated >= 4 0.1571 / 0.1578 / 0.1578, AUC 1:20 0.9308 / 0.9304 / 0.9292, top-10 items tied mostly to low-rated
    # films 12.4% / 11.4% / 10.4%. 1: the liked films' NDCG@10 of 2 and half its effect on lists, 0.0004 of AUC below 0.
    # Before the feature (the ranker blind to the share), penalty 2: NDCG@10 0.1440, AUC 0.9282, 10.3%
    dislike_penalty: float = 1.0
    dislike_rating: float = 2.0
    # random unseen catalog items (not among the kept candidates) added per training user as negatives, so the ranker learns
    # the low end of the catalog that rank() scores (sampled AUC), not only the pool's strong candidates. Valid
    # (bench/learned_val.py, seeds 0/1): AUC 1:20 0.9209/0.9194 -> 0.9262 (50) / 0.9264/0.9268 (100); NDCG@10 within
    # seed noise (0.1451/0.1369 -> 0.1430 (50), 0.1346/0.1432 (100))
    rand_neg: int = 50
    neg_sample: int = 100  # negatives kept per training user (0: the whole pool)
    min_child_samples: int = 20
    feature_fraction: float = 0.8
    bagging_fraction: float = 0.8
    lambda_l2: float = 1.0
    early_stopping: int = 40
    # users held out of training for early stopping (0: all train, n_estimators trees). Early stopping on 10% stopped
    # at 9-28 trees: valid NDCG@10 0.1378 vs 0.1451 with 300 trees (bench/learned_val.py --set valid_frac=...)
    valid_frac: float = 0.0
    # labels rated below this are not used as training targets (None: every next event is a target)
    label_min_rating: float | None = None
    # the number of folds: 2 also trains on each user's second-to-last event (stage 1 refitted without it). 3, valid (bench/learned_val.py
    # --no-baselines --set seed=S [--set label_folds=3]), seeds 0 / 1: AUC 1:20 0.9275 / 0.9269 -> 0.9297 / 0.9293, but
    # NDCG@10 0.1418 / 0.1363 -> 0.1338 / 0.1369 and HR@10 0.2757 / 0.2524 -> 0.2566 / 0.2492 (older defaults). With
    # today's defaults (session 29), seeds 0-9: NDCG@10 0.1453 -> 0.1482 (paired +0.0029, se 0.0014, higher on 8 of 10),
    # HR@10 0.2659 -> 0.2730 (7 of 10), AUC 1:20 0.9299 -> 0.9308 (+0.0009, se 0.0006, 6 of 10), fit +5%. Session 30,
    # seeds 0-9 on another machine, 3 / 4 / 5: NDCG@10 0.1478 / 0.1517 / 0.1511 (4 - 3: +0.0038, se 0.0012, higher on
    # 8 of 10; 5 - 4: -0.0005, se 0.0010), HR@10 0.2729 / 0.2787 / 0.2790, AUC 1:20 0.9305 / 0.9306 / 0.9310: 4, the
    # gain stops there
    label_folds: int = 4
    # feature names or group names left out. "attributes" (genre overlap, year gap, item year): valid NDCG@10 0.1508
    # without vs 0.1423 with (bench/learned_val.py --ablate), so the genre/year columns are off by default
    drop_features: tuple = ("attributes",)
    # LightGBM boosters trained on the same rows with seeds seed, seed + 1, ...; the ranker's probability is their mean.
    # Valid, seeds 0-4 (bench/learned_val.py --no-baselines --set seed=S [--set ranker_bags=3]): NDCG@10 0.1396 +- 0.0045
    # (1 bag) vs 0.1416 +- 0.0030 (3 bags; paired +0.0020, 3 of 5 seeds better), HR@10 0.2596 vs 0.2666, AUC 1:20 0.9239
    # both; 3x the ranker's fit time and tree evaluations (median in-memory recommend 13 -> 16 ms). Less refit-to-refit
    # variance but no clear gain, so 1 by default
    ranker_bags: int = 1
    threads: int = 2

    def indexed(self, n_items: int) -> bool:
        """Whether a catalog of ``n_items`` is served in index mode (see ``index_items``)."""
        return 0 < self.index_items <= n_items

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sources"] = list(self.sources)
        d["drop_features"] = list(self.drop_features)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LearnedConfig:
        names = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        d.setdefault("rank_cap", 0)  # saved before rank_cap existed: exact ranks, as it was fitted
        d.setdefault("sas_epochs", 0)  # saved before the sequence model existed: fitted without one
        d.setdefault("index_items", 0)  # saved before the index mode existed: dense sources, as it was fitted
        d.setdefault("sas_readable_only", False)  # saved before it: the sequence score relative to the catalog's best
        # serving-time knobs missing from an older model (dislike_penalty) take today's default on purpose: the ranker
        # itself is unchanged by them, and a refit is not needed to get them
        for k in ("sources", "drop_features"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

"""Codes, Hamming ranking and mAP against brute-force reference implementations."""
import numpy as np
import pytest
import torch

from duchkit.hashing.codes import as_words, pack, to_signs, unpack
from duchkit.hashing.metrics import (authors_average_precision, average_precision_at_k,
                                     evaluate_direction, map_at_k_torch)
from duchkit.hashing import retrieval
from duchkit.hashing.retrieval import (hamming_packed, hamming_signs, rank, rank_torch, search,
                                      top_k_signs)


def naive_ranking(q_bits, db_bits):
    """Python loops: distance by counting differing bits, ties by retrieval index."""
    out = []
    for q in q_bits:
        d = [(sum(int(a != b) for a, b in zip(q, r)), i) for i, r in enumerate(db_bits)]
        out.append([i for _, i in sorted(d)])
    return out


def naive_ap(rel, n_rel, k, variant):
    if n_rel == 0:
        return 0.0
    if variant in ("standard", "ir"):
        hits, s = 0, 0.0
        for i, r in enumerate(rel[:k], 1):
            if r:
                hits += 1
                s += hits / i
        if variant == "standard":  # over the relevant hits of the top k
            return s / hits if hits else 0.0
        return s / min(k, n_rel)
    total = min(k, n_rel)
    positions = [i for i, r in enumerate(rel, 1) if r][:total]
    return sum((j + 1) / p for j, p in enumerate(positions)) / total


def test_packed_hamming_equals_naive_hamming():
    rng = np.random.default_rng(0)
    for bits in (16, 64, 128, 72):
        q, db = rng.random((7, bits)) > 0.5, rng.random((40, bits)) > 0.5
        naive = (q[:, None, :] != db[None]).sum(-1)
        assert (hamming_packed(pack(q), pack(db)) == naive).all()
        assert (hamming_packed(as_words(pack(q)), as_words(pack(db))) == naive).all()
        d = hamming_signs(torch.tensor(to_signs(q)), torch.tensor(to_signs(db))).numpy()
        assert (d == naive).all()
        assert (unpack(pack(q), bits) == q).all()


def test_ranking_tie_rule_and_paths_agree():
    rng = np.random.default_rng(1)
    q, db = rng.random((5, 8)) > 0.5, rng.random((60, 8)) > 0.5  # 8 bits: many ties
    want = naive_ranking(q.tolist(), db.tolist())
    dist = hamming_packed(pack(q), pack(db))
    assert rank(dist).tolist() == want
    assert rank(dist, 10).tolist() == [w[:10] for w in want]
    assert rank_torch(torch.tensor(dist), 10).tolist() == [w[:10] for w in want]
    assert rank_torch(torch.tensor(dist), 10, 8).tolist() == [w[:10] for w in want]  # int32 keys
    idx, d = search(pack(q), pack(db), 10)
    assert idx.tolist() == [w[:10] for w in want]
    assert (np.diff(d, axis=1) >= 0).all()


@pytest.mark.parametrize("wide_keys", [False, True])
def test_keys_from_dot_products_rank_by_the_tie_rule(monkeypatch, wide_keys):
    """top_k_signs (the GPU search) makes its keys from the dot products: the same indices and
    distances as ranking the distances, ties included, with int32 and with int64 keys."""
    if wide_keys:
        monkeypatch.setattr(retrieval, "INT32_KEYS", 1)
    rng = np.random.default_rng(4)
    for bits, dtype in ((8, torch.float32), (64, torch.float32), (64, torch.float16)):
        q, db = rng.random((6, bits)) > 0.5, rng.random((300, bits)) > 0.5
        want = naive_ranking(q.tolist(), db.tolist())
        idx, dist = top_k_signs(torch.tensor(to_signs(q), dtype=dtype),
                                torch.tensor(to_signs(db), dtype=dtype), 25)
        assert idx.tolist() == [w[:25] for w in want]
        naive = (q[:, None, :] != db[None]).sum(-1)
        assert (dist.numpy() == np.take_along_axis(naive, idx.numpy(), 1)).all()


def test_ap_by_hand():
    rel = np.array([[1, 0, 1, 0, 0, 1]], bool)
    # standard AP@3: two hits in the top 3 -> (1/1 + 2/3) / 2
    assert average_precision_at_k(rel, np.array([3]), 3)[0] == pytest.approx((1 + 2 / 3) / 2)
    # ir AP@3 with R = 3 relevant: (1/1 + 2/3) / min(3, 3)
    assert average_precision_at_k(rel, np.array([3]), 3, "ir")[0] == pytest.approx(
        (1 + 2 / 3) / 3)
    # authors' variant, K = 3: hits at ranks 1, 3, 6 -> (1/1 + 2/3 + 3/6) / 3
    assert authors_average_precision(rel, np.array([3]), 3)[0] == pytest.approx(
        (1 + 2 / 3 + 0.5) / 3)
    assert average_precision_at_k(rel, np.array([0]), 3, "ir")[0] == 0
    none_in_top = np.array([[0, 0, 0, 1]], bool)  # no hit in the top 3 scores 0 in both
    assert average_precision_at_k(none_in_top, np.array([1]), 3)[0] == 0
    assert average_precision_at_k(none_in_top, np.array([1]), 3, "ir")[0] == 0


@pytest.mark.parametrize("variant", ["standard", "ir", "authors"])
def test_map_and_pk_against_brute_force(variant):
    rng = np.random.default_rng(2)
    q, db = rng.random((12, 8)) > 0.5, rng.random((50, 8)) > 0.5
    ql, dl = rng.integers(0, 4, 12), rng.integers(0, 4, 50)
    ql[0] = 9  # a query with no relevant item scores 0 and still counts
    k = 10
    order = naive_ranking(q.tolist(), db.tolist())
    aps, p20 = [], []
    for i in range(12):
        rel = [dl[j] == ql[i] for j in order[i]]
        aps.append(naive_ap(rel, int((dl == ql[i]).sum()), k, variant))
        p20.append(sum(rel[:20]) / 20)
    got = evaluate_direction(pack(q), pack(db), ql, dl, k=k, variant=variant, pk_ks=(5, 20))
    assert got["map"] == pytest.approx(np.mean(aps))
    assert got["pk"][1] == pytest.approx(np.mean(p20))
    if variant != "authors":
        t = map_at_k_torch(torch.tensor(to_signs(q)), torch.tensor(to_signs(db)),
                           torch.tensor(ql), torch.tensor(dl), k, variant).item()
        assert t == pytest.approx(np.mean(aps), abs=1e-6)


def test_the_three_normalisations_when_hits_come_late():
    q = np.zeros((1, 8), bool)
    db = np.array([[0] * 8] + [[1] * 4 + [0] * 4] * 30 + [[1] * 8] * 2, bool)  # hits 1, 32, 33
    labels = np.array([1] + [0] * 30 + [1] * 2)
    got = {v: evaluate_direction(pack(q), pack(db), np.array([1]), labels, k=20,
                                 variant=v)["map"] for v in ("standard", "ir", "authors")}
    assert got["standard"] == 1.0  # the one hit of the top 20 is at rank 1
    assert got["ir"] == pytest.approx(1 / 3)  # the two relevant items past rank 20 cost
    assert got["authors"] == pytest.approx((1 + 2 / 32 + 3 / 33) / 3)
    # ir never exceeds the authors' variant; standard can exceed both
    assert got["ir"] < got["authors"] < got["standard"]


def test_bounded_top_k_equals_full_ranking():
    from duchkit.hashing.retrieval import top_k_packed

    rng = np.random.default_rng(5)
    for bits in (16, 64, 128):
        q, db = rng.random((9, bits)) > 0.5, rng.random((3000, bits)) > 0.5
        db[100:140] = db[99]  # many exact ties
        q[0] = db[99]
        idx, d = top_k_packed(pack(q), pack(db), 20)
        want, wd = search(pack(q), pack(db), 20)
        assert (idx == want).all() and (d == wd).all()
        assert idx[0].tolist() == list(range(99, 119))
        for threads in (1, 3):
            assert (top_k_packed(pack(q), pack(db), 20, threads)[0] == want).all()
    # bunched codes: every 16th code (the bounding sample) sits at distance 10 with most of the
    # archive, the 20 nearest codes elsewhere: the bound admits 30k candidates and gives way
    # to the exact k-th distance
    q = rng.random((1, 64)) > 0.5
    far = q.copy()
    far[0, :10] ^= True
    db = np.repeat(far, 30000, 0)
    near = np.arange(30000)[np.arange(30000) % 16 != 0][::997][:20]
    for j, i in enumerate(near):
        db[i] = q[0]
        db[i, j % 3] ^= True
    idx, d = top_k_packed(pack(q), pack(db), 20)
    want, wd = search(pack(q), pack(db), 20)
    assert (idx == want).all() and (d == wd).all() and set(idx[0]) == set(near)
    # 256-bit codes: distances above 255 need a wider counter
    q, db = np.ones((1, 256), bool), np.zeros((50, 256), bool)
    db[7] = True
    idx, d = top_k_packed(pack(q), pack(db), 3)
    assert idx[0].tolist() == [7, 0, 1] and d[0].tolist() == [0, 256, 256]

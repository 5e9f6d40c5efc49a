import numpy as np
import pytest

from tigerrec.errors import TigerrecError
from tigerrec.semantic_ids import CollisionError, SemanticIDs, add_collision_code, group_rows


def test_collision_code_counts_within_each_prefix():
    codes = np.array([[7, 1, 4], [7, 1, 4], [2, 0, 0], [7, 1, 4], [7, 1, 5]])
    assert add_collision_code(codes, 256).tolist() == [
        [7, 1, 4, 0],
        [7, 1, 4, 1],
        [2, 0, 0, 0],
        [7, 1, 4, 2],
        [7, 1, 5, 0],
    ]


def test_collision_group_larger_than_a_fixed_suffix_fails_clearly():
    with pytest.raises(CollisionError, match=r"3 items share the codes \(1, 1\), more than the 2 values"):
        add_collision_code(np.ones((3, 2), dtype=int), capacity=2, suffix_length=1)
    with pytest.raises(CollisionError, match=r"5 items share the codes \(1, 1\), more than the 4 values \(2\^2\)"):
        add_collision_code(np.ones((5, 2), dtype=int), capacity=2, suffix_length=2)


def test_collision_group_larger_than_the_codebook_gets_a_longer_suffix():
    # 3 items on one prefix with 2 values per code: 2 suffix digits (base 2) for every item.
    assert add_collision_code(np.array([[1, 1], [0, 0], [1, 1], [1, 1]]), capacity=2).tolist() == [
        [1, 1, 0, 0],
        [0, 0, 0, 0],
        [1, 1, 0, 1],
        [1, 1, 1, 0],
    ]


def test_group_rows_matches_numpy_unique():
    rng = np.random.default_rng(1)
    for rows in (rng.integers(0, 3, size=(500, 3)), rng.integers(0, 2**40, size=(300, 3)) % 5 * 2**40):
        inverse, counts = group_rows(rows)
        _, want_inverse, want_counts = np.unique(rows, axis=0, return_inverse=True, return_counts=True)
        assert inverse.tolist() == want_inverse.ravel().tolist() and counts.tolist() == want_counts.tolist()


def test_ids_of_a_group_larger_than_the_codebook(tmp_path):
    """codebook_size 4, 10 items with identical codes: a 2-code suffix (16 values) for every item."""
    codes = np.array([[1, 2, 3]] * 10 + [[0, 0, 0], [3, 3, 3]])
    ids = SemanticIDs.from_codes([f"i{n}" for n in range(12)], codes, 4)
    assert ids.suffix_length == 2 and ids.length == 5 and ids.codes.shape == (12, 5)
    assert ids.codes[:10, 3:].tolist() == [[i // 4, i % 4] for i in range(10)]
    assert ids.codes[10:].tolist() == [[0, 0, 0, 0, 0], [3, 3, 3, 0, 0]]
    assert (ids.quantized == codes).all()
    metrics = ids.metrics()
    assert metrics["unique_ids"] and metrics["max_collision_group"] == 10 and metrics["suffix_length"] == 2
    assert metrics["collision_group_sizes"] == {"1": 2, "10": 1}

    ids.save(tmp_path)
    header = (tmp_path / "semantic_ids.csv").read_text().splitlines()[0]
    assert header == "item_id,c1,c2,c3,s1,s2"
    again = SemanticIDs.load(tmp_path, codebook_size=4)
    assert again.suffix_length == 2 and again.item_ids == ids.item_ids and (again.codes == ids.codes).all()
    assert (again.quantized == codes).all()

    # New items continue their group's suffix; a new prefix starts at 0 0; all IDs keep 5 codes.
    more = again.add_items(["n0", "n1"], np.array([[1, 2, 3], [2, 2, 2]]))
    assert more.suffix_length == 2 and more.codes[12:].tolist() == [[1, 2, 3, 2, 2], [2, 2, 2, 0, 0]]
    assert more.metrics()["unique_ids"]
    # The group holds 11 items; 16 fit in 2 digits of base 4, a 17th does not.
    full = more.add_items([f"f{n}" for n in range(5)], np.array([[1, 2, 3]] * 5))
    assert full.codes[-1].tolist() == [1, 2, 3, 3, 3]
    with pytest.raises(CollisionError, match=r"17 items share the codes \(1, 2, 3\), more than the 16 values"):
        full.add_items(["over"], np.array([[1, 2, 3]]))
    with pytest.raises(ValueError, match="expected 3 quantiser codes"):
        full.add_items(["short"], np.array([[1, 2]]))


def test_load_reads_a_suffix_of_one_s_column_and_rejects_one_without_collision_code(tmp_path):
    (tmp_path / "semantic_ids.csv").write_text("item_id,c1,c2,s1\na,1,2,0\nb,1,2,1\n")
    ids = SemanticIDs.load(tmp_path, codebook_size=4)
    assert ids.suffix_length == 1 and ids.quantized.tolist() == [[1, 2], [1, 2]]
    with pytest.raises(TigerrecError, match="are a collision suffix, but these IDs have none"):
        SemanticIDs.load(tmp_path, codebook_size=4, collision_code=False)
    (tmp_path / "semantic_ids.csv").write_text("item_id,c1,s1,s2\na,1,0,0\nb,1,0,9\n")
    with pytest.raises(TigerrecError, match=r"row 2 \(item 'b'\): code s2=9 is outside 0..3"):
        SemanticIDs.load(tmp_path, codebook_size=4)


def test_ids_are_unique_and_roundtrip_through_csv(tmp_path):
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, size=(200, 3))  # many collisions
    ids = SemanticIDs.from_codes([f"i{n}" for n in range(200)], codes, 256)
    assert len(np.unique(ids.codes, axis=0)) == 200
    metrics = ids.metrics()
    assert metrics["unique_ids"] and metrics["max_collision_group"] == max(
        int(c) for c in np.unique(codes, axis=0, return_counts=True)[1]
    )
    assert sum(int(size) * n for size, n in metrics["collision_group_sizes"].items()) == 200
    ids.save(tmp_path)
    header = (tmp_path / "semantic_ids.csv").read_text().splitlines()[0]
    assert header == "item_id,c1,c2,c3,c4"
    again = SemanticIDs.load(tmp_path)
    assert again.item_ids == ids.item_ids and (again.codes == ids.codes).all() and again.suffix_length == 1


def test_new_items_continue_the_collision_codes():
    ids = SemanticIDs.from_codes(["a", "b"], np.array([[1, 2, 3], [1, 2, 3]]), 256)
    more = ids.add_items(["c", "d"], np.array([[1, 2, 3], [9, 9, 9]]))
    assert more.codes.tolist()[2:] == [[1, 2, 3, 2], [9, 9, 9, 0]]
    with pytest.raises(ValueError, match="already have"):
        more.add_items(["a"], np.array([[0, 0, 0]]))


def test_load_rejects_malformed_files(tmp_path):
    (tmp_path / "semantic_ids.csv").write_text("item_id,c1\na,1\nb,x\n")
    with pytest.raises(ValueError, match="non-integer"):
        SemanticIDs.load(tmp_path)
    (tmp_path / "semantic_ids.csv").write_text("item_id,c1\na,1\nb,1\n")
    with pytest.raises(ValueError, match="not unique"):
        SemanticIDs.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="tigerrec ids"):
        SemanticIDs.load(tmp_path / "nothing")


@pytest.mark.parametrize(
    "rows, message",
    [
        ("a,1,2\nb,-1,0\n", "row 2 (item 'b'): code c1=-1 is outside 0..15 (ids.codebook_size=16)"),
        ("a,1,2\nb,3,16\n", "row 2 (item 'b'): code c2=16 is outside 0..15 (ids.codebook_size=16)"),
        ("a,1,2\nb,3\n", "row 2 (item 'b'): 2 columns, expected 3"),
        ("a,1,x\n", "row 1 (item 'a'): non-integer code c2='x'"),
    ],
)
def test_load_checks_every_code_against_the_codebook(tmp_path, rows, message):
    (tmp_path / "semantic_ids.csv").write_text("item_id,c1,c2\n" + rows)
    with pytest.raises(TigerrecError) as info:
        SemanticIDs.load(tmp_path, codebook_size=16)
    assert str(info.value) == f"{tmp_path / 'semantic_ids.csv'}, {message}"


def test_rqkmeans_fits_on_a_sample_and_codes_every_item():
    import torch

    from tigerrec.config import IDsConfig
    from tigerrec.quantize import RQKMeans, kmeans_sample, residual_codes, residual_quantize

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((8, 6))[rng.integers(8, size=300)] + 0.1 * rng.standard_normal((300, 6))).astype(
        np.float32
    )
    config = IDsConfig(scheme="rqkmeans", levels=2, codebook_size=4, kmeans_sample=50, seed=3)
    sampled = RQKMeans(6, config).fit(x)
    assert sampled.history[-1]["kmeans_items"] == 50
    codes = sampled.encode(x)
    assert codes.shape == (300, 2) and codes.min() >= 0 and codes.max() < 4
    # The codebooks are those of a fit on the sampled rows alone.
    rows = kmeans_sample(300, 50, 3)
    assert len(rows) == 50 and len(set(rows.tolist())) == 50
    on_sample = RQKMeans(6, IDsConfig(scheme="rqkmeans", levels=2, codebook_size=4, kmeans_sample=0, seed=3))
    assert on_sample.fit(x[rows]).history[-1]["kmeans_items"] == 50
    assert torch.equal(sampled.codebooks, on_sample.codebooks)
    # A catalogue no larger than the sample is fitted on all items.
    assert RQKMeans(6, config).fit(x[:50]).history[-1]["kmeans_items"] == 50
    assert kmeans_sample(50, 50, 3) is None and kmeans_sample(300, 0, 3) is None
    # Chunked assignment gives the codes of the one-pass residual quantisation.
    chunked, error = residual_codes(torch.from_numpy(x), sampled.codebooks, chunk=7)
    assert (chunked == residual_quantize(torch.from_numpy(x), sampled.codebooks)[0].numpy()).all()
    assert (chunked == codes).all() and error > 0


def test_load_reads_quoted_ids_and_what_int_reads_and_finds_blank_rows(tmp_path):
    ids = SemanticIDs.from_codes(["a,b", 'say "hi"', "plain"], np.array([[1, 2], [1, 2], [3, 0]]), 4)
    ids.save(tmp_path)
    again = SemanticIDs.load(tmp_path, codebook_size=4)
    assert again.item_ids == ids.item_ids and (again.codes == ids.codes).all()
    # Unix line ends and codes that int() reads but numpy does not.
    (tmp_path / "semantic_ids.csv").write_text("item_id,c1,c2\na, 1,1_0\nb,2,3\n")
    assert SemanticIDs.load(tmp_path, codebook_size=16).codes.tolist() == [[1, 10], [2, 3]]
    (tmp_path / "semantic_ids.csv").write_text("item_id,c1,c2\na,1,0\n\nb,2,3\n")
    with pytest.raises(TigerrecError, match=r"row 2 \(item ''\): 0 columns, expected 3"):
        SemanticIDs.load(tmp_path, codebook_size=16)
    (tmp_path / "semantic_ids.csv").write_text("item_id,c1,c2\na,1,0\nb,2,3,4\n")
    with pytest.raises(TigerrecError, match=r"row 2 \(item 'b'\): 4 columns, expected 3"):
        SemanticIDs.load(tmp_path, codebook_size=16)


def test_a_longer_suffix_reaches_the_tokenizer_model_and_trie():
    """IDs of 2 quantiser codes and a 2-code suffix: every stage reads the ID length (4) from the IDs."""
    from conftest import tiny_config

    from tigerrec.data import make_tiny
    from tigerrec.evaluate import evaluate
    from tigerrec.pipeline import prepare

    dataset = make_tiny()
    codes = np.random.default_rng(0).integers(0, 4, size=(dataset.num_items, 2))  # 120 items on 16 prefixes
    ids = SemanticIDs.from_codes(dataset.item_ids, codes, 4)
    assert ids.suffix_length == 2 and ids.length == 4
    data, _, model = prepare(dataset, ids, tiny_config(ids={"levels": 2, "codebook_size": 4}))
    assert data.tokenizer.id_length == model.id_length == 4
    valid = data.valid
    metrics = evaluate(model.eval(), data.tokenizer, data.trie, valid, data.user_tokens[valid.users], beam_size=10)
    assert 0 <= metrics["recall@10"] <= 1

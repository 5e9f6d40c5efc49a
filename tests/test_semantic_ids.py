import numpy as np
import pytest

from tigerrec.errors import TigerrecError
from tigerrec.semantic_ids import CollisionError, SemanticIDs, add_collision_code


def test_collision_code_counts_within_each_prefix():
    codes = np.array([[7, 1, 4], [7, 1, 4], [2, 0, 0], [7, 1, 4], [7, 1, 5]])
    assert add_collision_code(codes, 256).tolist() == [
        [7, 1, 4, 0],
        [7, 1, 4, 1],
        [2, 0, 0, 0],
        [7, 1, 4, 2],
        [7, 1, 5, 0],
    ]


def test_collision_group_larger_than_last_level_fails_clearly():
    with pytest.raises(CollisionError, match=r"3 items share the codes \(1, 1\)"):
        add_collision_code(np.ones((3, 2), dtype=int), capacity=2)


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
    assert again.item_ids == ids.item_ids and (again.codes == ids.codes).all()


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

"""The transparency log's Merkle tree (broker/audit/merkle.py) against published RFC 6962/9162 test
vectors, an independent recursive reference of the RFC's definitions, and tampering."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.audit.merkle import (
    EMPTY_ROOT,
    Frontier,
    MerkleTree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent / "data" / "merkle"

# The reference tree of github.com/transparency-dev/merkle: testonly/constants.go (LeafInputs,
# RootHashes) and the proofs of cmd/proofgen/main.go (inclusionProofs, consistencyProofs; its
# leaf indices count from 1, ours from 0), at commit 417fb0c314750d94e53942e9f92e79b6d35915db.
# The same tree and hashes are in google/certificate-transparency's merkle tree tests.
LEAVES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")]
ROOTS = [bytes.fromhex(h) for h in (
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")]
INCLUSION = [  # (leaf index, tree size, proof)
    (0, 1, []),
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]

# Where the RFC is silent (old size 0) we follow C2SP tlog-witness: the empty tree is consistent
# with every tree, with an empty proof. transparency-dev/merkle has rejected size1 = 0 since its
# PR #236; the CCTV vectors accept it, as we do.
TLOG_WITNESS_NOT_TRANSPARENCY_DEV = {"consistency/additional/size1-is-zero-and-size2-is-not-zero.json"}


def _b64(text: str | None) -> bytes:
    return base64.b64decode(text or "")


def _tree(size: int) -> MerkleTree:
    """Distinct leaves, so that no two nodes share a hash and a wrong position can never pass."""
    return MerkleTree(leaf_hash(i.to_bytes(4, "big")) for i in range(size))


def _mth(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) exactly as RFC 9162 2.1.1 defines it, recursively (the reference)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 2.1.3.1, recursively."""
    if len(leaves) == 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


def _subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of RFC 9162 2.1.4.1, recursively."""
    if m == len(leaves):
        return [] if whole else [_mth(leaves)]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m <= k:
        return [*_subproof(m, leaves[:k], whole), _mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), _mth(leaves[:k])]


# --- published vectors -------------------------------------------------------------------------

def test_reference_tree_roots_for_every_size() -> None:
    tree = MerkleTree(leaf_hash(data) for data in LEAVES)
    assert [tree.root(size) for size in range(9)] == ROOTS
    assert tree.root() == ROOTS[8]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_reference_inclusion_proofs(index: int, size: int, proof: list[str]) -> None:
    tree = MerkleTree(leaf_hash(data) for data in LEAVES)
    assert [h.hex() for h in tree.inclusion_proof(index, size)] == proof
    assert verify_inclusion(leaf_hash(LEAVES[index]), index, size, [bytes.fromhex(h) for h in proof], ROOTS[size])


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_reference_consistency_proofs(old: int, new: int, proof: list[str]) -> None:
    tree = MerkleTree(leaf_hash(data) for data in LEAVES)
    assert [h.hex() for h in tree.consistency_proof(old, new)] == proof
    assert verify_consistency(old, new, [bytes.fromhex(h) for h in proof], ROOTS[old], ROOTS[new])


@functools.cache
def _transparency_dev() -> dict[str, Any]:
    """transparency-dev/merkle's testdata/inclusion and testdata/consistency probes (valid proofs
    and their mutations), copied whole into tests/data/merkle/transparency-dev.json."""
    vectors: dict[str, Any] = json.loads((VECTORS / "transparency-dev.json").read_text())
    return vectors


@pytest.mark.parametrize("name", sorted(_transparency_dev()["inclusion"]))
def test_transparency_dev_inclusion_probes(name: str) -> None:
    probe = _transparency_dev()["inclusion"][name]
    ok = verify_inclusion(_b64(probe["leafHash"]), probe["leafIdx"], probe["treeSize"],
                          [_b64(h) for h in probe["proof"] or []], _b64(probe["root"]))
    assert ok is not probe["wantErr"], probe["desc"]


@pytest.mark.parametrize("name", sorted(_transparency_dev()["consistency"]))
def test_transparency_dev_consistency_probes(name: str) -> None:
    probe = _transparency_dev()["consistency"][name]
    ok = verify_consistency(probe["size1"], probe["size2"], [_b64(h) for h in probe["proof"] or []],
                            _b64(probe["root1"]), _b64(probe["root2"]))
    assert ok is (not probe["wantErr"] or name in TLOG_WITNESS_NOT_TRANSPARENCY_DEV), probe["desc"]


def test_cctv_vectors() -> None:
    """The CCTV Merkle vectors (rgdd/CCTV, merkle/testdata, module c2sp.org/CCTV/merkle), copied
    into tests/data/merkle/cctv.json: roots of the trees [a], [a, b], … [a … p], the proofs to
    generate, and valid and mutated proofs to verify."""
    cctv = json.loads((VECTORS / "cctv.json").read_text())
    tree = MerkleTree()
    for entry in cctv["merkle_tree"]:
        assert leaf_hash(entry["leaf_data"].encode()) == _b64(entry["leaf_hash"])
        tree.append(_b64(entry["leaf_hash"]))
        assert tree.root() == _b64(entry["root_hash"])
    for kind in ("valid", "invalid"):
        for case in cctv[f"inclusion-{kind}"]:
            proof = [_b64(h) for h in case["inclusion_path"]]
            args = (_b64(case["leaf_hash"]), case["leaf_index"], case["tree_size"], proof, _b64(case["root_hash"]))
            assert verify_inclusion(*args) is (kind == "valid"), case
            if kind == "valid":
                assert tree.inclusion_proof(case["leaf_index"], case["tree_size"]) == proof
        for case in cctv[f"consistency-{kind}"]:
            proof = [_b64(h) for h in case["consistency_path"]]
            args = (case["old_size"], case["new_size"], proof, _b64(case["old_root"]), _b64(case["new_root"]))
            assert verify_consistency(*args) is (kind == "valid"), case
            if kind == "valid":
                assert tree.consistency_proof(case["old_size"], case["new_size"]) == proof


# --- the RFC's definitions, for every small tree -------------------------------------------------

def test_matches_the_recursive_definitions_up_to_40_leaves() -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(40)]
    tree = MerkleTree(leaves)
    for n in range(41):
        assert tree.root(n) == _mth(leaves[:n])
        for m in range(n):
            assert tree.inclusion_proof(m, n) == _path(m, leaves[:n])
        for m in range(1, n):
            assert tree.consistency_proof(m, n) == _subproof(m, leaves[:n], True)


# --- properties ----------------------------------------------------------------------------------

QUICK = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])
TREE = _tree(600)


def _flip(proof: list[bytes], at: int, bit: int) -> list[bytes]:
    changed = list(proof)
    element = bytearray(changed[at])
    element[bit // 8 % len(element)] ^= 1 << (bit % 8)
    changed[at] = bytes(element)
    return changed


@QUICK
@given(st.data())
def test_every_inclusion_proof_verifies_and_no_tampered_one_does(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, TREE.size), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    leaf, root, proof = TREE.leaf(index), TREE.root(size), TREE.inclusion_proof(index, size)
    assert verify_inclusion(leaf, index, size, proof, root)
    assert not verify_inclusion(leaf, index, size, proof, _flip([root], 0, data.draw(st.integers(0, 255)))[0])
    assert not verify_inclusion(_flip([leaf], 0, data.draw(st.integers(0, 255)))[0], index, size, proof, root)
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1), label="flipped element")
        assert not verify_inclusion(leaf, index, size, _flip(proof, at, data.draw(st.integers(0, 255))), root)
        assert not verify_inclusion(leaf, index, size, proof[:-1], root)
    assert not verify_inclusion(leaf, index, size, [*proof, root], root)
    other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index) if size > 1 else st.just(size))
    assert not verify_inclusion(leaf, other, size, proof, root)
    # A proof for one size proves nothing about another size's root unless it is that size's proof.
    if index + 1 < TREE.size:
        wrong = data.draw(st.integers(index + 1, TREE.size).filter(lambda s: s != size), label="wrong size")
        assert verify_inclusion(leaf, index, wrong, proof, TREE.root(wrong)) is (
            TREE.inclusion_proof(index, wrong) == proof)


@QUICK
@given(st.data())
def test_every_consistency_proof_verifies_and_no_tampered_one_does(data: st.DataObject) -> None:
    new = data.draw(st.integers(1, TREE.size), label="new size")
    old = data.draw(st.integers(1, new), label="old size")
    old_root, new_root, proof = TREE.root(old), TREE.root(new), TREE.consistency_proof(old, new)
    assert verify_consistency(old, new, proof, old_root, new_root)
    assert not verify_consistency(old, new, proof, _flip([old_root], 0, data.draw(st.integers(0, 255)))[0], new_root)
    assert not verify_consistency(old, new, proof, old_root, _flip([new_root], 0, data.draw(st.integers(0, 255)))[0])
    if proof:
        at = data.draw(st.integers(0, len(proof) - 1), label="flipped element")
        assert not verify_consistency(old, new, _flip(proof, at, data.draw(st.integers(0, 255))), old_root, new_root)
        assert not verify_consistency(old, new, proof[:-1], old_root, new_root)
    assert not verify_consistency(old, new, [*proof, new_root], old_root, new_root)
    # Another pair of sizes, with those sizes' true roots: only that pair's own proof will do.
    if old < TREE.size:
        wrong_new = data.draw(st.integers(old, TREE.size).filter(lambda s: s != new), label="wrong new size")
        assert verify_consistency(old, wrong_new, proof, old_root, TREE.root(wrong_new)) is (
            TREE.consistency_proof(old, wrong_new) == proof)
    wrong_old = data.draw(st.integers(1, new).filter(lambda s: s != old) if new > 1 else st.just(0))
    assert verify_consistency(wrong_old, new, proof, TREE.root(wrong_old), new_root) is (
        TREE.consistency_proof(wrong_old, new) == proof)


@QUICK
@given(st.integers(1, 400), st.data())
def test_a_forked_history_fails_consistency(size: int, data: st.DataObject) -> None:
    """Rewrite one record below the old size: the rewritten tree cannot prove it extends the old."""
    old = data.draw(st.integers(1, size), label="old size")
    changed = data.draw(st.integers(0, old - 1), label="rewritten leaf")
    leaves = [TREE.leaf(i) for i in range(size)]
    leaves[changed] = leaf_hash(b"rewritten")
    fork = MerkleTree(leaves)
    assert not verify_consistency(old, size, fork.consistency_proof(old, size), TREE.root(old), fork.root())


# --- edges ---------------------------------------------------------------------------------------

def test_the_empty_tree() -> None:
    tree = MerkleTree()
    assert tree.size == 0
    assert tree.root() == EMPTY_ROOT == hashlib.sha256(b"").digest()
    assert tree.consistency_proof(0) == []
    assert verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    assert verify_consistency(0, 5, [], EMPTY_ROOT, TREE.root(5))
    assert not verify_consistency(0, 5, [TREE.root(5)], EMPTY_ROOT, TREE.root(5))
    assert not verify_consistency(0, 5, [], TREE.root(1), TREE.root(5))
    assert not verify_inclusion(EMPTY_ROOT, 0, 0, [], EMPTY_ROOT)


def test_hashing_has_the_rfc_prefixes() -> None:
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(b"l", b"r") == hashlib.sha256(b"\x01lr").digest()


def test_a_one_leaf_tree() -> None:
    tree = _tree(1)
    assert tree.root() == tree.leaf(0)
    assert tree.inclusion_proof(0) == []
    assert verify_inclusion(tree.leaf(0), 0, 1, [], tree.root())
    assert not verify_inclusion(b"", 0, 1, [], b"")  # a leaf hash is 32 bytes


def test_out_of_range_requests_are_refused_clearly() -> None:
    tree = _tree(10)
    with pytest.raises(ValueError, match="leaf index 10 is out of range for a tree of size 10"):
        tree.inclusion_proof(10)
    with pytest.raises(ValueError, match="leaf index 5 is out of range for a tree of size 5"):
        tree.inclusion_proof(5, 5)
    with pytest.raises(ValueError, match="leaf index -1 is out of range"):
        tree.leaf(-1)
    with pytest.raises(ValueError, match="tree size 11 is out of range: the tree has 10 leaves"):
        tree.root(11)
    with pytest.raises(ValueError, match="tree size 11 is out of range"):
        tree.inclusion_proof(0, 11)
    with pytest.raises(ValueError, match="old size 7 is not between 0 and the new size 6"):
        tree.consistency_proof(7, 6)
    with pytest.raises(ValueError, match="tree size 12 is out of range"):
        tree.consistency_proof(3, 12)
    with pytest.raises(ValueError, match="a leaf hash is 32 bytes, not 5"):
        tree.append(b"short")


def test_verifiers_refuse_impossible_sizes() -> None:
    leaf, root = TREE.leaf(3), TREE.root(8)
    proof = TREE.inclusion_proof(3, 8)
    assert not verify_inclusion(leaf, -1, 8, proof, root)
    assert not verify_inclusion(leaf, 8, 8, proof, root)
    assert not verify_consistency(5, 4, [], root, root)
    assert not verify_consistency(-1, 4, [], root, root)
    assert not verify_consistency(4, 4, [root], root, root)
    assert not verify_consistency(3, 8, [], TREE.root(3), root)  # RFC 9162 2.1.4.2 step 1


def test_proofs_against_an_earlier_size_stay_valid_as_the_log_grows() -> None:
    tree = _tree(100)
    root, proof, consistency = tree.root(), tree.inclusion_proof(37), tree.consistency_proof(60)
    tree.extend(leaf_hash(b"later %d" % i) for i in range(300))
    assert tree.root(100) == root
    assert tree.inclusion_proof(37, 100) == proof
    assert tree.consistency_proof(60, 100) == consistency
    assert verify_consistency(100, 400, tree.consistency_proof(100), root, tree.root())


def test_memory_is_two_hashes_a_leaf() -> None:
    tree = _tree(4096)
    assert 2 * 4095 * 32 <= tree.nbytes <= 2 * 4096 * 32 * 1.3


@QUICK
@given(st.integers(0, 600), st.data())
def test_a_frontier_has_the_trees_root_at_every_size_and_restarts_from_its_hashes(size: int,
                                                                                   data: st.DataObject) -> None:
    frontier = Frontier()
    assert frontier.root() == EMPTY_ROOT
    for i in range(size):
        frontier.append(TREE.leaf(i))
        assert frontier.size == i + 1
        assert len(frontier.hashes) == (i + 1).bit_count() <= (i + 1).bit_length()
    assert frontier.root() == TREE.root(size)
    cut = data.draw(st.integers(0, size))  # a writer restarted at ``cut`` from the stored hashes only
    restarted = Frontier()
    for i in range(cut):
        restarted.append(TREE.leaf(i))
    restarted = Frontier(restarted.hashes, cut)
    for i in range(cut, size):
        restarted.append(TREE.leaf(i))
    assert restarted.hashes == frontier.hashes and restarted.root() == TREE.root(size)


def test_a_frontier_is_the_right_edge_of_the_tree() -> None:
    frontier = Frontier()
    for i in range(13):  # 13 = 8 + 4 + 1
        frontier.append(TREE.leaf(i))
    assert frontier.hashes == (TREE.root(8), MerkleTree([TREE.leaf(i) for i in range(8, 12)]).root(), TREE.leaf(12))


def test_a_frontier_refuses_what_cannot_be_one() -> None:
    with pytest.raises(ValueError, match="has 2 hashes, not 1"):
        Frontier([EMPTY_ROOT], 3)
    with pytest.raises(ValueError, match="32 bytes"):
        Frontier([b"short"], 1)
    with pytest.raises(ValueError, match="32 bytes"):
        Frontier().append(b"short")
    with pytest.raises(ValueError, match="size -1"):
        Frontier([], -1)

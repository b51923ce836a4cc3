"""The Merkle tree of the transparency log (issue 16): RFC 9162 hashing, proofs and their checks.

Our own code rather than ``pymerkle`` (docs/transparency.md says why: its consistency proofs are
not RFC 9162's, which C2SP witnesses require; it is GPL-3.0; its in-memory tree takes 410 MB for
a million leaves). Standard library only. The hashing constants, ``leaf_hash`` and the two
``verify_*`` functions live in :mod:`broker.audit.offline`, the verifier an auditor runs without
the broker, and are imported here.

The tree keeps the hash of every *complete* subtree: level ``l`` holds, in one ``bytearray``, the
hashes of leaves ``[j·2^l, (j+1)·2^l)`` for every ``j`` whose range is full. Those hashes never
change as the log grows, so they serve proofs against any earlier size too; the few incomplete
subtrees on the right edge of a size are hashed when a proof needs them (O(log n)). Memory is
32 bytes × (2n − popcount(n)): 64 MB for a million records, with no Python object per node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from broker.audit.offline import EMPTY_ROOT, HASH_SIZE, NODE_PREFIX, leaf_hash, verify_consistency, verify_inclusion

__all__ = ["EMPTY_ROOT", "HASH_SIZE", "Frontier", "MerkleTree", "leaf_hash", "node_hash", "verify_consistency",
           "verify_inclusion"]

_sha256 = hashlib.sha256


def node_hash(left: bytes, right: bytes) -> bytes:
    """An interior node: SHA-256(0x01 || left || right) (RFC 9162 2.1.1)."""
    return _sha256(NODE_PREFIX + left + right).digest()


def _split(width: int) -> int:
    """k, the largest power of two smaller than ``width`` (≥ 2): where RFC 9162 splits a tree."""
    return 1 << ((width - 1).bit_length() - 1)


class MerkleTree:
    """An append-only RFC 9162 tree over leaf hashes (not entries: the caller hashes its records
    with :func:`leaf_hash`, so the tree never sees or holds a record).

    Appending n leaves costs n − 1 node hashes in all (a node is hashed once, when its range
    fills). ``root``, ``inclusion_proof`` and ``consistency_proof`` answer for any size up to the
    current one with O(log n) stored hashes and at most O(log n) new ones, and never rebuild
    anything. Not thread-safe: give it one writer.
    """

    __slots__ = ("_levels", "_size")

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        self._levels: list[bytearray] = [bytearray()]
        self._size = 0
        self.extend(leaf_hashes)

    @property
    def size(self) -> int:
        """The number of leaves."""
        return self._size

    @property
    def nbytes(self) -> int:
        """The bytes the stored hashes take (allocated, so the growth slack counts too)."""
        return sum(level.__sizeof__() for level in self._levels)

    def append(self, leaf: bytes) -> int:
        """Add one leaf hash; returns its index. Completes every subtree it is the last leaf of."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, not {len(leaf)}")
        index = self._size
        levels = self._levels
        levels[0] += leaf
        node, j, level = leaf, index, 0
        while j & 1:  # a right child: its parent's range is now full
            start = (j - 1) * HASH_SIZE
            node = _sha256(NODE_PREFIX + levels[level][start:start + HASH_SIZE] + node).digest()
            level += 1
            j >>= 1
            if level == len(levels):
                levels.append(bytearray())
            levels[level] += node
        self._size = index + 1
        return index

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append each leaf hash in order."""
        for leaf in leaf_hashes:
            self.append(leaf)

    def leaf(self, index: int) -> bytes:
        """The leaf hash at ``index``."""
        self._check_index(index, self._size)
        return self._node(0, index)

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first ``size`` leaves (default: all of them)."""
        size = self._size if size is None else size
        self._check_size(size)
        return self._range(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 2.1.3.1: the sibling hashes from the leaf upwards."""
        size = self._size if size is None else size
        self._check_size(size)
        self._check_index(index, size)
        path: list[bytes] = []
        start, width = 0, size
        while width > 1:  # top-down; the RFC lists the nodes bottom-up, hence the reverse
            k = _split(width)
            if index - start < k:
                path.append(self._range(start + k, start + width))
                width = k
            else:
                path.append(self._range(start, start + k))
                start, width = start + k, width - k
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[0:new_size]) of RFC 9162 2.1.4.1.

        Empty when ``old_size`` is 0 or equals ``new_size``: the RFC defines proofs for
        0 < old < new only, and C2SP tlog-witness expects an empty proof in both other cases.
        """
        new_size = self._size if new_size is None else new_size
        self._check_size(new_size)
        if not 0 <= old_size <= new_size:
            raise ValueError(f"old size {old_size} is not between 0 and the new size {new_size}")
        if old_size in (0, new_size):
            return []
        path: list[bytes] = []
        start, m, width, whole = 0, old_size, new_size, True  # SUBPROOF(m, D[start:start+width], b)
        while m != width:
            k = _split(width)
            if m <= k:
                path.append(self._range(start + k, start + width))
                width = k
            else:
                path.append(self._range(start, start + k))
                start, m, width, whole = start + k, m - k, width - k, False
        if not whole:  # the old tree's root is known to the verifier only when b is still true
            path.append(self._range(start, start + width))
        path.reverse()
        return path

    def _node(self, level: int, j: int) -> bytes:
        """The stored hash of the complete subtree ``j`` of ``level``."""
        offset = j * HASH_SIZE
        return bytes(self._levels[level][offset:offset + HASH_SIZE])

    def _range(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for a subtree of the RFC's shape: ``start`` a multiple of the largest
        power of two ≤ end − start. Its complete subtrees, largest first, are stored; folding them
        from the right gives the hash (one node hash per extra piece, none if it is complete)."""
        pieces: list[bytes] = []
        width = end - start
        while width:
            level = width.bit_length() - 1
            pieces.append(self._node(level, start >> level))
            start += 1 << level
            width -= 1 << level
        result = pieces.pop()
        while pieces:
            result = node_hash(pieces.pop(), result)
        return result

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self._size:
            raise ValueError(f"tree size {size} is out of range: the tree has {self._size} leaves")

    @staticmethod
    def _check_index(index: int, size: int) -> None:
        if not 0 <= index < size:
            raise ValueError(f"leaf index {index} is out of range for a tree of size {size}")


class Frontier:
    """The compact range of a tree: the roots of its perfect subtrees, largest (leftmost) first,
    one per set bit of ``size`` (at most log2(size) + 1 hashes). Enough to append and to give the
    root, so a writer never holds the tree; it answers no proofs (that is :class:`MerkleTree`)."""

    __slots__ = ("_hashes", "_size")

    def __init__(self, hashes: Iterable[bytes] = (), size: int = 0) -> None:
        self._hashes = [bytes(h) for h in hashes]
        if size < 0 or len(self._hashes) != size.bit_count():
            raise ValueError(f"a frontier of size {size} has {max(size, 0).bit_count()} hashes, "
                             f"not {len(self._hashes)}")
        if any(len(h) != HASH_SIZE for h in self._hashes):
            raise ValueError(f"frontier hashes are {HASH_SIZE} bytes")
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        return tuple(self._hashes)

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash: it merges with every subtree it completes (one node hash each)."""
        if len(leaf) != HASH_SIZE:
            raise ValueError(f"a leaf hash is {HASH_SIZE} bytes, not {len(leaf)}")
        hashes, node, size = self._hashes, leaf, self._size
        while size & 1:
            node = _sha256(NODE_PREFIX + hashes.pop() + node).digest()
            size >>= 1
        hashes.append(node)
        self._size += 1

    def root(self) -> bytes:
        """MTH of the leaves so far: the subtrees folded from the right, as RFC 9162 splits."""
        if not self._hashes:
            return EMPTY_ROOT
        result = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            result = _sha256(NODE_PREFIX + h + result).digest()
        return result

// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./Owned.sol";

/// @title CheckpointRegistry — public anchor of medshare consortium-ledger checkpoints.
/// @notice Every K blocks the consortium writes the committed block's (height, block hash,
///         state root) here (DESIGN.md §4, "Public anchoring"). The store is append-only and
///         heights strictly increase, so a checkpoint, once anchored, can never be rewritten
///         or reordered: anyone holding a copy of the consortium ledger can compare it with
///         this contract and detect a rewritten history.
/// @dev Writes are owner-only; see `Owned` for who the owner should be in production. The
///      first checkpoint may have any height (including 0, the genesis block).
contract CheckpointRegistry is Owned {
    /// @dev One anchored checkpoint (named Entry because `Checkpoint` is the event).
    struct Entry {
        uint64 height;
        bytes32 blockHash;
        bytes32 stateRoot;
    }

    /// @notice A new checkpoint was anchored at position `index`.
    event Checkpoint(uint64 indexed height, bytes32 blockHash, bytes32 stateRoot, uint256 index);

    /// @notice `height` is not above the latest anchored height `latestHeight`.
    error HeightNotIncreasing(uint64 height, uint64 latestHeight);
    /// @notice The block hash is zero (zero is reserved for "absent").
    error ZeroBlockHash();
    /// @notice No checkpoint is anchored at `height`.
    error UnknownHeight(uint64 height);
    /// @notice Nothing has been anchored yet.
    error Empty();

    Entry[] private _checkpoints;
    /// @dev height => index + 1 (0 means absent).
    mapping(uint64 => uint256) private _slot;

    /// @notice Append a checkpoint; `height` must exceed the latest anchored height.
    function anchor(uint64 height, bytes32 blockHash, bytes32 stateRoot) external onlyOwner {
        uint256 n = _checkpoints.length;
        if (n > 0) {
            uint64 last = _checkpoints[n - 1].height;
            if (height <= last) revert HeightNotIncreasing(height, last);
        }
        if (blockHash == bytes32(0)) revert ZeroBlockHash();
        _checkpoints.push(Entry(height, blockHash, stateRoot));
        _slot[height] = n + 1;
        emit Checkpoint(height, blockHash, stateRoot, n);
    }

    /// @notice Number of anchored checkpoints.
    function count() external view returns (uint256) {
        return _checkpoints.length;
    }

    /// @notice The most recent checkpoint; reverts with `Empty` if there is none.
    function latest() external view returns (uint64 height, bytes32 blockHash, bytes32 stateRoot) {
        uint256 n = _checkpoints.length;
        if (n == 0) revert Empty();
        Entry storage c = _checkpoints[n - 1];
        return (c.height, c.blockHash, c.stateRoot);
    }

    /// @notice The checkpoint anchored at `height`; reverts with `UnknownHeight` if none.
    function get(uint64 height) external view returns (bytes32 blockHash, bytes32 stateRoot) {
        uint256 slot = _slot[height];
        if (slot == 0) revert UnknownHeight(height);
        Entry storage c = _checkpoints[slot - 1];
        return (c.blockHash, c.stateRoot);
    }

    /// @notice Up to `limit` checkpoints starting at position `start` (0-based, oldest first),
    ///         so that a verifier can read the whole registry in a few calls.
    function page(uint256 start, uint256 limit) external view returns (Entry[] memory out) {
        uint256 n = _checkpoints.length;
        if (start >= n) return new Entry[](0);
        uint256 end = n - start < limit ? n : start + limit;
        out = new Entry[](end - start);
        for (uint256 i = start; i < end; ++i) {
            out[i - start] = _checkpoints[i];
        }
    }
}

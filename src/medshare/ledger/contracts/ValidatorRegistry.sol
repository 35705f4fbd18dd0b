// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./Owned.sol";

/// @title ValidatorRegistry — the consortium's currently elected committee, readable on-chain.
/// @notice At each epoch boundary the consortium ledger elects a committee of m = 3f+1 block
///         producers (DESIGN.md §4). The owner publishes that committee here. The read side,
///         `getValidators() returns (address[])`, is the interface a Hyperledger Besu QBFT
///         network in validator-contract mode reads its validator set from, so a Besu
///         network can follow our election.
/// @dev Committee members are Ed25519 keys on the medshare ledger. Each is mapped to an EVM
///      address deterministically: the last 20 bytes of keccak256(32-byte Ed25519 public key).
///      That address is an identifier only. Nobody holds a secp256k1 key for it, so it
///      cannot sign EVM transactions or Besu blocks; a real Besu deployment would register
///      each institution's Besu node key instead (or alongside).
contract ValidatorRegistry is Owned {
    /// @notice The committee for `epoch` was published.
    event ValidatorsChanged(uint64 indexed epoch, address[] validators);

    /// @notice `epoch` is not above the current epoch `currentEpoch`.
    error EpochNotIncreasing(uint64 epoch, uint64 currentEpoch);
    /// @notice A committee cannot be empty.
    error EmptyValidatorSet();
    /// @notice The zero address cannot be a validator.
    error ZeroValidator(uint256 index);
    /// @notice `validator` appears twice in the list.
    error DuplicateValidator(address validator);

    address[] private _validators;
    /// @notice Epoch of the current committee (meaningful once `initialized` is true).
    uint64 public epoch;
    /// @notice Whether any committee has been published yet.
    bool public initialized;

    /// @notice Replace the committee; `newEpoch` must exceed the current epoch.
    function setValidators(uint64 newEpoch, address[] calldata validators) external onlyOwner {
        if (initialized && newEpoch <= epoch) revert EpochNotIncreasing(newEpoch, epoch);
        uint256 n = validators.length;
        if (n == 0) revert EmptyValidatorSet();
        for (uint256 i = 0; i < n; ++i) {
            address v = validators[i];
            if (v == address(0)) revert ZeroValidator(i);
            for (uint256 j = 0; j < i; ++j) {
                if (validators[j] == v) revert DuplicateValidator(v);
            }
        }
        _validators = validators;
        epoch = newEpoch;
        initialized = true;
        emit ValidatorsChanged(newEpoch, validators);
    }

    /// @notice The current committee, in the order the ledger elected it (Besu QBFT interface).
    function getValidators() external view returns (address[] memory) {
        return _validators;
    }
}

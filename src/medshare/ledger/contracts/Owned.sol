// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title Owned — a single writer for medshare's anchoring contracts.
/// @notice The owner is the consortium's anchoring account. In this repository (tests, demo)
///         it is one externally owned key. In production the owner should be a multisig
///         wallet controlled by the elected committee (e.g. a Safe with a 2f+1-of-m policy),
///         or a forwarder contract that accepts a write only with 2f+1 committee signatures;
///         `transferOwnership` hands the contracts over to such a writer after deployment.
abstract contract Owned {
    /// @notice The only account allowed to write.
    address public owner;

    /// @notice The caller is not the owner.
    error NotOwner(address caller);
    /// @notice The zero address cannot own the contract.
    error ZeroOwner();

    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);

    constructor() {
        owner = msg.sender;
        emit OwnershipTransferred(address(0), msg.sender);
    }

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    /// @notice Hand the writer role to another account (e.g. the committee's multisig).
    function transferOwnership(address newOwner) external onlyOwner {
        if (newOwner == address(0)) revert ZeroOwner();
        emit OwnershipTransferred(owner, newOwner);
        owner = newOwner;
    }
}

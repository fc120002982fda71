//! The native nftables backend: the model lowered to nf_tables netlink messages and sent as
//! one atomic batch, read back and compared.

pub mod abi;
pub mod batch;
pub mod expr;
pub mod lift;
pub mod readback;
pub mod render;
pub mod socket;
pub mod verify;

//! Netlink, once for every family we speak: framing and attributes ([`wire`]), the generic
//! numbers ([`consts`]), error and extended-ack decoding ([`error`]), the socket with its
//! ACK, dump and batch-reply loops ([`socket`]), and rtnetlink's typed headers ([`route`]).
//!
//! nf_tables (`crate::nft`) and the policy routing (`crate::routes`) build on this; neither
//! frames a message or reads a reply by hand.

pub mod consts;
pub mod error;
pub mod route;
pub mod socket;
pub mod wire;

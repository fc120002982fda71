//! mesh-redirect: Istio's sidecar traffic redirection, programmed straight into a pod's
//! network namespace over netlink.
//!
//! Layout: [`config`] validates what the user asked for, [`model`] turns it into Istio's rules
//! (the only place their meaning lives), and each backend lowers that model to the kernel:
//! [`nft`] as one nf_tables batch. [`netns`] runs kernel I/O inside the target namespace,
//! [`routes`] adds TPROXY's policy routing, [`engine`] ties them into apply/verify/remove.

pub mod cli;
pub mod cni;
pub mod config;
pub mod engine;
pub mod install;
pub mod model;
pub mod netns;
pub mod nft;
pub mod probe;
pub mod routes;
pub mod validate;
pub mod xt;

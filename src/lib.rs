//! mesh-redirect: Istio's sidecar traffic redirection, programmed straight into a pod's
//! network namespace over netlink.
//!
//! Layers, each importing only those before it:
//!
//! | module | what it is |
//! |---|---|
//! | [`config`] | what the user asked for, validated (typed values, errors naming the field) |
//! | [`model`] | Istio's rules for a configuration, step by step: the only place semantics live |
//! | [`netlink`] | netlink framing, attributes, error/ACK/dump loops, rtnetlink headers |
//! | [`nft`] | the model lowered to nf_tables: expressions, batch encoding, socket, read-back, diff, text |
//! | [`xt`] | the model lowered to legacy xtables: entry layouts, table codec, merge, sockets, apply/verify/remove |
//! | [`routes`] | TPROXY's policy routing and the `::6` passthrough address over rtnetlink |
//! | [`kernel`] | the seam: traits in front of every kernel call, the real kernel, and in-memory fakes |
//! | [`backend`] | the nftables and iptables-legacy backends behind one trait |
//! | [`netns`] | running kernel I/O on a thread inside the target namespace |
//! | [`engine`] | apply / verify / remove: backend selection, routes, rollback |
//! | [`error`] | every failure's exit code and CNI code, in one place |
//! | [`fault`] | test-only fault injection (feature `fault-injection`) |
//! | [`cli`] | the command line (Istio's `istio-iptables` flags) |
//! | [`cni`] | the CNI plugin: protocol, plugin configuration, pod rules, Kubernetes client |
//! | [`install`] | the node installer: binary, kubeconfig, conflist chaining, watch and repair |
//! | [`probe`] | connection helpers for the in-pod probe and the demo |
//! | [`validate`] | the in-pod probe (`istio-validation`) |
//! | [`agent`] | the node agent (pod cache, socket, metrics; feature `agent`) and the plugin's client for it |

#![warn(missing_docs)]

pub mod agent;
pub mod backend;
pub mod cli;
pub mod cni;
pub mod config;
pub mod engine;
pub mod error;
pub mod fault;
pub mod install;
pub mod kernel;
pub mod model;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod probe;
pub mod routes;
pub mod validate;
pub mod xt;

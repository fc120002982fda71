//! Test-only fault injection, for the real-kernel tests that prove atomicity and the retry
//! path of the binary itself: `MESH_REDIRECT_FAULT=last-message,race`.
//!
//! * `last-message`: the last message of an nf_tables batch is a jump to a chain that does
//!   not exist, and the last xtables table written gets a target the kernel does not know,
//!   so the kernel refuses the change at its very end;
//! * `race`: between our read and our write of each xtables table, another writer appends
//!   a rule, so the kernel answers `EAGAIN` once;
//! * `panic`: the CNI plugin panics after reading its configuration.
//!
//! Only [`active`] exists without the `fault-injection` feature, as a constant `false`;
//! the injectors themselves are compiled only with the feature, so release builds contain
//! none of this. Unit tests do not need it: the in-memory kernel (`crate::kernel::fake`)
//! injects its own failures.

/// One kind of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The kernel refuses the last object of the change.
    LastMessage,
    /// Another writer changes each xtables table between our read and our write, once.
    Race,
    /// The CNI plugin panics while handling the request (to prove the panic hook answers).
    Panic,
}

/// Whether `fault` was asked for (always `false` without the `fault-injection` feature).
#[cfg(feature = "fault-injection")]
pub fn active(fault: Fault) -> bool {
    let name = match fault {
        Fault::LastMessage => "last-message",
        Fault::Race => "race",
        Fault::Panic => "panic",
    };
    std::env::var("MESH_REDIRECT_FAULT")
        .map(|v| v.split(',').any(|f| f == name))
        .unwrap_or(false)
}

/// Whether `fault` was asked for (always `false` without the `fault-injection` feature).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn active(_fault: Fault) -> bool {
    false
}

#[cfg(feature = "fault-injection")]
mod inject {
    use crate::kernel::XtTables;
    use crate::nft::expr::{Expr, Verdict};
    use crate::xt::abi::{Layout, VERDICT_RETURN};
    use crate::xt::socket::read_table;
    use crate::xt::table::{Counters, Extension, Rule, Table, Target};

    /// The rule that makes an nf_tables batch fail: a jump to a chain that does not exist.
    pub fn nft_broken_rule() -> Vec<Expr> {
        vec![Expr::Verdict(Verdict::Jump(
            "mesh-redirect-no-such-chain".into(),
        ))]
    }

    fn rule(l: Layout, target: Target) -> Rule {
        Rule {
            ip: vec![0; l.ip_size],
            nfcache: 0,
            matches: vec![],
            target,
            counters: Counters::default(),
            old_index: None,
        }
    }

    /// Appends a target the kernel does not know to the first built-in chain.
    pub fn xt_poison(t: &mut Table, l: Layout) {
        if let Some(c) = t.chains.iter_mut().find(|c| c.hook.is_some()) {
            let target = Target::Extension(Extension::new("MESHFAULT", 0, vec![0; 8]));
            c.rules.push(rule(l, target));
        }
    }

    /// What another writer does between our read and our write: one foreign rule appended
    /// to the first built-in chain, so that our replace meets `EAGAIN`.
    pub fn xt_race(s: &impl XtTables, name: &str) {
        let l = s.layout();
        if let Ok((info, mut t)) = read_table(s, name) {
            let n = t.num_entries;
            if let Some(c) = t.chains.iter_mut().find(|c| c.hook.is_some()) {
                c.rules.push(rule(l, Target::Verdict(VERDICT_RETURN)));
            }
            if let Ok(enc) = t.encode(l) {
                let _ = s.replace(name, info.valid_hooks, n, &enc);
            }
        }
    }
}

#[cfg(feature = "fault-injection")]
pub use inject::*;

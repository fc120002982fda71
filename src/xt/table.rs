//! An xtables table blob, decoded into chains and rules and encoded back.
//!
//! The blob (what `IPT_SO_GET_ENTRIES` returns and `IPT_SO_SET_REPLACE` takes) is a flat
//! list of entries, laid out the way libiptc writes it:
//!
//! ```text
//! [builtin chains, hook order: rules…, policy entry (at underflow[hook])]
//! [user chains, sorted by name: ERROR entry "NAME", rules…, RETURN entry]
//! [ERROR entry "ERROR"]
//! ```
//!
//! Jumps are byte offsets; decoding turns them into chain names so that chains can be added
//! and removed, and encoding turns them back. Matches and targets we do not model stay raw
//! bytes, so other tools' rules survive byte for byte.

use super::abi::*;
use thiserror::Error;

/// Why a blob cannot be decoded or a table encoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BlobError {
    /// An entry's offsets do not fit the blob.
    #[error("entry at byte {0} is malformed")]
    Malformed(usize),
    /// A jump offset is not a chain start.
    #[error("jump at byte {0} does not point at the start of a chain")]
    BadJump(usize),
    /// A rule jumps to a chain the table does not have.
    #[error("chain {0:?} is referenced but does not exist")]
    MissingChain(String),
}

/// A match or target: name, revision and the data after the 32-byte header (padded).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Extension {
    /// The extension's name (empty for the standard target).
    pub name: String,
    /// Its revision.
    pub revision: u8,
    /// Its data, padded to `XT_ALIGN`.
    pub data: Vec<u8>,
}

impl Extension {
    /// An extension with `data` padded to `XT_ALIGN`.
    pub fn new(name: &str, revision: u8, data: Vec<u8>) -> Extension {
        let mut data = data;
        data.resize(xt_align(XT_MATCH_HEADER + data.len()) - XT_MATCH_HEADER, 0);
        Extension {
            name: name.to_string(),
            revision,
            data,
        }
    }

    fn size(&self) -> usize {
        XT_MATCH_HEADER + self.data.len()
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.size() as u16).to_ne_bytes());
        let mut name = [0u8; XT_EXTENSION_MAXNAMELEN];
        let bytes = name_bytes(&self.name, XT_EXTENSION_MAXNAMELEN);
        name[..bytes.len()].copy_from_slice(&bytes);
        out.extend_from_slice(&name);
        out.push(self.revision);
        out.extend_from_slice(&self.data);
    }
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A standard verdict: ACCEPT (−2), DROP (−1), RETURN (−5).
    Verdict(i32),
    /// Jump (or goto, with the flag in `ip`) to a user chain.
    Jump(String),
    /// Any other target, raw.
    Extension(Extension),
}

/// Packet and byte counters of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// One rule (entry) of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `ipt_ip` / `ip6t_ip6`, raw.
    pub ip: Vec<u8>,
    /// `nfcache` (kernel bookkeeping, kept as read).
    pub nfcache: u32,
    /// The matches, in order.
    pub matches: Vec<Extension>,
    /// The target.
    pub target: Target,
    /// The counters.
    pub counters: Counters,
    /// Index of this entry in the table it was read from (to carry its counters over).
    pub old_index: Option<usize>,
}

/// A chain: built-in (with a hook and policy) or user-defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The chain name.
    pub name: String,
    /// `Some(hook)` for a built-in chain.
    pub hook: Option<usize>,
    /// Built-in chains: the policy verdict and its counters.
    pub policy: Option<(i32, Counters, Option<usize>)>,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

/// A decoded table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The table name (`nat`, `mangle`, `raw`, …).
    pub name: String,
    /// Bit mask of the hooks the table is attached to.
    pub valid_hooks: u32,
    /// Built-in chains and user chains.
    pub chains: Vec<Chain>,
    /// Number of entries when read (`num_counters` for the replace).
    pub num_entries: usize,
}

/// The built-in chain names, by hook number.
pub const BUILTIN_NAMES: [&str; NF_INET_NUMHOOKS] =
    ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

struct RawEntry {
    offset: usize,
    ip: Vec<u8>,
    nfcache: u32,
    matches: Vec<Extension>,
    target: Extension,
    counters: Counters,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A NUL-terminated name field, one char per byte (Latin-1): lossless, so that a name that
/// is not UTF-8 (another tool's) is written back byte for byte by [`name_bytes`] — a lossy
/// decode would grow it past its field.
fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    b[..end].iter().map(|&c| char::from(c)).collect()
}

/// A user chain's name, from its ERROR entry's data: the `errorname` field only (the data
/// is padded past it), so that it is written back exactly.
fn chain_name(data: &[u8]) -> String {
    cstr(&data[..data.len().min(XT_FUNCTION_MAXNAMELEN)])
}

/// The bytes of a name decoded by [`cstr`] (or written by us, ASCII), at most `max` (the
/// field's size: a name read without a terminating NUL is written back the same way).
fn name_bytes(name: &str, max: usize) -> Vec<u8> {
    name.chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .take(max)
        .collect()
}

fn read_extension(b: &[u8], at: usize) -> Option<(Extension, usize)> {
    let size = u16_at(b, at) as usize;
    if size < XT_MATCH_HEADER || at + size > b.len() {
        return None;
    }
    let name = cstr(&b[at + 2..at + 2 + XT_EXTENSION_MAXNAMELEN]);
    let revision = b[at + 2 + XT_EXTENSION_MAXNAMELEN];
    Some((
        Extension {
            name,
            revision,
            data: b[at + XT_MATCH_HEADER..at + size].to_vec(),
        },
        size,
    ))
}

fn split_entries(blob: &[u8], l: Layout) -> Result<Vec<RawEntry>, BlobError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < blob.len() {
        if at + l.entry_size > blob.len() {
            return Err(BlobError::Malformed(at));
        }
        let target_offset = u16_at(blob, at + l.target_offset_at) as usize;
        let next_offset = u16_at(blob, at + l.next_offset_at) as usize;
        if target_offset < l.entry_size
            || next_offset <= target_offset
            || at + next_offset > blob.len()
        {
            return Err(BlobError::Malformed(at));
        }
        let mut matches = Vec::new();
        let mut m = at + l.entry_size;
        while m < at + target_offset {
            let (ext, size) = read_extension(blob, m).ok_or(BlobError::Malformed(at))?;
            matches.push(ext);
            m += size;
        }
        let (target, _) =
            read_extension(blob, at + target_offset).ok_or(BlobError::Malformed(at))?;
        out.push(RawEntry {
            offset: at,
            ip: blob[at..at + l.ip_size].to_vec(),
            nfcache: u32_at(blob, at + l.ip_size),
            matches,
            target,
            counters: Counters {
                packets: u64_at(blob, at + l.counters_at),
                bytes: u64_at(blob, at + l.counters_at + 8),
            },
        });
        at += next_offset;
    }
    Ok(out)
}

fn standard_verdict(t: &Extension) -> Option<i32> {
    (t.name.is_empty() && t.data.len() >= 4)
        .then(|| i32::from_ne_bytes(t.data[..4].try_into().expect("4 bytes")))
}

/// Where each user chain starts: the offset of the entry after its ERROR head, and its name.
type ChainStarts = Vec<(usize, String)>;

/// Decoding, pass 1: user chains start right after their ERROR head.
fn user_chain_starts(entries: &[RawEntry]) -> ChainStarts {
    let mut chain_at = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if e.target.name == "ERROR" && i + 1 < entries.len() {
            let chain = chain_name(&e.target.data);
            if chain != "ERROR" {
                chain_at.push((entries[i + 1].offset, chain));
            }
        }
    }
    chain_at
}

/// Decoding: entry `i` as a rule, its jump offset turned back into a chain name.
fn decode_rule(i: usize, e: &RawEntry, chain_at: &ChainStarts) -> Result<Rule, BlobError> {
    let target = match standard_verdict(&e.target) {
        Some(v) if v >= 0 => {
            let chain = chain_at
                .iter()
                .find(|(off, _)| *off == v as usize)
                .ok_or(BlobError::BadJump(e.offset))?;
            Target::Jump(chain.1.clone())
        }
        Some(v) => Target::Verdict(v),
        None => Target::Extension(e.target.clone()),
    };
    Ok(Rule {
        ip: e.ip.clone(),
        nfcache: e.nfcache,
        matches: e.matches.clone(),
        target,
        counters: e.counters,
        old_index: Some(i),
    })
}

/// Decoding, pass 2: the built-in chains, from each valid hook's entry to its underflow.
fn decode_builtins(
    entries: &[RawEntry],
    chain_at: &ChainStarts,
    valid_hooks: u32,
    hook_entry: [u32; 5],
    underflow: [u32; 5],
) -> Result<Vec<Chain>, BlobError> {
    let index_of = |off: u32| {
        entries
            .iter()
            .position(|e| e.offset == off as usize)
            .ok_or(BlobError::Malformed(off as usize))
    };
    let mut chains = Vec::new();
    for hook in 0..NF_INET_NUMHOOKS {
        if valid_hooks & (1 << hook) == 0 {
            continue;
        }
        let first = index_of(hook_entry[hook])?;
        let last = index_of(underflow[hook])?;
        let rules = (first..last)
            .map(|i| decode_rule(i, &entries[i], chain_at))
            .collect::<Result<_, _>>()?;
        let policy = standard_verdict(&entries[last].target)
            .ok_or(BlobError::Malformed(entries[last].offset))?;
        chains.push(Chain {
            name: BUILTIN_NAMES[hook].to_string(),
            hook: Some(hook),
            policy: Some((policy, entries[last].counters, Some(last))),
            rules,
        });
    }
    Ok(chains)
}

/// Decoding, pass 3: the user chains, each from its ERROR head to the next ERROR entry.
fn decode_user_chains(
    entries: &[RawEntry],
    chain_at: &ChainStarts,
    chains: &mut Vec<Chain>,
) -> Result<(), BlobError> {
    let mut i = 0;
    while i < entries.len() {
        let e = &entries[i];
        if e.target.name == "ERROR" && chain_name(&e.target.data) != "ERROR" {
            let name = chain_name(&e.target.data);
            let mut j = i + 1;
            while j < entries.len() && entries[j].target.name != "ERROR" {
                j += 1;
            }
            // entries[i+1 .. j-1] are rules, entries[j-1] is the chain's RETURN tail.
            let rules = (i + 1..j.saturating_sub(1).max(i + 1))
                .map(|k| decode_rule(k, &entries[k], chain_at))
                .collect::<Result<_, _>>()?;
            chains.push(Chain {
                name,
                hook: None,
                policy: None,
                rules,
            });
            i = j;
        } else {
            i += 1;
        }
    }
    Ok(())
}

impl Table {
    /// Decodes a blob read with `IPT_SO_GET_ENTRIES`, given `ipt_getinfo`'s hook offsets.
    pub fn decode(
        name: &str,
        valid_hooks: u32,
        hook_entry: [u32; 5],
        underflow: [u32; 5],
        blob: &[u8],
        l: Layout,
    ) -> Result<Table, BlobError> {
        let entries = split_entries(blob, l)?;
        let chain_at = user_chain_starts(&entries);
        let mut chains = decode_builtins(&entries, &chain_at, valid_hooks, hook_entry, underflow)?;
        decode_user_chains(&entries, &chain_at, &mut chains)?;
        Ok(Table {
            name: name.to_string(),
            valid_hooks,
            chains,
            num_entries: entries.len(),
        })
    }

    /// A table as the kernel instantiates it: the built-in chains of `hooks`, no rules,
    /// ACCEPT policies.
    pub fn instantiated(name: &str, hooks: &[usize]) -> Table {
        Table {
            name: name.into(),
            valid_hooks: hooks.iter().map(|h| 1 << h).sum(),
            chains: hooks
                .iter()
                .map(|&h| Chain {
                    name: BUILTIN_NAMES[h].into(),
                    hook: Some(h),
                    policy: Some((VERDICT_ACCEPT, Counters::default(), None)),
                    rules: vec![],
                })
                .collect(),
            num_entries: hooks.len() + 1,
        }
    }

    /// The chain named `name`.
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }

    /// The chain named `name`, to change it.
    pub fn chain_mut(&mut self, name: &str) -> Option<&mut Chain> {
        self.chains.iter_mut().find(|c| c.name == name)
    }
}

/// An encoded table, ready for `IPT_SO_SET_REPLACE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The entries.
    pub blob: Vec<u8>,
    /// How many entries `blob` holds.
    pub num_entries: usize,
    /// Offset of each hook's first entry.
    pub hook_entry: [u32; 5],
    /// Offset of each hook's policy entry.
    pub underflow: [u32; 5],
    /// For each new entry, the index it had in the table read (for `ADD_COUNTERS`).
    pub old_index: Vec<Option<usize>>,
    /// For each new entry, the counters to start from.
    pub counters: Vec<Counters>,
}

impl Encoded {
    /// Appends one entry, remembering where its counters come from.
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        l: Layout,
        ip: &[u8],
        nfcache: u32,
        matches: &[Extension],
        target: &Extension,
        old: Option<usize>,
        counters: Counters,
    ) {
        write_entry(&mut self.blob, l, ip, nfcache, matches, target);
        self.num_entries += 1;
        self.old_index.push(old);
        self.counters.push(counters);
    }
}

fn empty_ip(l: Layout) -> Vec<u8> {
    vec![0; l.ip_size]
}

fn write_entry(
    out: &mut Vec<u8>,
    l: Layout,
    ip: &[u8],
    nfcache: u32,
    matches: &[Extension],
    target: &Extension,
) {
    let start = out.len();
    out.extend_from_slice(ip);
    out.extend_from_slice(&nfcache.to_ne_bytes());
    out.resize(start + l.entry_size, 0);
    let target_offset = l.entry_size + matches.iter().map(|m| m.size()).sum::<usize>();
    let next_offset = target_offset + target.size();
    out[start + l.target_offset_at..start + l.target_offset_at + 2]
        .copy_from_slice(&(target_offset as u16).to_ne_bytes());
    out[start + l.next_offset_at..start + l.next_offset_at + 2]
        .copy_from_slice(&(next_offset as u16).to_ne_bytes());
    for m in matches {
        m.write(out);
    }
    target.write(out);
}

fn verdict_target(v: i32) -> Extension {
    Extension::new("", 0, v.to_ne_bytes().to_vec())
}

fn error_target(name: &str) -> Extension {
    let mut data = vec![0u8; XT_FUNCTION_MAXNAMELEN];
    let bytes = name_bytes(name, XT_FUNCTION_MAXNAMELEN);
    data[..bytes.len()].copy_from_slice(&bytes);
    Extension::new("ERROR", 0, data)
}

fn target_size(t: &Target) -> usize {
    match t {
        Target::Verdict(_) | Target::Jump(_) => STANDARD_TARGET_SIZE,
        Target::Extension(e) => e.size(),
    }
}

fn entry_size(l: Layout, matches: &[Extension], t: &Target) -> usize {
    l.entry_size + matches.iter().map(|m| m.size()).sum::<usize>() + target_size(t)
}

/// Bytes of a chain's rules plus its tail entry (the policy or the RETURN).
fn chain_body_size(l: Layout, c: &Chain) -> usize {
    c.rules
        .iter()
        .map(|r| entry_size(l, &r.matches, &r.target))
        .sum::<usize>()
        + l.entry_size
        + STANDARD_TARGET_SIZE
}

/// Encoding, pass 1 (layout): where each user chain starts (the entry after its ERROR head),
/// and the size of the whole blob up to the final ERROR entry.
fn layout<'t>(
    l: Layout,
    builtins: &[&Chain],
    users: &[&'t Chain],
) -> (Vec<(&'t str, usize)>, usize) {
    let mut offset: usize = builtins.iter().map(|c| chain_body_size(l, c)).sum();
    let mut starts = Vec::new();
    for c in users {
        offset += l.entry_size + ERROR_TARGET_SIZE;
        starts.push((c.name.as_str(), offset));
        offset += chain_body_size(l, c);
    }
    (starts, offset)
}

/// Encoding, pass 2: writes the entries in order, resolving jumps to chain offsets.
struct Writer<'a> {
    l: Layout,
    /// User chain starts from the layout pass.
    starts: &'a [(&'a str, usize)],
    /// The all-zero `ipt_ip` of policies, chain heads and tails.
    empty: Vec<u8>,
    enc: Encoded,
}

impl Writer<'_> {
    /// Jump resolution: a rule's target as the extension written to the blob.
    fn target(&self, t: &Target) -> Result<Extension, BlobError> {
        Ok(match t {
            Target::Verdict(v) => verdict_target(*v),
            Target::Jump(c) => {
                let start = self
                    .starts
                    .iter()
                    .find(|(n, _)| n == c)
                    .map(|(_, o)| *o)
                    .ok_or_else(|| BlobError::MissingChain(c.to_string()))?;
                verdict_target(start as i32)
            }
            Target::Extension(e) => e.clone(),
        })
    }

    fn rules(&mut self, c: &Chain) -> Result<(), BlobError> {
        for r in &c.rules {
            let target = self.target(&r.target)?;
            self.enc.push(
                self.l,
                &r.ip,
                r.nfcache,
                &r.matches,
                &target,
                r.old_index,
                r.counters,
            );
        }
        Ok(())
    }

    /// Policies, chain heads and tails: unconditional entries without matches.
    fn fixed(&mut self, target: &Extension, old: Option<usize>, counters: Counters) {
        self.enc
            .push(self.l, &self.empty, 0, &[], target, old, counters);
    }

    fn builtin(&mut self, c: &Chain) -> Result<(), BlobError> {
        let hook = c.hook.expect("built-in");
        self.enc.hook_entry[hook] = self.enc.blob.len() as u32;
        self.rules(c)?;
        self.enc.underflow[hook] = self.enc.blob.len() as u32;
        let (verdict, counters, old) =
            c.policy
                .unwrap_or((VERDICT_ACCEPT, Counters::default(), None));
        self.fixed(&verdict_target(verdict), old, counters);
        Ok(())
    }

    fn user(&mut self, c: &Chain) -> Result<(), BlobError> {
        self.fixed(&error_target(&c.name), None, Counters::default());
        self.rules(c)?;
        self.fixed(&verdict_target(VERDICT_RETURN), None, Counters::default());
        Ok(())
    }
}

impl Table {
    /// Encodes the table in libiptc's layout: built-in chains in hook order, then user
    /// chains sorted by name, then the final ERROR entry.
    pub fn encode(&self, l: Layout) -> Result<Encoded, BlobError> {
        let mut builtins: Vec<&Chain> = self.chains.iter().filter(|c| c.hook.is_some()).collect();
        builtins.sort_by_key(|c| c.hook);
        let mut users: Vec<&Chain> = self.chains.iter().filter(|c| c.hook.is_none()).collect();
        users.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));

        let (starts, size) = layout(l, &builtins, &users);
        let mut w = Writer {
            l,
            starts: &starts,
            empty: empty_ip(l),
            enc: Encoded {
                blob: Vec::with_capacity(size + 256),
                num_entries: 0,
                hook_entry: [u32::MAX; 5],
                underflow: [u32::MAX; 5],
                old_index: Vec::new(),
                counters: Vec::new(),
            },
        };
        for c in &builtins {
            w.builtin(c)?;
        }
        for c in &users {
            w.user(c)?;
        }
        w.fixed(&error_target("ERROR"), None, Counters::default());
        Ok(w.enc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GroupFile, RawConfig, Setting};
    use crate::model::{build, Family, Flavor, Table as ModelTable};
    use crate::xt::merge::merge;

    fn fixture(bytes: &[u8]) -> (u32, [u32; 5], [u32; 5], &[u8]) {
        let u = |i: usize| u32::from_ne_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
        let hooks = |o: usize| [u(o), u(o + 1), u(o + 2), u(o + 3), u(o + 4)];
        (u(0), hooks(1), hooks(6), &bytes[44..])
    }

    /// Counters and `comefrom` are kernel bookkeeping, reset on every replace.
    fn without_counters(blob: &[u8], l: Layout) -> Vec<u8> {
        let mut b = blob.to_vec();
        let mut at = 0;
        while at + l.entry_size <= b.len() {
            let next = u16_at(&b, at + l.next_offset_at) as usize;
            b[at + l.comefrom_at..at + l.comefrom_at + 4].fill(0);
            b[at + l.counters_at..at + l.counters_at + 16].fill(0);
            at += next.max(1);
        }
        b
    }

    #[test]
    fn tables_written_by_iptables_restore_reencode_byte_identically() {
        let fixtures: [(&str, &[u8], Layout); 6] = [
            (
                "mangle",
                include_bytes!("../../ruleset/xtables/tproxy-mangle-ipv4.bin"),
                IPV4,
            ),
            (
                "nat",
                include_bytes!("../../ruleset/xtables/tproxy-nat-ipv4.bin"),
                IPV4,
            ),
            (
                "raw",
                include_bytes!("../../ruleset/xtables/tproxy-raw-ipv4.bin"),
                IPV4,
            ),
            (
                "mangle",
                include_bytes!("../../ruleset/xtables/tproxy-mangle-ipv6.bin"),
                IPV6,
            ),
            (
                "nat",
                include_bytes!("../../ruleset/xtables/tproxy-nat-ipv6.bin"),
                IPV6,
            ),
            (
                "raw",
                include_bytes!("../../ruleset/xtables/tproxy-raw-ipv6.bin"),
                IPV6,
            ),
        ];
        for (name, bytes, l) in fixtures {
            let (valid_hooks, hook_entry, underflow, blob) = fixture(bytes);
            let t = Table::decode(name, valid_hooks, hook_entry, underflow, blob, l).unwrap();
            assert!(
                t.chains.iter().any(|c| c.name.starts_with("ISTIO_")),
                "{name}: decoded Istio's chains"
            );
            let enc = t.encode(l).unwrap();
            assert_eq!(
                without_counters(&enc.blob, l),
                without_counters(blob, l),
                "{name} ipv6={}",
                l.ipv6
            );
            for h in 0..5 {
                if valid_hooks & (1 << h) != 0 {
                    assert_eq!(
                        (enc.hook_entry[h], enc.underflow[h]),
                        (hook_entry[h], underflow[h]),
                        "{name} hook {h}"
                    );
                }
            }
        }
    }

    /// A rule without counters or provenance: ip, matches, target.
    type RuleShape = (Vec<u8>, Vec<Extension>, Target);

    #[test]
    fn decode_of_encode_gives_back_the_model_tables() {
        let raw = RawConfig {
            inbound_interception_mode: Some(Setting::new("-m", "TPROXY")),
            enable_ipv6: Some(Setting::new("--ipv6", "true")),
            redirect_dns: Some(Setting::new("--redirect-dns", "true")),
            capture_all_dns: Some(Setting::new("--capture-all-dns", "true")),
            drop_invalid: Some(Setting::new("--drop-invalid", "true")),
            outbound_ip_ranges_include: Some(Setting::new("-i", "10.0.0.0/8,fd00::/8")),
            ..Default::default()
        };
        let plan = build(
            &raw.validate(&GroupFile::default()).unwrap(),
            Flavor::Iptables,
        );
        for (family, l) in [(Family::V4, IPV4), (Family::V6, IPV6)] {
            for (table, hooks) in [
                (ModelTable::Nat, &[0usize, 1, 3, 4][..]),
                (ModelTable::Mangle, &[0, 1, 2, 3, 4]),
                (ModelTable::Raw, &[0, 3]),
            ] {
                let model = merge(
                    &Table::instantiated(table.iptables_name(), hooks),
                    &plan,
                    table,
                    family,
                    l,
                );
                let enc = model.encode(l).unwrap();
                let decoded = Table::decode(
                    table.iptables_name(),
                    model.valid_hooks,
                    enc.hook_entry,
                    enc.underflow,
                    &enc.blob,
                    l,
                )
                .unwrap();
                let strip = |t: &Table| {
                    let mut chains: Vec<(String, Vec<RuleShape>)> = t
                        .chains
                        .iter()
                        .map(|c| {
                            (
                                c.name.clone(),
                                c.rules
                                    .iter()
                                    .map(|r| (r.ip.clone(), r.matches.clone(), r.target.clone()))
                                    .collect(),
                            )
                        })
                        .collect();
                    chains.sort_by(|a, b| a.0.cmp(&b.0));
                    chains
                };
                assert_eq!(strip(&decoded), strip(&model), "{table:?} {family:?}");
                assert!(model.chains.iter().any(|c| c.name.starts_with("ISTIO_")));
            }
        }
    }
}

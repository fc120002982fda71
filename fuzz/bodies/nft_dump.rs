// Shared body of the `nft_dump` fuzz target (fuzz/fuzz_targets/nft_dump.rs) and its property
// test (integration/properties.rs): included as a module, not a crate of its own.
//
// What `verify`, `apply` and `remove` read from the kernel: nf_tables dump replies (tables,
// chains, sets, set elements, rules), decoded into our expression IR and compared with a
// plan. A tiny `NfTables` of our own answers every dump with the input's messages, so the
// real read-back runs on kernel-like bytes without a kernel.

use mesh_redirect::config::RawConfig;
use mesh_redirect::kernel::{NfDump, NfTables};
use mesh_redirect::model::{build, Flavor, Plan};
use mesh_redirect::netlink::wire::{find_attr, messages, NFGENMSG_LEN};
use mesh_redirect::nft::abi::*;
use mesh_redirect::nft::batch::Batch;
use mesh_redirect::nft::readback;
use mesh_redirect::nft::socket::NetlinkError;

/// Dump replies by kind: the attribute area of each message (after `nfgenmsg`).
#[derive(Default)]
pub struct Replies {
    tables: Vec<Vec<u8>>,
    chains: Vec<Vec<u8>>,
    sets: Vec<Vec<u8>>,
    elements: Vec<Vec<u8>>,
    rules: Vec<Vec<u8>>,
}

impl Replies {
    /// Sorts netlink messages into dump replies by their `NFT_MSG_NEW*` type (the subsystem
    /// byte is ignored, so a batch we encode is a valid input too).
    pub fn from_messages(data: &[u8]) -> Replies {
        let mut r = Replies::default();
        for m in messages(data) {
            let body = m.payload.get(NFGENMSG_LEN..).unwrap_or_default().to_vec();
            match m.msg_type & 0xff {
                NFT_MSG_NEWTABLE => r.tables.push(body),
                NFT_MSG_NEWCHAIN => r.chains.push(body),
                NFT_MSG_NEWSET => r.sets.push(body),
                NFT_MSG_NEWSETELEM => r.elements.push(body),
                NFT_MSG_NEWRULE => r.rules.push(body),
                _ => {}
            }
        }
        r
    }
}

impl NfTables for Replies {
    fn reserve_seqs(&mut self, _count: usize) -> u32 {
        1
    }

    fn send_batch(&mut self, _batch: &Batch) -> Result<(), NetlinkError> {
        unreachable!("reading back never writes")
    }

    fn dump(&mut self, request: NfDump<'_>) -> Result<Vec<Vec<u8>>, NetlinkError> {
        Ok(match request {
            NfDump::Tables => self.tables.clone(),
            NfDump::Chains => self.chains.clone(),
            NfDump::Sets => self.sets.clone(),
            // The kernel answers for the set asked about; replies naming another set are
            // dropped, those naming none are kept (the decoder must cope either way).
            NfDump::SetElements { set, .. } => self
                .elements
                .iter()
                .filter(|e| {
                    find_attr(e, NFTA_SET_ELEM_LIST_SET).is_none_or(|a| a.str() == Some(set))
                })
                .cloned()
                .collect(),
            NfDump::Rules { .. } => self.rules.clone(),
        })
    }
}

thread_local! {
    /// Plans `verify` compares against: REDIRECT, and TPROXY with IPv6, DNS and drop-invalid.
    static PLANS: Vec<Plan> = {
        let s = |o: &str, v: &str| Some(mesh_redirect::config::Setting::new(o, v));
        let tproxy = RawConfig {
            inbound_interception_mode: s("-m", "TPROXY"),
            enable_ipv6: s("--ipv6", "true"),
            redirect_dns: s("--redirect-dns", "true"),
            capture_all_dns: s("--capture-all-dns", "true"),
            drop_invalid: s("--drop-invalid", "true"),
            outbound_ip_ranges_include: s("-i", "10.0.0.0/8,fd00::/8"),
            inbound_ports_include: s("-b", "*"),
            ..Default::default()
        };
        [RawConfig::default(), tproxy]
            .iter()
            .map(|raw| {
                let cfg = raw
                    .validate(&mesh_redirect::config::GroupFile::default())
                    .expect("a valid configuration");
                build(&cfg, Flavor::Nftables)
            })
            .collect()
    };
}

/// Input: netlink messages (`nlmsghdr`, `nfgenmsg`, attributes), as a dump would return
/// them; the same bytes also go to the batch decoder.
pub fn run(data: &[u8]) {
    let _ = readback::decode_batch_rules(data);
    check(Replies::from_messages(data));
}

/// Reads the tables back through the replies and diffs them against each plan.
pub fn check(mut replies: Replies) {
    let mut wanted: Vec<String> = mesh_redirect::backend::nftables::our_table_names()
        .into_iter()
        .map(str::to_string)
        .collect();
    let listed = readback::inet_tables(&mut replies).expect("our dumps never fail");
    for name in listed.into_iter().take(4) {
        if !wanted.contains(&name) {
            wanted.push(name);
        }
    }
    let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    let tables = readback::read_tables(&mut replies, &wanted).expect("our dumps never fail");
    assert!(tables.len() <= wanted.len());
    for t in &tables {
        assert!(
            wanted.contains(&t.name.as_str()),
            "{} was not asked for",
            t.name
        );
        for c in &t.chains {
            for r in &c.rules {
                for e in r {
                    let _ = e.to_string();
                }
            }
        }
    }
    PLANS.with(|plans| {
        for plan in plans {
            for d in mesh_redirect::nft::verify::diff(plan, &tables) {
                let _ = d.to_string();
            }
        }
    });
}

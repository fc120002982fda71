//! Developer tool: prints the raw xtables entries of a table in a namespace (matches and
//! targets with name, revision and data), to compare encodings with what iptables writes.
//! `cargo run --example xt_dump -- NETNS nat [4|6] [FILE]`: with FILE, also writes the table
//! as a fixture (valid_hooks, hook_entry[5], underflow[5] as native u32, then the entries).

use mesh_redirect::netns::Netns;
use mesh_redirect::xt::abi::{IPV4, IPV6};
use mesh_redirect::xt::socket::XtSocket;
use mesh_redirect::xt::table::Target;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ns = Netns::open(&args[1]).expect("netns");
    let layout = if args.get(3).map(String::as_str) == Some("6") {
        IPV6
    } else {
        IPV4
    };
    let table = args[2].clone();
    ns.run(move || {
        let s = XtSocket::open(layout).expect("socket");
        let (info, t) = s.read(&table).expect("read");
        println!("{info:?}");
        for c in &t.chains {
            println!("chain {} hook {:?} policy {:?}", c.name, c.hook, c.policy);
            for r in &c.rules {
                println!("  ip {}", hex(&r.ip));
                for m in &r.matches {
                    println!(
                        "    match {} rev {} len {} {}",
                        m.name,
                        m.revision,
                        m.data.len(),
                        hex(&m.data)
                    );
                }
                match &r.target {
                    Target::Extension(e) => println!(
                        "    target {} rev {} len {} {}",
                        e.name,
                        e.revision,
                        e.data.len(),
                        hex(&e.data)
                    ),
                    t => println!("    target {t:?}"),
                }
            }
        }
        let enc = t.encode(layout).expect("encode");
        if let Some(file) = std::env::args().nth(4) {
            let mut out: Vec<u8> = Vec::new();
            for v in std::iter::once(info.valid_hooks)
                .chain(info.hook_entry)
                .chain(info.underflow)
            {
                out.extend(v.to_ne_bytes());
            }
            out.extend(
                mesh_redirect::kernel::XtTables::entries(&s, &table, info.size).expect("entries"),
            );
            std::fs::write(file, out).expect("write fixture");
        }
        println!(
            "re-encoded {} entries, {} bytes (kernel: {} entries, {} bytes)",
            enc.num_entries,
            enc.blob.len(),
            info.num_entries,
            info.size
        );
    })
    .unwrap();
}

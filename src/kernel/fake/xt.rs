//! Legacy xtables in memory, per family. A table comes into being on its first read with
//! empty built-in chains and ACCEPT policies (as the kernel instantiates it), a replace must
//! name the entry count the table has (else `EAGAIN`: someone wrote meanwhile), and the
//! entries are served as the blob our own codec writes, so the decoder runs on them.

use super::{Call, State};
use crate::kernel::XtTables;
use crate::xt::abi::Layout;
use crate::xt::socket::Info;
use crate::xt::table::{Counters, Encoded, Rule, Table};
use std::cell::RefCell;
use std::io;
use std::rc::Rc;

/// Legacy tables of both families, newest first (the order `/proc` lists them in).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XtState {
    /// `(ipv6, table)`.
    pub tables: Vec<(bool, Table)>,
}

/// The built-in chains (hook numbers) of a table the kernel knows.
fn builtin_hooks(name: &str) -> Option<&'static [usize]> {
    match name {
        "nat" => Some(&[0, 1, 3, 4]),
        "mangle" => Some(&[0, 1, 2, 3, 4]),
        "raw" => Some(&[0, 3]),
        "filter" => Some(&[1, 2, 3]),
        _ => None,
    }
}

impl XtState {
    /// The names of the loaded tables of a family.
    pub fn loaded(&self, l: Layout) -> Vec<String> {
        self.tables
            .iter()
            .filter(|(v6, _)| *v6 == l.ipv6)
            .map(|(_, t)| t.name.clone())
            .collect()
    }

    /// A loaded table.
    pub fn table(&self, l: Layout, name: &str) -> Option<&Table> {
        self.tables
            .iter()
            .find(|(v6, t)| *v6 == l.ipv6 && t.name == name)
            .map(|(_, t)| t)
    }

    /// A loaded table, to change it as another tool would (keep `num_entries` right).
    pub fn table_mut(&mut self, l: Layout, name: &str) -> Option<&mut Table> {
        self.tables
            .iter_mut()
            .find(|(v6, t)| *v6 == l.ipv6 && t.name == name)
            .map(|(_, t)| t)
    }

    /// Appends `rule` to a chain of a loaded table, as `iptables -A` would.
    pub fn append(&mut self, l: Layout, table: &str, chain: &str, rule: Rule) {
        let t = self.table_mut(l, table).expect("a loaded table");
        t.chain_mut(chain)
            .expect("an existing chain")
            .rules
            .push(rule);
        t.num_entries += 1;
    }

    fn get_or_instantiate(&mut self, l: Layout, name: &str) -> io::Result<&Table> {
        if self.table(l, name).is_none() {
            let hooks =
                builtin_hooks(name).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
            self.tables
                .insert(0, (l.ipv6, Table::instantiated(name, hooks)));
        }
        Ok(self.table(l, name).expect("just instantiated"))
    }
}

fn encode(t: &Table, l: Layout) -> io::Result<Encoded> {
    t.encode(l)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// A fake xtables socket of one family.
#[derive(Debug)]
pub struct FakeXtSocket {
    state: Rc<RefCell<State>>,
    layout: Layout,
}

impl FakeXtSocket {
    pub(crate) fn new(state: Rc<RefCell<State>>, layout: Layout) -> FakeXtSocket {
        FakeXtSocket { state, layout }
    }
}

impl XtTables for FakeXtSocket {
    fn layout(&self) -> Layout {
        self.layout
    }

    fn info(&self, table: &str) -> io::Result<Info> {
        let mut s = self.state.borrow_mut();
        s.enter(Call::XtInfo)?;
        let t = s.xt.get_or_instantiate(self.layout, table)?;
        let enc = encode(t, self.layout)?;
        Ok(Info {
            valid_hooks: t.valid_hooks,
            hook_entry: enc.hook_entry,
            underflow: enc.underflow,
            num_entries: enc.num_entries as u32,
            size: enc.blob.len() as u32,
        })
    }

    fn entries(&self, table: &str, size: u32) -> io::Result<Vec<u8>> {
        let mut s = self.state.borrow_mut();
        s.enter(Call::XtEntries)?;
        let t =
            s.xt.table(self.layout, table)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let enc = encode(t, self.layout)?;
        if enc.blob.len() != size as usize {
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
        Ok(enc.blob)
    }

    fn replace(
        &self,
        table: &str,
        valid_hooks: u32,
        num_counters: usize,
        enc: &Encoded,
    ) -> io::Result<Vec<Counters>> {
        let mut s = self.state.borrow_mut();
        s.enter(Call::XtReplace)?;
        let l = self.layout;
        let current =
            s.xt.table(l, table)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        if current.num_entries != num_counters {
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
        if current.valid_hooks != valid_hooks {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let old = encode(current, l)?.counters;
        let mut new = Table::decode(
            table,
            valid_hooks,
            enc.hook_entry,
            enc.underflow,
            &enc.blob,
            l,
        )
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // The kernel refuses a target it has no module for.
        let unknown = new.chains.iter().flat_map(|c| &c.rules).any(|r| {
            matches!(&r.target, crate::xt::table::Target::Extension(e) if e.name == "MESHFAULT")
        });
        if unknown {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        // What was read carries its read positions; what the kernel holds does not.
        for c in &mut new.chains {
            if let Some(p) = &mut c.policy {
                p.2 = None;
            }
            for r in &mut c.rules {
                r.old_index = None;
            }
        }
        *s.xt.table_mut(l, table).expect("checked above") = new;
        Ok(old)
    }

    fn add_counters(&self, table: &str, counters: &[Counters]) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        s.enter(Call::XtAddCounters)?;
        let t =
            s.xt.table(self.layout, table)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        if t.num_entries != counters.len() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }
}

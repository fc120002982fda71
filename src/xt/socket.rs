//! The xtables socket interface: `getsockopt(IPT_SO_GET_INFO / GET_ENTRIES)` to read a
//! table, `setsockopt(IPT_SO_SET_REPLACE)` to swap it whole, `IPT_SO_SET_ADD_COUNTERS` to
//! carry counters over. The replace is an optimistic lock: it names how many entries the
//! table had when read, and the kernel answers `EAGAIN` if that changed meanwhile.

use super::abi::*;
use super::table::{Counters, Encoded, Table};
use crate::kernel::XtTables;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `ipt_getinfo`: what a table looks like before its entries are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// Bit mask of the hooks the table has built-in chains for.
    pub valid_hooks: u32,
    /// Offset of each built-in chain's first entry.
    pub hook_entry: [u32; 5],
    /// Offset of each built-in chain's policy entry.
    pub underflow: [u32; 5],
    /// Number of entries.
    pub num_entries: u32,
    /// Size of the entries in bytes.
    pub size: u32,
}

/// A raw socket for one family's xtables interface, in the namespace that opened it.
pub struct XtSocket {
    fd: OwnedFd,
    /// The family's entry layout.
    pub layout: Layout,
}

fn name_bytes(table: &str) -> [u8; XT_TABLE_MAXNAMELEN] {
    let mut n = [0u8; XT_TABLE_MAXNAMELEN];
    n[..table.len()].copy_from_slice(table.as_bytes());
    n
}

fn u32s(b: &[u8], at: usize) -> [u32; 5] {
    let mut out = [0u32; 5];
    for (i, v) in out.iter_mut().enumerate() {
        *v = u32::from_ne_bytes(b[at + 4 * i..at + 4 * i + 4].try_into().expect("4 bytes"));
    }
    out
}

impl XtSocket {
    /// A raw socket in the calling thread's namespace (the table is created there lazily by
    /// the first read).
    pub fn open(layout: Layout) -> io::Result<XtSocket> {
        // SAFETY: plain socket(2); the descriptor is owned from here on.
        let fd = unsafe {
            libc::socket(
                layout.family,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor.
        Ok(XtSocket {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            layout,
        })
    }

    fn getsockopt(&self, opt: i32, buf: &mut [u8]) -> io::Result<()> {
        let mut len = buf.len() as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `buf`.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                self.layout.sockopt_level,
                opt,
                buf.as_mut_ptr() as *mut libc::c_void,
                &mut len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn setsockopt(&self, opt: i32, buf: &[u8]) -> io::Result<()> {
        // SAFETY: the kernel reads `buf.len()` bytes from `buf`.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                self.layout.sockopt_level,
                opt,
                buf.as_ptr() as *const libc::c_void,
                buf.len() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads and decodes a table; retries while it changes underneath.
    pub fn read(&self, table: &str) -> io::Result<(Info, Table)> {
        read_table(self, table)
    }
}

/// Reads and decodes a table through any [`XtTables`]; retries while it changes underneath
/// (`EAGAIN` between the info and the entries).
pub fn read_table(x: &impl XtTables, table: &str) -> io::Result<(Info, Table)> {
    for _ in 0..16 {
        let info = x.info(table)?;
        let blob = match x.entries(table, info.size) {
            Ok(b) => b,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            Err(e) => return Err(e),
        };
        let t = Table::decode(
            table,
            info.valid_hooks,
            info.hook_entry,
            info.underflow,
            &blob,
            x.layout(),
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("table {table}: {e}")))?;
        return Ok((info, t));
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

/// Names of the tables the kernel has instantiated in the calling thread's namespace.
pub fn loaded_tables(layout: Layout) -> io::Result<Vec<String>> {
    let file = if layout.ipv6 {
        "/proc/thread-self/net/ip6_tables_names"
    } else {
        "/proc/thread-self/net/ip_tables_names"
    };
    match std::fs::read_to_string(file) {
        Ok(s) => Ok(s.lines().map(str::to_string).collect()),
        // The file exists once the family's xtables module is loaded; without it no
        // table can exist. Any other failure means we cannot see: say so.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        // The errno is kept: the caller tells "not permitted" from other failures by it.
        Err(e) => Err(e),
    }
}

impl XtTables for XtSocket {
    fn layout(&self) -> Layout {
        self.layout
    }

    fn info(&self, table: &str) -> io::Result<Info> {
        let mut buf = vec![0u8; GETINFO_SIZE];
        buf[..XT_TABLE_MAXNAMELEN].copy_from_slice(&name_bytes(table));
        // The first read of a table makes the kernel instantiate it; two first readers race
        // and the loser gets EEXIST although the table is then there. Read again.
        let mut tries = 0;
        loop {
            match self.getsockopt(IPT_SO_GET_INFO, &mut buf) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && tries < 16 => {
                    tries += 1;
                    std::thread::yield_now();
                }
                r => break r?,
            }
        }
        Ok(Info {
            valid_hooks: u32::from_ne_bytes(buf[32..36].try_into().expect("4 bytes")),
            hook_entry: u32s(&buf, 36),
            underflow: u32s(&buf, 56),
            num_entries: u32::from_ne_bytes(buf[76..80].try_into().expect("4 bytes")),
            size: u32::from_ne_bytes(buf[80..84].try_into().expect("4 bytes")),
        })
    }

    fn entries(&self, table: &str, size: u32) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; GET_ENTRIES_HEADER + size as usize];
        buf[..XT_TABLE_MAXNAMELEN].copy_from_slice(&name_bytes(table));
        buf[32..36].copy_from_slice(&size.to_ne_bytes());
        self.getsockopt(IPT_SO_GET_ENTRIES, &mut buf)?;
        buf.drain(..GET_ENTRIES_HEADER);
        Ok(buf)
    }

    fn replace(
        &self,
        table: &str,
        valid_hooks: u32,
        num_counters: usize,
        enc: &Encoded,
    ) -> io::Result<Vec<Counters>> {
        let mut old = vec![0u8; num_counters.max(1) * 16];
        let mut buf = vec![0u8; REPLACE_HEADER];
        buf[..XT_TABLE_MAXNAMELEN].copy_from_slice(&name_bytes(table));
        buf[32..36].copy_from_slice(&valid_hooks.to_ne_bytes());
        buf[36..40].copy_from_slice(&(enc.num_entries as u32).to_ne_bytes());
        buf[40..44].copy_from_slice(&(enc.blob.len() as u32).to_ne_bytes());
        for i in 0..5 {
            buf[44 + 4 * i..48 + 4 * i].copy_from_slice(&enc.hook_entry[i].to_ne_bytes());
            buf[64 + 4 * i..68 + 4 * i].copy_from_slice(&enc.underflow[i].to_ne_bytes());
        }
        buf[84..88].copy_from_slice(&(num_counters as u32).to_ne_bytes());
        buf[88..96].copy_from_slice(&(old.as_mut_ptr() as u64).to_ne_bytes());
        buf.extend_from_slice(&enc.blob);
        self.setsockopt(IPT_SO_SET_REPLACE, &buf)?;
        Ok(old
            .chunks_exact(16)
            .take(num_counters)
            .map(|c| Counters {
                packets: u64::from_ne_bytes(c[..8].try_into().expect("8 bytes")),
                bytes: u64::from_ne_bytes(c[8..].try_into().expect("8 bytes")),
            })
            .collect())
    }

    fn add_counters(&self, table: &str, counters: &[Counters]) -> io::Result<()> {
        let mut buf = vec![0u8; COUNTERS_INFO_HEADER];
        buf[..XT_TABLE_MAXNAMELEN].copy_from_slice(&name_bytes(table));
        buf[32..36].copy_from_slice(&(counters.len() as u32).to_ne_bytes());
        for c in counters {
            buf.extend_from_slice(&c.packets.to_ne_bytes());
            buf.extend_from_slice(&c.bytes.to_ne_bytes());
        }
        self.setsockopt(IPT_SO_SET_ADD_COUNTERS, &buf)
    }
}

//! Owner-group names → gids, from a group file (`/etc/group` format), the way `nft` resolves
//! `skgid java` (getgrnam on the host). Read once, no NSS modules, no fork.

use super::ConfigError;
use std::collections::HashMap;

/// Something that knows group ids by name.
pub trait GroupDatabase {
    /// The gid of group `name`, if it exists.
    fn gid_of(&self, name: &str) -> Option<u32>;
}

/// A parsed group file.
#[derive(Debug, Default, Clone)]
pub struct GroupFile {
    by_name: HashMap<String, u32>,
}

impl GroupFile {
    /// The host's group file.
    pub const HOST_PATH: &'static str = "/etc/group";

    /// Parses `/etc/group` lines (`name:password:gid:members`), skipping malformed ones.
    pub fn parse(text: &str) -> GroupFile {
        let by_name = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                let _password = f.next()?;
                let gid = f.next()?.parse().ok()?;
                Some((name.to_string(), gid))
            })
            .collect();
        GroupFile { by_name }
    }

    /// Reads and parses the group file at `path`.
    pub fn load(path: &str) -> Result<GroupFile, ConfigError> {
        std::fs::read_to_string(path)
            .map(|t| GroupFile::parse(&t))
            .map_err(|e| ConfigError::GroupDatabase {
                path: path.to_string(),
                reason: e.to_string(),
            })
    }
}

impl GroupDatabase for GroupFile {
    fn gid_of(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }
}

/// The host's group file, read only when a group is given by name.
#[derive(Debug, Default)]
pub struct HostGroups(std::sync::OnceLock<GroupFile>);

impl GroupDatabase for HostGroups {
    fn gid_of(&self, name: &str) -> Option<u32> {
        self.0
            .get_or_init(|| GroupFile::load(GroupFile::HOST_PATH).unwrap_or_default())
            .gid_of(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_group_lines() {
        let db = GroupFile::parse("root:x:0:\n# comment\njava:x:1234:alice,bob\nbroken\n");
        assert_eq!(db.gid_of("root"), Some(0));
        assert_eq!(db.gid_of("java"), Some(1234));
        assert_eq!(db.gid_of("broken"), None);
        assert_eq!(db.gid_of("ftp"), None);
    }
}

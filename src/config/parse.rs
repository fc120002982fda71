//! Parsers for single values, with Istio's list syntax: split on `,`, drop empty elements,
//! no whitespace trimming (`tools/common/config/types.go` `Split`). A space inside a list
//! is therefore an error here, exactly where Istio would have produced a broken rule.

use super::ConfigError;
use std::fmt;
use std::net::IpAddr;

/// Istio's `Split`: `""` is the empty list; empty elements (`"a,,b,"`) are dropped.
pub fn split(value: &str) -> Vec<&str> {
    value.split(',').filter(|s| !s.is_empty()).collect()
}

/// One port, 1–65535, digits only.
pub fn port(field: &str, value: &str) -> Result<u16, ConfigError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ConfigError::invalid(field, value, "port is not a number"));
    }
    match value.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(p as u16),
        Ok(_) => Err(ConfigError::invalid(
            field,
            value,
            "port must be between 1 and 65535",
        )),
        Err(_) => Err(ConfigError::invalid(field, value, "port is not a number")),
    }
}

/// A port list (Istio's `Split`); `*` is not an element.
pub fn port_list(field: &str, value: &str) -> Result<Vec<u16>, ConfigError> {
    split(value)
        .into_iter()
        .map(|p| {
            if p == "*" {
                Err(ConfigError::invalid(
                    field,
                    value,
                    "'*' is not allowed in this port list",
                ))
            } else {
                port(field, p).map_err(|_| {
                    ConfigError::invalid(field, value, format!("{p:?} is not a port (1-65535)"))
                })
            }
        })
        .collect()
}

/// A numeric id (uid, gid, mark, routing table): decimal, or hexadecimal with `0x`.
pub fn number_u32(field: &str, value: &str, what: &str) -> Result<u32, ConfigError> {
    let invalid = || ConfigError::invalid(field, value, format!("{what} is not a number"));
    // Digits only: `from_str_radix` and `parse` would also take a sign.
    match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u32::from_str_radix(hex, 16).map_err(|_| invalid())
        }
        None if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
            value.parse::<u32>().map_err(|_| invalid())
        }
        _ => Err(invalid()),
    }
}

/// A list of numeric ids (uids, gids); `what` names them in messages.
pub fn id_list(field: &str, value: &str, what: &str) -> Result<Vec<u32>, ConfigError> {
    split(value)
        .into_iter()
        .map(|v| {
            let digits = v.bytes().all(|b| b.is_ascii_digit());
            v.parse::<u32>().ok().filter(|_| digits).ok_or_else(|| {
                ConfigError::invalid(field, value, format!("{v:?} is not a numeric {what}"))
            })
        })
        .collect()
}

/// Go's `strconv.ParseBool`, which is what Istio applies to its boolean env variables.
pub fn boolean(field: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(ConfigError::invalid(field, value, "expected true or false")),
    }
}

/// An address prefix exactly as written: `127.0.0.1/8` keeps its host bits (Go's
/// `netip.Prefix.String()` does the same); [`Cidr::network`] gives the masked form the
/// kernel matches on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cidr {
    /// The address, host bits included.
    pub addr: IpAddr,
    /// The prefix length.
    pub len: u8,
    /// How the address was written, when that differs from Rust's canonical form and Istio
    /// prints the user's text (DNS servers: `::127.0.0.53/128`).
    pub spelling: Option<String>,
}

impl Cidr {
    /// Parses `ADDR/LEN` like Go's `netip.ParsePrefix`.
    pub fn parse(field: &str, value: &str) -> Result<Cidr, ConfigError> {
        let (addr, len) = value.split_once('/').ok_or_else(|| {
            ConfigError::invalid(
                field,
                value,
                "expected an address prefix such as 10.0.0.0/8",
            )
        })?;
        let addr: IpAddr = addr.parse().map_err(|_| {
            ConfigError::invalid(field, value, format!("{addr:?} is not an IP address"))
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len.parse::<u8>() {
            // Like Go's netip: digits only, no sign, no leading zero.
            Ok(l)
                if l <= max
                    && len.bytes().all(|b| b.is_ascii_digit())
                    && (len == "0" || !len.starts_with('0')) =>
            {
                l
            }
            _ => {
                return Err(ConfigError::invalid(
                    field,
                    value,
                    format!("prefix length must be a number from 0 to {max}"),
                ))
            }
        };
        // Go's netip unmaps nothing here: `::ffff:1.2.3.4/120` stays IPv6, like in Istio.
        Ok(Cidr {
            addr,
            len,
            spelling: None,
        })
    }

    /// A single host: `/32` or `/128`.
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            addr,
            len: if addr.is_ipv4() { 32 } else { 128 },
            spelling: None,
        }
    }

    /// A single host written as the user wrote it (Istio formats `"%s/128"` with the text).
    pub fn host_as_written(addr: IpAddr, written: &str) -> Cidr {
        let mut c = Cidr::host(addr);
        if written != addr.to_string() {
            c.spelling = Some(written.to_string());
        }
        c
    }

    /// Whether this is an IPv4 prefix.
    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// The family's address length in bits (32 or 128).
    pub fn max_len(&self) -> u8 {
        if self.is_v4() {
            32
        } else {
            128
        }
    }

    /// Address bytes with the host bits cleared (what the kernel compares).
    pub fn network_bytes(&self) -> Vec<u8> {
        let mut bytes = self.addr_bytes();
        for (i, b) in bytes.iter_mut().enumerate() {
            let bits_before = (i * 8) as u32;
            let keep = (self.len as u32).saturating_sub(bits_before).min(8);
            *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
        }
        bytes
    }

    /// The prefix mask as bytes.
    pub fn mask_bytes(&self) -> Vec<u8> {
        let n = if self.is_v4() { 4 } else { 16 };
        (0..n)
            .map(|i| {
                let keep = (self.len as u32).saturating_sub((i * 8) as u32).min(8);
                if keep == 0 {
                    0
                } else {
                    0xffu8 << (8 - keep)
                }
            })
            .collect()
    }

    /// The address bytes as written (host bits kept).
    pub fn addr_bytes(&self) -> Vec<u8> {
        match self.addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.spelling {
            Some(text) => write!(f, "{text}/{}", self.len),
            None => write!(f, "{}/{}", self.addr, self.len),
        }
    }
}

/// A network interface name the kernel can hold: 1–15 bytes, no `/`, no whitespace, no NUL,
/// not `.` or `..` (`dev_valid_name` in net/core/dev.c).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfName(String);

impl IfName {
    /// Checks `value` against the kernel's rules.
    pub fn parse(field: &str, value: &str) -> Result<IfName, ConfigError> {
        let bad =
            |why: &str| ConfigError::invalid(field, value, format!("not an interface name: {why}"));
        if value.is_empty() {
            return Err(bad("empty"));
        }
        if value.len() > 15 {
            return Err(bad("longer than 15 bytes"));
        }
        if value == "." || value == ".." {
            return Err(bad("reserved name"));
        }
        if value
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
        {
            return Err(bad("contains '/', ':', whitespace or NUL"));
        }
        Ok(IfName(value.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_drops_empty_elements_but_keeps_spaces() {
        assert_eq!(split(""), Vec::<&str>::new());
        assert_eq!(split("6000,7000,"), vec!["6000", "7000"]);
        assert_eq!(split(",a,,b"), vec!["a", "b"]);
        assert_eq!(split("1, 2"), vec!["1", " 2"]);
    }

    #[test]
    fn ports_are_checked_for_range_and_form() {
        assert_eq!(port("-p", "15001"), Ok(15001));
        assert!(port("-p", "0").is_err());
        assert!(port("-p", "65536").is_err());
        assert!(port("-p", "http").is_err());
        assert!(port("-p", "+80").is_err());
        let err = port_list("--istio-inbound-ports", "80,x").unwrap_err();
        assert!(err.to_string().contains("--istio-inbound-ports"));
        assert!(err.to_string().contains("\"x\""));
        assert!(port_list("-o", "*").is_err());
    }

    #[test]
    fn cidr_keeps_host_bits_and_masks_on_demand() {
        let c = Cidr::parse("-x", "127.0.0.1/8").unwrap();
        assert_eq!(c.to_string(), "127.0.0.1/8");
        assert_eq!(c.network_bytes(), vec![127, 0, 0, 0]);
        assert_eq!(c.mask_bytes(), vec![255, 0, 0, 0]);
        let c = Cidr::parse("-x", "2001:db8::1/33").unwrap();
        assert_eq!(&c.network_bytes()[..6], &[0x20, 0x01, 0x0d, 0xb8, 0, 0]);
        assert_eq!(&c.mask_bytes()[..6], &[255, 255, 255, 255, 0x80, 0]);
        assert!(
            Cidr::parse("-x", "10.0.0.1").is_err(),
            "a bare address is not a prefix"
        );
        assert!(Cidr::parse("-x", "10.0.0.0/33").is_err());
        assert!(Cidr::parse("-x", "10.0.0/8").is_err());
        assert!(Cidr::parse("-x", " 10.0.0.0/8").is_err());
    }

    #[test]
    fn interface_names_follow_the_kernel_rules() {
        assert!(IfName::parse("-c", "eth0").is_ok());
        assert!(IfName::parse("-c", "not-istio-nic").is_ok());
        assert!(IfName::parse("-c", "a234567890123456").is_err());
        assert!(IfName::parse("-c", "a/b").is_err());
        assert!(IfName::parse("-c", "..").is_err());
        assert!(IfName::parse("-c", "a b").is_err());
    }

    #[test]
    fn booleans_follow_go_parsebool() {
        for t in ["1", "t", "T", "true", "TRUE", "True"] {
            assert_eq!(boolean("X", t), Ok(true));
        }
        for f in ["0", "f", "F", "false", "FALSE", "False"] {
            assert_eq!(boolean("X", f), Ok(false));
        }
        assert!(boolean("X", "yes").is_err());
    }

    #[test]
    fn numbers_accept_hex() {
        assert_eq!(number_u32("-t", "0x539", "mark"), Ok(1337));
        assert_eq!(number_u32("-t", "1337", "mark"), Ok(1337));
        assert!(number_u32("-t", "abc", "mark").is_err());
    }
}

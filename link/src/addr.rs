//! A queue's addresses: one, or the nodes of one queue (all serving its identity), each
//! `HOST:PORT` with HOST a name, an IPv4 address or a bracketed IPv6 address.

use std::fmt;
use std::str::FromStr;

/// At most this many addresses for one queue.
pub const MAX_ADDRESSES: usize = 16;

/// The longest host name taken (DNS's limit).
const MAX_HOST: usize = 253;

/// One queue's addresses, in the order given; at least one, at most [`MAX_ADDRESSES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses(Vec<Address>);

/// One `HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    host: String,
    port: u16,
}

impl Address {
    /// The host as given (a name or an address; IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Address {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{s:?} is not a queue address (HOST:PORT): {why}");
        if s.contains(|c: char| c.is_whitespace() || c == ';') {
            return Err(bad("separate several addresses with commas"));
        }
        if s.starts_with('[') {
            // An IPv6 address, with a zone (`[fe80::1%2]:7411`) if it has one.
            let a: std::net::SocketAddrV6 =
                s.parse().map_err(|_| bad("not [IPv6 ADDRESS]:PORT"))?;
            if a.port() == 0 {
                return Err(bad("port 0"));
            }
            let host = match a.scope_id() {
                0 => a.ip().to_string(),
                zone => format!("{}%{zone}", a.ip()),
            };
            return Ok(Self { host, port: a.port() });
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no :PORT"))?;
        if host.contains(':') {
            return Err(bad("an IPv6 address goes in brackets: [ADDRESS]:PORT"));
        }
        // A name (its labels letters, digits, `-` and `_`, an absolute one ending in a dot),
        // or an IPv4 address.
        let name = host.strip_suffix('.').unwrap_or(host);
        let name_ok = !name.is_empty()
            && host.len() <= MAX_HOST
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !name_ok {
            return Err(bad("not a host name or IPv4 address"));
        }
        let port: u16 = port.parse().map_err(|_| bad("the port is not a number up to 65535"))?;
        if port == 0 {
            return Err(bad("port 0"));
        }
        Ok(Self { host: host.to_ascii_lowercase(), port })
    }
}

impl Addresses {
    /// The addresses, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = &Address> {
        self.0.iter()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never: there is at least one.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Several lists' addresses in one (for a list given as separate arguments).
    pub fn from_parts<'a>(parts: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut all = Vec::new();
        for part in parts {
            for one in part.split(',') {
                let one = one.trim();
                if one.is_empty() {
                    return Err(format!("{part:?}: an empty address in the list"));
                }
                let address: Address = one.parse()?;
                if all.contains(&address) {
                    return Err(format!("{address} is given twice"));
                }
                all.push(address);
            }
        }
        if all.is_empty() {
            return Err("no queue address".into());
        }
        if all.len() > MAX_ADDRESSES {
            return Err(format!(
                "{} queue addresses: at most {MAX_ADDRESSES} are taken",
                all.len()
            ));
        }
        Ok(Self(all))
    }
}

impl From<std::net::SocketAddr> for Addresses {
    fn from(a: std::net::SocketAddr) -> Self {
        Self(vec![Address { host: a.ip().to_string(), port: a.port() }])
    }
}

impl FromStr for Addresses {
    type Err = String;

    /// `HOST:PORT`, or several separated by commas (spaces around them are ignored).
    fn from_str(s: &str) -> Result<Self, String> {
        Self::from_parts([s])
    }
}

impl fmt::Display for Addresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

/// In a config file: `"HOST:PORT"`, `"A:1,B:2"` or `["A:1", "B:2"]`.
impl<'de> serde::Deserialize<'de> for Addresses {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Form {
            One(String),
            Many(Vec<String>),
        }
        let parts = match Form::deserialize(d)? {
            Form::One(s) => vec![s],
            Form::Many(v) => v,
        };
        Self::from_parts(parts.iter().map(String::as_str)).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn names_addresses_and_lists_parse_and_print_back() {
        let a: Addresses = "10.0.0.1:7411, queue-b.example.net:7411,[::1]:9".parse().unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a.to_string(), "10.0.0.1:7411,queue-b.example.net:7411,[::1]:9");
        let b = Addresses::from_parts(["10.0.0.1:7411", "Queue-B.example.net:7411"]).unwrap();
        assert_eq!(b.iter().nth(1).unwrap().host(), "queue-b.example.net");
        // A zone, an absolute name, a service name with an underscore.
        let c: Addresses =
            "[fe80::1%2]:7411,queue.example.net.:7411,my_queue:7411".parse().unwrap();
        assert_eq!(c.to_string(), "[fe80::1%2]:7411,queue.example.net.:7411,my_queue:7411");
    }

    #[test]
    fn bad_lists_are_refused_with_what_is_wrong() {
        for (s, why) in [
            ("", "empty address"),
            ("a:1,,b:2", "empty address"),
            ("a:1,a:1", "given twice"),
            ("a", "no :PORT"),
            ("a:0", "port 0"),
            ("a:65536", "port"),
            ("::1:80", "brackets"),
            ("[zz]:80", "IPv6"),
            ("[::1]:0", "port 0"),
            ("a:1;b:2", "commas"),
            ("a:1 b:2", "commas"),
            ("a b:80", "commas"),
            ("a!b:80", "host name"),
            ("-a:80", "host name"),
            (":80", "host name"),
        ] {
            let e = s.parse::<Addresses>().unwrap_err();
            assert!(e.contains(why), "{s:?}: {e}");
        }
        let many =
            vec!["h:1"; 17].iter().enumerate().map(|(i, _)| format!("h{i}:1")).collect::<Vec<_>>();
        assert_eq!(Addresses::from_parts(many[..16].iter().map(String::as_str)).unwrap().len(), 16);
        let e = Addresses::from_parts(many.iter().map(String::as_str)).unwrap_err();
        assert!(e.contains("at most 16"), "{e}");
    }

    #[test]
    fn a_config_file_gives_one_string_a_list_in_it_or_an_array() {
        #[derive(serde::Deserialize)]
        struct C {
            queue: Addresses,
        }
        for text in ["queue = \"a:1,b:2\"", "queue = [\"a:1\", \"b:2\"]"] {
            let c: C = toml::from_str(text).unwrap();
            assert_eq!(c.queue.to_string(), "a:1,b:2");
        }
        assert!(toml::from_str::<C>("queue = [\"a:1\", \"a:1\"]").is_err());
    }
}

//! Apple's iCloud Private Relay egress ranges, as Apple publishes them
//! (`https://mask-api.icloud.com/egress-ip-ranges.csv`: lines `prefix,country,region,city,`,
//! IPv4 and IPv6, tens of thousands of them), looked up by address in a binary search over
//! merged ranges (microseconds). `[engagement] apple_relay_ranges` names the file; it is
//! read again when it changes (see [`Watched`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// Where Apple publishes the list (`pegabridge engagement fetch-ranges` downloads it).
pub const APPLE_RANGES_URL: &str = "https://mask-api.icloud.com/egress-ip-ranges.csv";

/// The ranges, IPv4 and IPv6 apart, each sorted and merged: `(first, last)` addresses.
#[derive(Debug, Default, Clone)]
pub struct Ranges {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl Ranges {
    /// Parses the CSV; a line that is not `prefix,...` is an error naming it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let prefix = line.split(',').next().unwrap_or("");
            let (addr, bits) = prefix.split_once('/').ok_or_else(|| {
                format!(
                    "line {}: `{}` is not a prefix",
                    i + 1,
                    crate::quote::cut(prefix)
                )
            })?;
            let bits: u32 = bits
                .parse()
                .map_err(|_| format!("line {}: `{prefix}` has no prefix length", i + 1))?;
            match addr.parse::<IpAddr>() {
                Ok(IpAddr::V4(a)) if bits <= 32 => {
                    let first = u32::from(a) & mask32(bits);
                    v4.push((first, first | !mask32(bits)));
                }
                Ok(IpAddr::V6(a)) if bits <= 128 => {
                    let first = u128::from(a) & mask128(bits);
                    v6.push((first, first | !mask128(bits)));
                }
                _ => {
                    return Err(format!(
                        "line {}: `{}` is not a prefix",
                        i + 1,
                        crate::quote::cut(prefix)
                    ))
                }
            }
        }
        Ok(Self {
            v4: merged(v4),
            v6: merged(v6),
        })
    }

    /// Whether `ip` is inside one of the ranges.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => inside(&self.v4, u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => inside(&self.v4, u32::from(v4)),
                None => inside(&self.v6, u128::from(a)),
            },
        }
    }

    /// How many merged ranges there are.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn mask32(bits: u32) -> u32 {
    if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    }
}

fn mask128(bits: u32) -> u128 {
    if bits == 0 {
        0
    } else {
        u128::MAX << (128 - bits)
    }
}

fn merged<T: Ord + Copy + num_like::Next>(mut ranges: Vec<(T, T)>) -> Vec<(T, T)> {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match out.last_mut() {
            Some(prev) if first <= prev.1.next() => prev.1 = prev.1.max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

fn inside<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    let i = ranges.partition_point(|r| r.0 <= x);
    i > 0 && x <= ranges[i - 1].1
}

mod num_like {
    /// The next value, saturating (to merge adjacent ranges).
    pub trait Next {
        fn next(self) -> Self;
    }
    impl Next for u32 {
        fn next(self) -> Self {
            self.saturating_add(1)
        }
    }
    impl Next for u128 {
        fn next(self) -> Self {
            self.saturating_add(1)
        }
    }
}

/// The ranges of a file, read again when its modification time changes (looked at most
/// every [`RECHECK`]); a file that cannot be read keeps the last good ranges.
#[derive(Debug)]
pub struct Watched {
    path: PathBuf,
    current: RwLock<Arc<Ranges>>,
    checked: Mutex<(Instant, Option<SystemTime>)>,
}

/// How often the file's modification time is looked at.
const RECHECK: Duration = Duration::from_secs(30);

impl Watched {
    /// Reads `path` now (an error names it).
    pub fn open(path: &Path) -> Result<Self, String> {
        let (ranges, modified) = read(path)?;
        Ok(Self {
            path: path.to_owned(),
            current: RwLock::new(Arc::new(ranges)),
            checked: Mutex::new((Instant::now(), modified)),
        })
    }

    /// The current ranges (read again first if the file changed).
    pub fn ranges(&self) -> Arc<Ranges> {
        self.refresh();
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn refresh(&self) {
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        if checked.0.elapsed() < RECHECK {
            return;
        }
        checked.0 = Instant::now();
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified.is_none() || modified == checked.1 {
            return;
        }
        match read(&self.path) {
            Ok((ranges, m)) => {
                tracing::info!(file = %self.path.display(), ranges = ranges.len(), "Apple Private Relay ranges read again");
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ranges);
                checked.1 = m;
            }
            Err(e) => tracing::warn!(
                error = e.as_str(),
                "Apple Private Relay ranges kept: the file could not be read"
            ),
        }
    }
}

fn read(path: &Path) -> Result<(Ranges, Option<SystemTime>), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("engagement.apple_relay_ranges: {}: {e}", path.display()))?;
    let ranges = Ranges::parse(&text)
        .map_err(|e| format!("engagement.apple_relay_ranges: {}: {e}", path.display()))?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    Ok((ranges, modified))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_found_in_ipv4_and_ipv6_ranges_and_adjacent_ones_merge() {
        let r = Ranges::parse(
            "172.224.226.0/27,GB,GB-EN,London,\n172.224.226.32/27,GB,GB-EN,London,\n2a02:26f7:b3c0:4000::/64,DE,DE-BE,Berlin,\n104.28.0.20/32,US,US-CA,Los Angeles,\n",
        )
        .unwrap();
        assert_eq!(r.len(), 3, "two adjacent /27 merge");
        for inside in [
            "172.224.226.0",
            "172.224.226.63",
            "104.28.0.20",
            "2a02:26f7:b3c0:4000:ffff::1",
            "::ffff:172.224.226.5",
        ] {
            assert!(r.contains(inside.parse().unwrap()), "{inside}");
        }
        for outside in [
            "172.224.226.64",
            "104.28.0.21",
            "2a02:26f7:b3c0:4001::1",
            "10.0.0.1",
        ] {
            assert!(!r.contains(outside.parse().unwrap()), "{outside}");
        }
        assert!(Ranges::parse("not a prefix,GB,,,\n")
            .unwrap_err()
            .contains("line 1"));
    }

    #[test]
    fn a_changed_file_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ranges.csv");
        std::fs::write(&file, "172.224.226.0/27,GB,GB-EN,London,\n").unwrap();
        let w = Watched::open(&file).unwrap();
        assert!(w.ranges().contains("172.224.226.1".parse().unwrap()));
        std::fs::write(&file, "104.28.0.20/32,US,US-CA,Los Angeles,\n").unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(later)
            .unwrap();
        w.checked.lock().unwrap().0 = Instant::now() - RECHECK * 2;
        assert!(w.ranges().contains("104.28.0.20".parse().unwrap()));
        assert!(!w.ranges().contains("172.224.226.1".parse().unwrap()));
    }
}

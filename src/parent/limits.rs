//! The limits a pool fits itself to: the address space the process may map
//! (`RLIMIT_AS`), the memory its cgroup may use (cgroup v1 or v2), and the
//! CPUs it may run on.
//!
//! The memory cgroup is found once per process, from `/proc/self/cgroup`
//! (and `/proc/self/mountinfo` where the hierarchy is not mounted at its
//! usual place). Its limits and usage change while the process runs, so
//! they are read again, but at most once a second while reservations stay
//! within half of the room last seen: reading them costs tens of µs (v1's
//! `memory.stat` most), against a microsecond or two for the `fallocate`
//! that reserves a small block. Without `/proc` or `/sys/fs/cgroup`, or
//! outside any memory cgroup, nothing is limited here (the kernel still
//! is).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

pub(crate) use crate::os::{address_space_limit, can_cap_address_space, cpus};

/// A cgroup v1 limit at or above this means "no limit" (v1 reports
/// `PAGE_COUNTER_MAX` pages, 2^63 - 4096 bytes on x86-64).
const UNLIMITED_FROM: u64 = 1 << 62;

/// How long a reading of the cgroup's limits and usage stands in for a new
/// one (for reservations within half the room it showed).
const REREAD: Duration = Duration::from_secs(1);

/// What a reservation must leave free in its cgroup: page tables, the
/// kernel's per-CPU charge batches (which make v1's usage approximate), and
/// the process's own small allocations. A thirty-second of the limit, at
/// least 8 MiB.
fn margin(limit: u64) -> u64 {
    (limit / 32).max(8 << 20)
}

/// The address space this process may still map under its soft
/// `RLIMIT_AS`, if that is finite: the limit less what it maps now (from
/// `/proc/self/statm`; without `/proc`, assumed to be half the limit).
pub(crate) fn address_space_room() -> Option<u64> {
    let limit = address_space_limit()?;
    Some(match crate::os::mapped_bytes() {
        Some(mapped) => limit.saturating_sub(mapped),
        None => limit / 2,
    })
}

/// How many mappings this process has (the lines of `/proc/self/maps`) and
/// how many it may have (`vm.max_map_count`), if both can be read. Slow for
/// a process with many mappings: for error messages only.
pub(crate) fn map_count() -> Option<(u64, u64)> {
    let maps = fs::read("/proc/self/maps").ok()?;
    let count = maps.iter().filter(|&&b| b == b'\n').count() as u64;
    let max = fs::read_to_string("/proc/sys/vm/max_map_count").ok()?;
    Some((count, max.trim().parse().ok()?))
}

/// Which cgroup interface holds the memory controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// The memory cgroup of this process: its directory and those of its
/// ancestors, up to the root of the mounted hierarchy.
#[derive(Debug)]
pub(crate) struct MemoryCgroup {
    version: Version,
    /// Innermost first.
    levels: Vec<PathBuf>,
    budget: Mutex<Budget>,
    /// The smallest limit and when it was read (`limit`).
    limit: Mutex<Option<(Instant, Option<u64>)>>,
}

/// What the last reading allows without another.
#[derive(Debug)]
struct Budget {
    /// When the cgroup was last read; `None`: read at the next check.
    read_at: Option<Instant>,
    /// Bytes that may still be reserved on that reading: half of the room
    /// it showed, less what was reserved since (`u64::MAX`: no limit).
    left: u64,
}

/// One level's limit and what it holds now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Usage {
    limit: u64,
    usage: u64,
    /// Page cache the kernel can drop or write back before it would
    /// invoke the OOM killer (file pages; shared memory is not among them).
    reclaimable: u64,
}

impl Usage {
    /// What a new charge may take without pushing the level past its limit
    /// minus the margin.
    fn headroom(&self) -> u64 {
        let held = self.usage.saturating_sub(self.reclaimable);
        self.limit
            .saturating_sub(held)
            .saturating_sub(margin(self.limit))
    }
}

/// The memory cgroup of this process, found on first use.
pub(crate) fn memory_cgroup() -> Option<&'static MemoryCgroup> {
    static FOUND: OnceLock<Option<MemoryCgroup>> = OnceLock::new();
    FOUND.get_or_init(MemoryCgroup::find).as_ref()
}

impl MemoryCgroup {
    fn find() -> Option<MemoryCgroup> {
        let cgroups = fs::read_to_string("/proc/self/cgroup").ok()?;
        let (v1, v2) = parse_cgroups(&cgroups);
        // Where the hierarchies usually are, the cgroup's directory is
        // there; otherwise (a container that mounts only its own subtree)
        // mountinfo says what is mounted where.
        let usual = [
            (Version::V1, v1.as_deref(), "/sys/fs/cgroup/memory"),
            (Version::V2, v2.as_deref(), "/sys/fs/cgroup"),
            (Version::V2, v2.as_deref(), "/sys/fs/cgroup/unified"),
        ];
        for (version, path, point) in usual {
            let Some(path) = path else { continue };
            let levels = levels(Path::new(point), "/", path);
            if let Some(cg) = MemoryCgroup::at(version, levels) {
                return Some(cg);
            }
        }
        let mounts = parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").ok()?);
        // A hybrid system may mount both; the memory controller is on v1
        // there if a v1 hierarchy carries it.
        let v1_mount = mounts
            .iter()
            .find(|m| m.fstype == "cgroup" && m.options.split(',').any(|o| o == "memory"));
        let v2_mount = mounts.iter().find(|m| m.fstype == "cgroup2");
        [(Version::V1, v1, v1_mount), (Version::V2, v2, v2_mount)]
            .into_iter()
            .find_map(|(version, path, mount)| {
                let (path, mount) = (path?, mount?);
                MemoryCgroup::at(version, levels(&mount.point, &mount.root, &path))
            })
    }

    /// The cgroup whose directories are `levels`, if the innermost exists.
    /// (v2 without the memory controller has no limit files: reading them
    /// fails, at about a stat's cost.)
    fn at(version: Version, levels: Vec<PathBuf>) -> Option<MemoryCgroup> {
        let cg = MemoryCgroup {
            version,
            levels,
            budget: Mutex::new(Budget {
                read_at: None,
                left: 0,
            }),
            limit: Mutex::new(None),
        };
        cg.levels.first()?.is_dir().then_some(cg)
    }

    fn limit_file(&self) -> &'static str {
        match self.version {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        }
    }

    fn usage_file(&self) -> &'static str {
        match self.version {
            Version::V1 => "memory.usage_in_bytes",
            Version::V2 => "memory.current",
        }
    }

    /// The limit and use of every level that has a limit. The page cache
    /// (`memory.stat`, the costliest file) is read only where the usage
    /// alone leaves less than `want` bytes of room.
    fn usages(&self, want: u64) -> impl Iterator<Item = Usage> + '_ {
        self.levels.iter().filter_map(move |dir| {
            let limit = parse_limit(&read_small(&dir.join(self.limit_file()))?)?;
            let usage = read_small(&dir.join(self.usage_file()))?
                .trim()
                .parse()
                .ok()?;
            let mut u = Usage {
                limit,
                usage,
                reclaimable: 0,
            };
            if u.headroom() < want {
                let stat = fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
                let (inactive, active) = match self.version {
                    Version::V1 => ("total_inactive_file", "total_active_file"),
                    Version::V2 => ("inactive_file", "active_file"),
                };
                let file = stat_field(&stat, inactive).unwrap_or(0)
                    + stat_field(&stat, active).unwrap_or(0);
                u.reclaimable = file.min(usage);
            }
            Some(u)
        })
    }

    /// The smallest memory limit of this cgroup and its ancestors, read
    /// again once the last reading is a second old.
    pub(crate) fn limit(&self) -> Option<u64> {
        let mut cached = self.limit.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, limit)) = *cached {
            if at.elapsed() < REREAD {
                return limit;
            }
        }
        let limit = self
            .levels
            .iter()
            .filter_map(|dir| parse_limit(&read_small(&dir.join(self.limit_file()))?))
            .min();
        *cached = Some((Instant::now(), limit));
        limit
    }

    /// Whether `limit`'s reading, less than a second old, found no limit at
    /// any level. Reads nothing.
    fn seen_unlimited(&self) -> bool {
        let cached = self.limit.lock().unwrap_or_else(PoisonError::into_inner);
        matches!(*cached, Some((at, None)) if at.elapsed() < REREAD)
    }

    /// How many more bytes can be charged to this cgroup without reaching a
    /// limit (less a margin) at any level; `None` if no level has a limit.
    pub(crate) fn headroom(&self) -> Option<u64> {
        self.usages(u64::MAX).map(|u| u.headroom()).min()
    }

    /// Whether `bytes` more can be charged to this cgroup without reaching
    /// a limit (less a margin) at any level: `Err(ENOMEM)` if not. The
    /// cgroup is read again unless a reading less than a second old left
    /// room for twice what has been reserved since, this included.
    pub(crate) fn check(&self, bytes: u64) -> io::Result<()> {
        // No level has a limit, by a reading less than a second old (`limit`
        // is read at every `Pool::new` that sizes its arena): nothing to
        // read again. A program's first map went back to the three limit
        // files here otherwise (15-22 µs of the seed's 1 ms).
        if self.seen_unlimited() {
            return Ok(());
        }
        let mut budget = self.budget.lock().unwrap_or_else(PoisonError::into_inner);
        if budget.read_at.is_some_and(|t| t.elapsed() < REREAD) && bytes <= budget.left {
            budget.left -= bytes;
            return Ok(());
        }
        // Room for twice `bytes`, so that the next reservations, up to
        // half of what is left, need no reading.
        let room = self
            .usages(bytes.saturating_mul(2))
            .map(|u| u.headroom())
            .min();
        match room {
            Some(room) if room < bytes => {
                budget.read_at = None;
                Err(io::Error::from_raw_os_error(crate::os::errno::ENOMEM))
            }
            room => {
                budget.read_at = Some(Instant::now());
                budget.left = room.map_or(u64::MAX, |r| (r - bytes) / 2);
                Ok(())
            }
        }
    }
}

/// A file of a few bytes (a cgroup's limit or usage), read with one `read`
/// into the stack: `fs::read_to_string` adds an `fstat` and a second `read`,
/// and each system call on a cgroup file costs microseconds here.
fn read_small(path: &Path) -> Option<String> {
    use std::io::Read;
    let mut buf = [0u8; 64];
    let n = fs::File::open(path).ok()?.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n]).ok().map(str::to_owned)
}

/// `(v1 memory path, v2 path)` from `/proc/self/cgroup`.
fn parse_cgroups(text: &str) -> (Option<String>, Option<String>) {
    let mut v1 = None;
    let mut v2 = None;
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_owned());
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_owned());
        }
    }
    (v1, v2)
}

/// A mounted filesystem, from `/proc/self/mountinfo`.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    /// The directory of the filesystem mounted here (for a cgroup
    /// filesystem, the cgroup that appears at the mount point).
    root: String,
    point: PathBuf,
    fstype: String,
    /// The filesystem's own options (a v1 cgroup's controllers).
    options: String,
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let f: Vec<&str> = before.split(' ').collect();
            let mut a = after.split(' ');
            let fstype = a.next()?;
            let _source = a.next()?;
            Some(Mount {
                root: unescape(f.get(3)?),
                point: PathBuf::from(unescape(f.get(4)?)),
                fstype: fstype.to_owned(),
                options: a.next().unwrap_or("").to_owned(),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directories of cgroup `path` and its ancestors, innermost first,
/// under a hierarchy whose cgroup `root` is mounted at `point`. The mount
/// point itself is included: inside a cgroup namespace (a container) it is
/// the container's cgroup, limit included, though it reads as `/`.
fn levels(point: &Path, root: &str, path: &str) -> Vec<PathBuf> {
    let root = root.trim_end_matches('/');
    // Outside a cgroup namespace the path names the cgroup from the
    // hierarchy's root; a container may mount only its own subtree.
    let rel = match path.strip_prefix(root) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => "",
    };
    let mut dir = point.to_path_buf();
    let mut out = vec![dir.clone()];
    for part in rel.split('/').filter(|p| !p.is_empty() && *p != "..") {
        dir.push(part);
        out.push(dir.clone());
    }
    out.reverse();
    out
}

/// A limit file's value: `None` for "max" (v2) or a v1 "unlimited".
fn parse_limit(text: &str) -> Option<u64> {
    let v: u64 = text.trim().parse().ok()?;
    (v < UNLIMITED_FROM).then_some(v)
}

/// The value of `key` in a `memory.stat` file.
fn stat_field(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_files_parse() {
        let hybrid = "9:name=systemd:/\n4:memory:/jobs/42\n0::/user.slice\n";
        assert_eq!(
            parse_cgroups(hybrid),
            (Some("/jobs/42".into()), Some("/user.slice".into()))
        );
        assert_eq!(parse_cgroups("0::/\n"), (None, Some("/".into())));
        assert_eq!(
            parse_cgroups("5:cpu,memory:/a\n"),
            (Some("/a".into()), None)
        );
        assert_eq!(parse_cgroups(""), (None, None));
    }

    #[test]
    fn mountinfo_parses_with_optional_fields_and_escapes() {
        let text = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n\
                    41 31 0:38 /docker/ab /sys/fs/cgroup/my\\040dir rw - cgroup2 cgroup2 rw,nsdelegate\n\
                    garbage\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].point, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(
            (m[0].fstype.as_str(), m[0].options.as_str()),
            ("cgroup", "rw,memory")
        );
        assert_eq!(m[1].root, "/docker/ab");
        assert_eq!(m[1].point, PathBuf::from("/sys/fs/cgroup/my dir"));
        assert_eq!(m[1].fstype, "cgroup2");
        assert_eq!(unescape("a\\134b\\0"), "a\\b\\0");
    }

    #[test]
    fn levels_run_from_the_cgroup_to_the_mount() {
        let p = Path::new("/sys/fs/cgroup");
        assert_eq!(
            levels(p, "/", "/a/b"),
            vec![p.join("a/b"), p.join("a"), p.to_path_buf()]
        );
        // In a cgroup namespace, the container's own cgroup.
        assert_eq!(levels(p, "/", "/"), vec![p.to_path_buf()]);
        // A container that mounts its own subtree, which may have a limit.
        assert_eq!(
            levels(p, "/docker/x", "/docker/x/job"),
            vec![p.join("job"), p.to_path_buf()]
        );
        // A path outside the mounted subtree: only the mount is known.
        assert_eq!(levels(p, "/docker/x", "/docker/xy"), vec![p.to_path_buf()]);
        assert_eq!(levels(p, "/", "/../a"), vec![p.join("a"), p.to_path_buf()]);
    }

    #[test]
    fn limits_and_stats_parse() {
        assert_eq!(parse_limit("536870912\n"), Some(512 << 20));
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        let stat = "cache 10\ninactive_file 3\nactive_file 4\ntotal_inactive_file 30\n";
        assert_eq!(stat_field(stat, "inactive_file"), Some(3));
        assert_eq!(stat_field(stat, "total_inactive_file"), Some(30));
        assert_eq!(stat_field(stat, "shmem"), None);
    }

    #[test]
    fn a_check_reads_nothing_while_a_fresh_reading_found_no_limit() {
        let dir = std::env::temp_dir().join(format!("shmpool-cg-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let write = |limit: &str, usage: &str| {
            fs::write(dir.join("memory.max"), limit).unwrap();
            fs::write(dir.join("memory.current"), usage).unwrap();
        };
        write("max\n", "0\n");
        let cg = MemoryCgroup::at(Version::V2, vec![dir.clone()]).unwrap();
        // Never read: a check reads the files.
        write("67108864\n", "0\n");
        assert!(cg.check(1 << 30).is_err(), "1 GiB under 64 MiB");
        // Read as unlimited: for a second, a check reads nothing (the
        // limit written after the reading is not seen until it is re-read).
        write("max\n", "0\n");
        assert_eq!(cg.limit(), None);
        write("67108864\n", "0\n");
        assert!(cg.check(1 << 30).is_ok());
        // A reading that found a limit does not spare the check.
        let limited = MemoryCgroup::at(Version::V2, vec![dir.clone()]).unwrap();
        assert_eq!(limited.limit(), Some(64 << 20));
        assert!(limited.check(1 << 30).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn headroom_counts_reclaimable_cache_and_keeps_a_margin() {
        let u = Usage {
            limit: 512 << 20,
            usage: 300 << 20,
            reclaimable: 100 << 20,
        };
        assert_eq!(u.headroom(), (312 - 16) << 20);
        let full = Usage {
            limit: 64 << 20,
            usage: 70 << 20,
            reclaimable: 0,
        };
        assert_eq!(full.headroom(), 0);
        assert_eq!(margin(1 << 30), 32 << 20);
        assert_eq!(margin(64 << 20), 8 << 20);
    }
}

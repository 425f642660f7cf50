//! The limits the shared heap sizes itself by: the memory cgroup's and
//! `RLIMIT_AS`. Nothing here allocates: the allocator calls it, and so does
//! a freshly forked child's `pthread_atfork` handler. Files are read into
//! stack buffers (`os::read_file`).

use crate::os;

/// Writes `msg` to standard error and aborts: the heap's bookkeeping was
/// handed a block it never gave out (a double free, a wrong layout, a wild
/// pointer). Writes with a raw `write` (`os::write_stderr`): the allocator cannot allocate.
pub(crate) fn fatal(msg: &str) -> ! {
    os::write_stderr(msg.as_bytes());
    std::process::abort()
}

/// A memory cgroup limit file's value: a number of bytes, or `None` for
/// `max` (v2) or a value so large it means no limit (v1 reports
/// `9223372036854771712`).
pub(crate) fn parse_limit(text: &[u8]) -> Option<u64> {
    let digits = text.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits.iter().try_fold(0u64, |acc, &b| {
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })?;
    (n < 1 << 62).then_some(n)
}

/// From `/proc/self/cgroup`: the v2 path (`0::/path`) and the v1 memory
/// controller's path (`N:...memory...:/path`).
pub(crate) fn cgroup_paths(text: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let (mut v2, mut v1) = (None, None);
    for line in text.split(|&b| b == b'\n') {
        let mut fields = line.splitn(3, |&b| b == b':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if id == b"0" && controllers.is_empty() {
            v2 = Some(path);
        } else if controllers.split(|&b| b == b',').any(|c| c == b"memory") {
            v1 = Some(path);
        }
    }
    (v2, v1)
}

/// The smallest limit in `file` of the cgroup at `path` under `root` and
/// of each of its ancestors.
fn limit_along(root: &[u8], path: &[u8], file: &[u8]) -> Option<u64> {
    let mut path = path.strip_suffix(b"/").unwrap_or(path);
    let mut best: Option<u64> = None;
    loop {
        let mut full = [0u8; 512];
        let len = root.len() + path.len() + file.len();
        if len < full.len() {
            full[..root.len()].copy_from_slice(root);
            full[root.len()..root.len() + path.len()].copy_from_slice(path);
            full[root.len() + path.len()..len].copy_from_slice(file);
            let mut text = [0u8; 64];
            let path = std::ffi::CStr::from_bytes_until_nul(&full[..=len]).ok();
            if let Some(n) = path.and_then(|p| os::read_file(p, &mut text)) {
                if let Some(v) = parse_limit(&text[..n]) {
                    best = Some(best.map_or(v, |b| b.min(v)));
                }
            }
        }
        match path.iter().rposition(|&b| b == b'/') {
            Some(at) => path = &path[..at],
            None => return best,
        }
    }
}

/// This process's memory cgroup limit, the smallest along the path to the
/// root (v2 `memory.max`, else v1 `memory.limit_in_bytes`); `None` if there
/// is none or it cannot be read.
pub(crate) fn cgroup_limit() -> Option<u64> {
    let mut buf = [0u8; 4096];
    let n = os::read_file(c"/proc/self/cgroup", &mut buf)?;
    let (v2, v1) = cgroup_paths(&buf[..n]);
    let v2 = v2.and_then(|p| limit_along(b"/sys/fs/cgroup", p, b"/memory.max"));
    let v1 = v1.and_then(|p| limit_along(b"/sys/fs/cgroup/memory", p, b"/memory.limit_in_bytes"));
    match (v2, v1) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_files_parse() {
        assert_eq!(parse_limit(b"max\n"), None);
        assert_eq!(parse_limit(b"536870912\n"), Some(512 << 20));
        assert_eq!(parse_limit(b"9223372036854771712\n"), None, "v1's no limit");
        assert_eq!(parse_limit(b""), None);
        assert_eq!(parse_limit(b"12k"), None);
        let v2 = b"0::/user.slice/session-1.scope\n";
        assert_eq!(
            cgroup_paths(v2),
            (Some(&b"/user.slice/session-1.scope"[..]), None)
        );
        let v1 = b"9:name=systemd:/\n4:memory:/process_api/f800\n2:cpu,cpuacct:/\n0::/\n";
        assert_eq!(
            cgroup_paths(v1),
            (Some(&b"/"[..]), Some(&b"/process_api/f800"[..]))
        );
        assert_eq!(cgroup_paths(b"garbage"), (None, None));
    }

    #[test]
    fn this_machines_limits_read_without_trouble() {
        // Whatever the machine has; only that reading them works.
        let _ = cgroup_limit();
        let _ = os::address_space_limit();
        assert_eq!(
            limit_along(b"/nonexistent", b"/a/b/c", b"/memory.max"),
            None
        );
    }
}

//! How many workers one rank's pool should have: the rank's share of its
//! host's cores, from the launcher's local rank count and the cores this
//! process may run on.

use std::num::NonZeroUsize;

/// The size of a pool for this rank: its share of the host's cores.
///
/// Ranks on one host split its cores. The number of ranks on this host comes
/// from the launcher's environment, the first of:
/// - Open MPI: `OMPI_COMM_WORLD_LOCAL_SIZE` (and `OMPI_COMM_WORLD_LOCAL_RANK`);
/// - MPICH, Intel MPI (Hydra): `MPI_LOCALNRANKS` (`MPI_LOCALRANKID`);
/// - Slurm (`srun`): `SLURM_STEP_TASKS_PER_NODE`, then `SLURM_TASKS_PER_NODE`
///   (both like `4(x2),3`, indexed by `SLURM_NODEID`), then
///   `SLURM_NTASKS_PER_NODE` (`SLURM_LOCALID`);
///
/// and is 1 when none is set (a program started without a launcher).
///
/// The cores are [`std::thread::available_parallelism`] (which honours the
/// CPU affinity mask and cgroup quotas), shared with the other local ranks
/// whose masks overlap this one. Ranks whose masks together cover no more
/// CPUs than the host has are taken to be bound to sets of their own
/// (`mpirun --bind-to core`, `srun --cpu-bind`), and each uses its whole
/// mask. Otherwise their masks overlap: with no binding (`mpirun --bind-to
/// none`, or a container's or Slurm job's cpuset that every rank shares),
/// or with several ranks bound to one socket (Open MPI's default beyond two
/// ranks). Each mask is then shared by `ranks × mask / host` ranks (rounded
/// up). When every rank shares one mask, the lowest local ranks take one
/// more core when they do not divide evenly; when only some do, each takes
/// the even share (which ranks share a set is the launcher's placement).
/// The host's CPUs are those of the process's cgroup cpuset
/// (`cpuset.cpus.effective`), else the online ones. Never less than 1.
///
/// Call it before [`mpi::initialize`], where the pool must be built.
///
/// ```
/// let workers = shmpool_mpi::workers_per_rank();
/// assert!(workers >= 1);
/// let pool = shmpool::Pool::new(workers)?;
/// # Ok::<(), shmpool::Error>(())
/// ```
pub fn workers_per_rank() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let mask = affinity_cpus().unwrap_or(cores);
    let cpus = Cpus {
        cores,
        mask,
        host: cpuset_cpus().or_else(online_cpus).unwrap_or(mask),
    };
    share(&|name| std::env::var(name).ok(), cpus)
}

/// The CPUs a rank may use and those of its host.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cpus {
    /// What the rank may run on at once (`available_parallelism`).
    pub(crate) cores: usize,
    /// The CPUs in its affinity mask.
    pub(crate) mask: usize,
    /// The CPUs the host's ranks may use together (the cgroup's cpuset, or
    /// the online CPUs).
    pub(crate) host: usize,
}

/// The ranks on this host and this rank's index among them, from the
/// launcher's variables (`env` reads one).
pub(crate) fn local_ranks(env: &dyn Fn(&str) -> Option<String>) -> (usize, usize) {
    let num = |name: &str| env(name).and_then(|v| v.trim().parse::<usize>().ok());
    let pairs = [
        ("OMPI_COMM_WORLD_LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
        ("MPI_LOCALNRANKS", "MPI_LOCALRANKID"),
    ];
    for (size, rank) in pairs {
        if let Some(n) = num(size).filter(|&n| n > 0) {
            return (n, num(rank).unwrap_or(0));
        }
    }
    let local_id = num("SLURM_LOCALID").unwrap_or(0);
    let node = num("SLURM_NODEID");
    for list in ["SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"] {
        if let Some(n) = env(list).and_then(|v| tasks_on_node(&v, node)) {
            return (n, local_id);
        }
    }
    match num("SLURM_NTASKS_PER_NODE").filter(|&n| n > 0) {
        Some(n) => (n, local_id),
        None => (1, 0),
    }
}

/// The task count of node `node` in a Slurm list such as `4(x2),3` (four
/// tasks on each of the first two nodes, three on the third). Without a
/// node index, only a list that gives every node the same count answers.
pub(crate) fn tasks_on_node(list: &str, node: Option<usize>) -> Option<usize> {
    let mut counts = Vec::new();
    for item in list.trim().split(',') {
        let (count, times) = match item.split_once("(x") {
            Some((c, rest)) => (c, rest.strip_suffix(')')?.parse::<usize>().ok()?),
            None => (item, 1),
        };
        let count = count.trim().parse::<usize>().ok().filter(|&c| c > 0)?;
        // A malformed repeat count must not make us allocate without bound.
        if times == 0 || counts.len().saturating_add(times) > 1 << 20 {
            return None;
        }
        counts.extend(std::iter::repeat_n(count, times));
    }
    match node {
        Some(i) => counts.get(i).copied(),
        None => {
            let first = *counts.first()?;
            counts.iter().all(|&c| c == first).then_some(first)
        }
    }
}

/// This rank's share of `cpus` (see [`workers_per_rank`]).
pub(crate) fn share(env: &dyn Fn(&str) -> Option<String>, cpus: Cpus) -> usize {
    let cores = cpus.cores.max(1);
    let (ranks, local) = local_ranks(env);
    let ranks = ranks.max(1);
    let mask = cpus.mask.max(1);
    let host = cpus.host.max(mask);
    // How many ranks share this rank's mask: 1 when the masks of all local
    // ranks fit the host side by side, all of them when each mask is the
    // whole host.
    let sharers = ranks.saturating_mul(mask).div_ceil(host).clamp(1, ranks);
    // Cores that do not divide evenly go to the lowest local ranks when all
    // ranks share one mask. When only some do, which ones is the launcher's
    // placement (round-robin by socket puts ranks 0 and 2 together), so
    // each takes the even share and none oversubscribes its set.
    let extra = sharers == ranks && local % ranks < cores % ranks;
    (cores / sharers + usize::from(extra)).max(1)
}

/// The CPUs of this process's cpuset cgroup (`cpuset.cpus.effective` under
/// cgroup v2, `cpuset.effective_cpus` under v1, of its own cgroup or the
/// nearest ancestor that has one), if it can be read.
fn cpuset_cpus() -> Option<usize> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        // `hierarchy-id:controllers:path`; v2 has no controllers.
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let (root, file) = if controllers.is_empty() {
            ("/sys/fs/cgroup", "cpuset.cpus.effective")
        } else if controllers.split(',').any(|c| c == "cpuset") {
            ("/sys/fs/cgroup/cpuset", "cpuset.effective_cpus")
        } else {
            continue;
        };
        // A cgroup outside this process's cgroup namespace shows as
        // `/../..`: not under the mounted root.
        if path.split('/').any(|part| part == "..") {
            continue;
        }
        let root = std::path::Path::new(root);
        let mut dir = root.join(path.trim_start_matches('/'));
        loop {
            if let Some(n) = std::fs::read_to_string(dir.join(file))
                .ok()
                .and_then(|list| cpu_list_len(&list))
            {
                return Some(n);
            }
            if dir == root || !dir.pop() {
                break;
            }
        }
    }
    None
}

/// The number of CPUs in a kernel CPU list such as `0-3,8,10-11`; `None`
/// for an empty or malformed one.
pub(crate) fn cpu_list_len(list: &str) -> Option<usize> {
    let list = list.trim();
    if list.is_empty() {
        return None;
    }
    let mut n = 0usize;
    for item in list.split(',') {
        let (lo, hi) = match item.split_once('-') {
            Some((lo, hi)) => (lo.parse::<usize>().ok()?, hi.parse::<usize>().ok()?),
            None => {
                let cpu = item.parse::<usize>().ok()?;
                (cpu, cpu)
            }
        };
        n = n.checked_add(hi.checked_sub(lo)?.checked_add(1)?)?;
    }
    Some(n)
}

/// The number of CPUs in this thread's affinity mask.
fn affinity_cpus() -> Option<usize> {
    // SAFETY: `cpu_set_t` is plain data; all zeroes is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable `cpu_set_t` of the size passed.
    let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return None;
    }
    // SAFETY: `set` was filled by the kernel above.
    let n = unsafe { libc::CPU_COUNT(&set) };
    usize::try_from(n).ok().filter(|&n| n > 0)
}

/// The number of online CPUs on this host.
fn online_cpus() -> Option<usize> {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    /// Open MPI's variables for local rank `r` of `n`.
    fn ranks(n: usize, r: usize) -> impl Fn(&str) -> Option<String> + use<> {
        env_of(&[
            ("OMPI_COMM_WORLD_LOCAL_SIZE", &n.to_string()),
            ("OMPI_COMM_WORLD_LOCAL_RANK", &r.to_string()),
        ])
    }

    fn cpus(cores: usize, mask: usize, host: usize) -> Cpus {
        Cpus { cores, mask, host }
    }

    /// A rank that may use every CPU of a host of `cores`.
    const FREE: fn(usize) -> Cpus = |cores| cpus(cores, cores, cores);

    #[test]
    fn open_mpi_mpich_and_none() {
        let ompi = env_of(&[
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "3"),
            ("MPI_LOCALNRANKS", "2"),
        ]);
        assert_eq!(local_ranks(&ompi), (4, 3));
        let mpich = env_of(&[("MPI_LOCALNRANKS", "2"), ("MPI_LOCALRANKID", "1")]);
        assert_eq!(local_ranks(&mpich), (2, 1));
        assert_eq!(local_ranks(&env_of(&[])), (1, 0));
        // Garbage and zero are ignored, not trusted.
        let bad = env_of(&[
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "x"),
            ("MPI_LOCALNRANKS", "0"),
        ]);
        assert_eq!(local_ranks(&bad), (1, 0));
    }

    #[test]
    fn slurm_lists() {
        assert_eq!(tasks_on_node("4(x2),3", Some(0)), Some(4));
        assert_eq!(tasks_on_node("4(x2),3", Some(1)), Some(4));
        assert_eq!(tasks_on_node("4(x2),3", Some(2)), Some(3));
        assert_eq!(tasks_on_node("4(x2),3", Some(3)), None);
        assert_eq!(tasks_on_node("4(x2),3", None), None, "nodes differ");
        assert_eq!(tasks_on_node("8(x16)", None), Some(8));
        assert_eq!(tasks_on_node("2", None), Some(2));
        for bad in ["", "x", "4(x", "4(x0)", "0", "4(x99999999999)", "-1"] {
            assert_eq!(tasks_on_node(bad, Some(0)), None, "{bad:?}");
        }
        let step = env_of(&[
            ("SLURM_STEP_TASKS_PER_NODE", "2(x3),1"),
            ("SLURM_TASKS_PER_NODE", "9"),
            ("SLURM_NODEID", "3"),
            ("SLURM_LOCALID", "0"),
        ]);
        assert_eq!(local_ranks(&step), (1, 0));
        let job = env_of(&[("SLURM_TASKS_PER_NODE", "6"), ("SLURM_LOCALID", "5")]);
        assert_eq!(local_ranks(&job), (6, 5));
        let per = env_of(&[("SLURM_NTASKS_PER_NODE", "3"), ("SLURM_LOCALID", "2")]);
        assert_eq!(local_ranks(&per), (3, 2));
    }

    #[test]
    fn ranks_split_the_cores() {
        assert_eq!(share(&ranks(1, 0), FREE(8)), 8);
        assert_eq!(share(&ranks(2, 1), FREE(8)), 4);
        // 8 cores, 3 ranks: 3 + 3 + 2.
        let split: Vec<usize> = (0..3).map(|r| share(&ranks(3, r), FREE(8))).collect();
        assert_eq!(split, [3, 3, 2]);
        // More ranks than cores: one worker each.
        assert_eq!(share(&ranks(4, 3), FREE(2)), 1);
        assert_eq!(share(&ranks(4, 0), FREE(0)), 1);
        // Ranks bound to cores of their own use all of them.
        let bound = cpus(6, 6, 24);
        assert_eq!(share(&ranks(4, 0), bound), 6);
        let one_core = cpus(1, 1, 2);
        assert_eq!(share(&ranks(2, 1), one_core), 1);
        // No launcher: every core.
        assert_eq!(share(&env_of(&[]), FREE(16)), 16);
    }

    #[test]
    fn ranks_that_share_a_mask_share_its_cores() {
        // Open MPI's default beyond two ranks: bound to a socket, here two
        // sockets of 16 CPUs and four ranks, two on each.
        let socket = cpus(16, 16, 32);
        assert_eq!(share(&ranks(4, 0), socket), 8);
        assert_eq!(share(&ranks(4, 3), socket), 8);
        // Odd sockets: which ranks share one is the launcher's placement
        // (round-robin puts 0 and 2 together), so none takes the spare core.
        let odd = cpus(15, 15, 30);
        let split: Vec<usize> = (0..4).map(|r| share(&ranks(4, r), odd)).collect();
        assert_eq!(split, [7, 7, 7, 7]);
        // A cpuset of 8 CPUs (a Slurm job, a container) on a host of 64,
        // shared by two unbound ranks.
        let cpuset = cpus(8, 8, 8);
        assert_eq!(share(&ranks(2, 0), cpuset), 4);
        // The same ranks where the cpuset could not be read: the online
        // CPUs make them look bound (the old answer, 8 each).
        let unread = Cpus { host: 64, ..cpuset };
        assert_eq!(share(&ranks(2, 0), unread), 8);
        // A CPU quota (`cpu.max`) below the mask: the quota is shared.
        let quota = cpus(4, 64, 64);
        assert_eq!(share(&ranks(2, 1), quota), 2);
        // Nonsense from the system never gives 0 or panics.
        let zeros = cpus(0, 0, 0);
        assert_eq!(share(&ranks(3, 2), zeros), 1);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(cpu_list_len("0-3,8,10-11\n"), Some(7));
        assert_eq!(cpu_list_len("5"), Some(1));
        assert_eq!(cpu_list_len("0-63"), Some(64));
        for bad in ["", "\n", "3-1", "a", "0-", "1,,2", "0-99999999999999999999"] {
            assert_eq!(cpu_list_len(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn this_process_gets_at_least_one() {
        assert!(workers_per_rank() >= 1);
        let mask = affinity_cpus().unwrap();
        assert!(mask <= online_cpus().unwrap());
        // The affinity mask lies within the cpuset.
        if let Some(cpuset) = cpuset_cpus() {
            assert!(
                mask <= cpuset,
                "{mask} CPUs in the mask, {cpuset} in the cpuset"
            );
        }
    }
}

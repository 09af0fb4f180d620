//! How much memory the daemon may still use: the smaller of what the system has left
//! (`MemAvailable`) and what its cgroups allow (a systemd `MemoryMax=`, a container's
//! limit). The engine sizes its chunk buffer pool from it (15 / 8 / 4 / 2); it never
//! pauses for it.
//!
//! cgroup v2: `memory.max − memory.current` of the daemon's group and of each ancestor
//! (a slice's limit binds too). cgroup v1 (still the memory hierarchy on some hosts):
//! `memory.limit_in_bytes − memory.usage_in_bytes`, likewise up the tree. Page cache
//! counts in a cgroup's usage, so the headroom is a cautious figure.

use std::path::{Path, PathBuf};

/// Bytes the daemon may still use; `None` when nothing is known (non-Linux).
pub fn available() -> Option<u64> {
    available_in(Path::new("/proc"), Path::new("/sys/fs/cgroup"))
}

/// [`available`] with the proc and cgroup mount points given (for tests).
pub fn available_in(proc: &Path, cgroup_root: &Path) -> Option<u64> {
    let system = mem_available(proc);
    let groups = cgroup_headroom(proc, cgroup_root);
    match (system, groups) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn mem_available(proc: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(proc.join("meminfo")).ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// The tightest headroom along the daemon's cgroup path, v2 and v1 both.
fn cgroup_headroom(proc: &Path, root: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(proc.join("self/cgroup")).ok()?;
    let mut best: Option<u64> = None;
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let (base, limit, usage) = if controllers.is_empty() {
            (root.to_path_buf(), "memory.max", "memory.current")
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                root.join("memory"),
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        } else {
            continue;
        };
        for dir in ancestors(&base, path) {
            // "max" (v2) does not parse: no limit here.
            if let (Some(max), Some(used)) = (read_u64(&dir.join(limit)), read_u64(&dir.join(usage)))
                // v1 writes "no limit" as a page-rounded i64::MAX.
                && max < 1 << 60
            {
                let room = max.saturating_sub(used);
                best = Some(best.map_or(room, |b| b.min(room)));
            }
        }
    }
    best
}

/// `base/a/b/c`, `base/a/b`, `base/a` for the cgroup path `/a/b/c`.
fn ancestors(base: &Path, path: &str) -> Vec<PathBuf> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != "..")
        .collect();
    (1..=parts.len())
        .rev()
        .map(|n| parts[..n].iter().fold(base.to_path_buf(), |d, p| d.join(p)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(p: &Path, text: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn a_v2_limit_up_the_tree_binds_when_tighter_than_the_system() {
        let t = tempfile::tempdir().unwrap();
        let (proc, cg) = (t.path().join("proc"), t.path().join("cg"));
        write(
            &proc.join("meminfo"),
            "MemTotal: 8000000 kB\nMemAvailable: 4000000 kB\n",
        );
        write(
            &proc.join("self/cgroup"),
            "0::/system.slice/uplinkd.service\n",
        );
        let svc = cg.join("system.slice/uplinkd.service");
        write(&svc.join("memory.max"), "max\n");
        write(&svc.join("memory.current"), "1000\n");
        write(&cg.join("system.slice/memory.max"), "150000000\n");
        write(&cg.join("system.slice/memory.current"), "50000000\n");
        assert_eq!(available_in(&proc, &cg), Some(100_000_000));
    }

    #[test]
    fn a_v1_memory_limit_counts_and_unlimited_does_not() {
        let t = tempfile::tempdir().unwrap();
        let (proc, cg) = (t.path().join("proc"), t.path().join("cg"));
        write(&proc.join("meminfo"), "MemAvailable: 4000000 kB\n");
        write(
            &proc.join("self/cgroup"),
            "5:cpu:/x\n4:memory:/jobs/uplinkd\n0::/\n",
        );
        let g = cg.join("memory/jobs/uplinkd");
        write(&g.join("memory.limit_in_bytes"), "67108864\n");
        write(&g.join("memory.usage_in_bytes"), "20000000\n");
        write(
            &cg.join("memory/jobs/memory.limit_in_bytes"),
            "9223372036854771712\n",
        );
        write(&cg.join("memory/jobs/memory.usage_in_bytes"), "900000000\n");
        assert_eq!(available_in(&proc, &cg), Some(67_108_864 - 20_000_000));
    }

    #[test]
    fn without_cgroup_limits_the_system_figure_stands() {
        let t = tempfile::tempdir().unwrap();
        let proc = t.path().join("proc");
        write(&proc.join("meminfo"), "MemAvailable: 1000 kB\n");
        assert_eq!(available_in(&proc, &t.path().join("none")), Some(1_024_000));
    }
}

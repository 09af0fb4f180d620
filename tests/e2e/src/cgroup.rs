//! A memory cgroup to run a process under a limit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A memory cgroup with a limit, for running a process under it (as systemd's
/// `MemoryMax=` or a container would). cgroup v2 where the memory controller lives there,
/// else the v1 memory hierarchy. Removed on drop, its processes killed first.
pub struct MemCgroup {
    pub dir: PathBuf,
}

impl MemCgroup {
    pub fn new(name: &str, limit: u64) -> MemCgroup {
        let v2 = Path::new("/sys/fs/cgroup");
        let v2_memory = std::fs::read_to_string(v2.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let (dir, limit_file) = if v2_memory {
            // Children of the root get the memory controller only when the root hands it down.
            let _ = std::fs::write(v2.join("cgroup.subtree_control"), "+memory");
            (v2.join(name), "memory.max")
        } else {
            (v2.join("memory").join(name), "memory.limit_in_bytes")
        };
        std::fs::create_dir_all(&dir).expect("create the cgroup (tests run as root)");
        std::fs::write(dir.join(limit_file), limit.to_string()).expect("set the memory limit");
        MemCgroup { dir }
    }

    /// `cmd`, started inside this cgroup (it joins before `exec`, so all it allocates counts).
    pub fn wrap(&self, cmd: &Command) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(self.dir.join("cgroup.procs"))
            .arg(cmd.get_program())
            .args(cmd.get_args());
        c
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            let pids = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for pid in pids
                .split_whitespace()
                .filter_map(|p| rustix::process::Pid::from_raw(p.parse().ok()?))
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

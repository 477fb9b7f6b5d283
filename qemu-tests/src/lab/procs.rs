//! Finding the lab's processes by their command line, for `status` (QEMU's PID: the
//! harness's `Vm` does not expose it) and for `down` after a supervisor crash, when the
//! lab's processes must be found without their parent. A process belongs to a lab when an
//! argument names a path inside the lab (its disk, its config, its VM directory).

/// PIDs of processes with an argument containing `needle`, in ascending order.
pub fn with_arg(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    c.split(|&b| b == 0)
                        .any(|arg| String::from_utf8_lossy(arg).contains(needle))
                })
                .unwrap_or(false)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Whether process `pid` exists (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            // The state follows the parenthesised command name.
            s.rsplit(')').next().map(|r| r.trim_start().chars().next()) != Some(Some('Z'))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_child_by_argument_and_sees_it_go() {
        use std::os::unix::process::CommandExt;
        let marker = format!("cairn-procs-test-{}", std::process::id());
        let mut child = std::process::Command::new("sleep")
            .arg0(&marker)
            .arg("30")
            .spawn()
            .unwrap();
        // Until the child has exec'd, its command line is still ours: poll.
        let start = std::time::Instant::now();
        while with_arg(&marker).is_empty() && start.elapsed().as_secs() < 10 {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(with_arg(&marker), vec![child.id()]);
        assert!(alive(child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!alive(child.id()));
        assert!(with_arg(&marker).is_empty());
    }
}

//! Child processes that end with their test.
//!
//! Every peer a test starts is its direct child and must be gone when the test ends, passed or
//! panicked: PID 1 on the lab machines reaps no orphans (LAB.md), and a peer left running
//! holds ports, files and CPU of the next tests. Killing the child alone is not enough when it
//! started processes of its own: `faketime` forks the program it wraps and dies on SIGTERM
//! without passing it on, chromedriver starts Chromium, socat forks a relay per connection,
//! systemd-nspawn is the parent of a whole container. So [`ChildGuard`] stops the child's tree
//! of descendants (found through `/proc/PID/task/TID/children`), innermost first, so that a
//! wrapper waiting for its child reaps it instead of leaving a zombie.
//!
//! The child stays in the test's process group rather than getting one of its own: nextest
//! kills a hung test's process group on timeout, and children in it go too, even though no
//! destructor runs then.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

/// A child process (and everything it started) stopped and reaped when dropped, also while the
/// test unwinds from a panic. By default dropping kills (SIGKILL);
/// [`ChildGuard::with_grace`] makes it terminate like a service manager.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    grace: Option<Duration>,
    log: Option<PathBuf>,
}

impl ChildGuard {
    /// Starts `cmd`.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Self> {
        Ok(Self::new(cmd.spawn()?))
    }

    /// Guards a child started elsewhere.
    pub fn new(child: Child) -> Self {
        Self {
            child,
            grace: None,
            log: None,
        }
    }

    /// Dropping the guard [terminates](ChildGuard::terminate) with this grace instead of
    /// killing: for daemons whose shutdown path is under test.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    /// The file the child logs to: printed to standard error when the guard is dropped while
    /// the test panics, so a failure shows what the peer said.
    pub fn with_log(mut self, log: impl Into<PathBuf>) -> Self {
        self.log = Some(log.into());
        self
    }

    /// The child's process ID.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child itself (to take its pipes).
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Whether the child has exited, and how (reaping it if so).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("polling a child process")
    }

    /// Stops the child as systemd stops a service: SIGTERM to its descendants, then to the
    /// child itself once they are gone (a wrapper such as `faketime` or `env` has exited on
    /// its own by then), each step waiting up to `grace`; SIGKILL to whatever is left.
    pub fn terminate(&mut self, grace: Duration) {
        if self.try_wait().is_some() {
            return;
        }
        let descendants = descendants(self.id());
        signal_all(&descendants, Signal::TERM);
        let deadline = Instant::now() + grace;
        while descendants.iter().any(|&p| running(p)) && Instant::now() < deadline {
            std::thread::sleep(STEP);
        }
        if self.try_wait().is_none() {
            signal_all(&[self.id()], Signal::TERM);
            let deadline = Instant::now() + grace;
            while self.try_wait().is_none() && Instant::now() < deadline {
                std::thread::sleep(STEP);
            }
        }
        let left: Vec<u32> = descendants.into_iter().filter(|&p| running(p)).collect();
        signal_all(&left, Signal::KILL);
        self.kill();
    }

    /// Kills the child and its descendants (SIGKILL, innermost first) and reaps the child.
    /// The descendants get a moment to be reaped by their parents before the child goes, so a
    /// wrapper that waits for its program leaves no zombie behind.
    pub fn kill(&mut self) {
        if self.try_wait().is_none() {
            let descendants = descendants(self.id());
            signal_all(&descendants, Signal::KILL);
            let deadline = Instant::now() + REAP;
            while descendants.iter().any(|&p| exists(p)) && Instant::now() < deadline {
                std::thread::sleep(STEP);
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        match self.grace {
            Some(grace) => self.terminate(grace),
            None => self.kill(),
        }
        if let Some(log) = self.log.as_ref().filter(|_| std::thread::panicking()) {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            eprintln!("--- log of {} ---\n{text}", log.display());
        }
    }
}

/// How often a stopping process is looked at.
const STEP: Duration = Duration::from_millis(20);

/// How long killed descendants may take to be reaped by their parents.
const REAP: Duration = Duration::from_secs(1);

/// Every process below `pid`, parents before their children.
fn descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut next = 0;
    let mut parent = pid;
    loop {
        // A process's children are listed per thread that forked them.
        let tasks = std::fs::read_dir(format!("/proc/{parent}/task"))
            .into_iter()
            .flatten();
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            found.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
        let Some(&p) = found.get(next) else {
            return found;
        };
        parent = p;
        next += 1;
    }
}

/// Sends `signal` to each of `pids`, innermost (last) first. A process that has gone already
/// is no error.
fn signal_all(pids: &[u32], signal: Signal) {
    for &pid in pids.iter().rev() {
        if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
            let _ = kill_process(pid, signal);
        }
    }
}

/// Whether `pid` exists, zombie or not (not yet reaped).
fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `pid` exists and is not a zombie (a zombie has ended; its parent reaps it).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // `pid (comm) state ...`: the command may hold spaces and parentheses.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wrapper that forks its program and dies on SIGTERM without passing it on (as
    /// `faketime` does): the program must not outlive the guard.
    #[test]
    fn a_wrapped_program_ends_with_its_wrapper() {
        let mut guard = ChildGuard::spawn(Command::new("sh").args([
            "-c",
            // `sleep &` then `wait`: sh forks and stays the parent, as a wrapper does.
            "sleep 300 & wait",
        ]))
        .unwrap();
        let shell = guard.id();
        let program = crate::poll("the wrapped sleep", Duration::from_secs(10), || {
            descendants(shell).first().copied()
        });
        guard.terminate(Duration::from_secs(5));
        assert!(!running(program), "sleep {program} outlived its wrapper");
        assert!(guard.try_wait().is_some());
    }

    /// A test that panics unwinds through the guard, which kills the tree.
    #[test]
    fn a_panicking_test_leaves_no_process_behind() {
        let seen = std::sync::Mutex::new(None);
        let failed = std::panic::catch_unwind(|| {
            let guard =
                ChildGuard::spawn(Command::new("sh").args(["-c", "sleep 300 & wait"])).unwrap();
            let shell = guard.id();
            let program = crate::poll("the wrapped sleep", Duration::from_secs(10), || {
                descendants(shell).first().copied()
            });
            *seen.lock().unwrap() = Some((shell, program));
            panic!("the test fails while its peer runs");
        });
        assert!(failed.is_err());
        let (shell, program) = seen.lock().unwrap().unwrap();
        assert!(
            !exists(program),
            "sleep {program} is left (a zombie at best)"
        );
        assert!(!running(shell));
    }
}

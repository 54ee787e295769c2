//! The child guard: a tiny process between the bridge and each stdio server, so that no server
//! (nor anything it starts) outlives the bridge.
//!
//! The bridge runs its own binary again as `portcullis child-guard --parent PID -- CMD…`. The
//! guard asks the kernel for SIGTERM when the bridge dies (`PR_SET_PDEATHSIG`, which must be
//! set inside the process it protects, hence a process of our own rather than a hook between
//! `fork` and `exec`), starts the server in a process group of its own and waits. When the
//! server exits, the guard kills what is left of its group and exits with the server's status;
//! when the guard is told to stop (SIGTERM, SIGINT, SIGHUP, or the bridge's death), it sends
//! SIGTERM to the whole group, SIGKILL after the grace, and exits. `npx`-style launchers that
//! start the real server as a grandchild are covered by the group.
//!
//! The guard's stdin, stdout and stderr are the server's: it never writes to stdout, and its
//! first line on stderr, [`PID_LINE_PREFIX`] then the server's pid, tells the bridge which
//! process to name in its logs.

use std::ffi::OsString;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

/// The start of the guard's first stderr line, followed by the server's pid.
pub const PID_LINE_PREFIX: &str = "portcullis child-guard: pid ";

/// Runs `command` guarded, as described in the module documentation; returns the exit code to
/// leave with. `parent` is the bridge's pid, to notice a bridge that died before the guard
/// asked to be told.
pub fn run(parent: u32, grace: Duration, command: &[OsString]) -> ExitCode {
    match guard(parent, grace, command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("portcullis child-guard: {e}");
            ExitCode::from(127)
        }
    }
}

fn guard(parent: u32, grace: Duration, command: &[OsString]) -> Result<u8, String> {
    let (program, args) = command.split_first().ok_or("no command to run")?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)
        .map_err(|e| format!("cannot ask for the parent-death signal: {e}"))?;
    // The bridge may have died before the request above: then nobody will send the signal.
    if nix::unistd::getppid() != Pid::from_raw(parent as i32) {
        return Err("the bridge exited before its child started".into());
    }
    let mut signals = SigSet::empty();
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        signals.add(signal);
    }
    // Blocked here and taken with sigwait below; the standard library gives the server a
    // clean signal mask again before it runs.
    signals
        .thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    let mut child = Command::new(program)
        .args(args)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.to_string_lossy()))?;
    let pid = child.id();
    eprintln!("{PID_LINE_PREFIX}{pid}");
    let group = Pid::from_raw(pid as i32);
    loop {
        let signal = signals
            .wait()
            .map_err(|e| format!("cannot wait for signals: {e}"))?;
        if signal == Signal::SIGCHLD {
            if exited(group) {
                // The exited server still holds its group id until it is reaped: kill what it
                // left behind first, so the id cannot have been reused.
                let _ = killpg(group, Signal::SIGKILL);
                return Ok(code(&mut child));
            }
            continue;
        }
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !exited(group) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = killpg(group, Signal::SIGKILL);
        return Ok(code(&mut child));
    }
}

/// True when the server has exited, without reaping it.
fn exited(pid: Pid) -> bool {
    matches!(
        waitid(
            Id::Pid(pid),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT
        ),
        Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(_)
    )
}

/// Reaps the server and turns its status into an exit code the way shells do.
fn code(child: &mut Child) -> u8 {
    match child.wait() {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => code as u8,
            (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
            (None, None) => 1,
        },
        Err(_) => 1,
    }
}

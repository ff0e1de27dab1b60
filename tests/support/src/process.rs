//! Child processes that cannot outlive the test process.
//!
//! Two walls: every child is spawned with `PR_SET_PDEATHSIG(SIGKILL)` so a test
//! binary that dies hard (SIGKILL, abort) takes its services with it, and an
//! `atexit` hook kills and reaps them and removes their directories on a normal
//! exit (the test harness ends with `exit()`, which never runs destructors of
//! statics).
//!
//! The parent-death signal fires when the *thread* that forked exits, and the
//! test harness runs each test on a short-lived thread; so children are forked
//! from one spawner thread that lives as long as the process.

use std::io;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

struct Owned {
    child: Child,
    dirs: Vec<PathBuf>,
}

static OWNED: Mutex<Vec<Owned>> = Mutex::new(Vec::new());

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("test-service-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_with_pdeathsig(&mut cmd));
                }
            })
            .expect("spawn the service spawner thread");
        register_atexit();
        Mutex::new(tx)
    })
}

#[allow(unsafe_code)]
fn spawn_with_pdeathsig(cmd: &mut Command) -> io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated
    // between fork and exec. The setting survives exec, and is applied after
    // Command's setuid, which would otherwise clear it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may already have died between fork and prctl.
            if libc::getppid() == 1 {
                return Err(io::Error::other("parent exited before exec"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

#[allow(unsafe_code)]
fn register_atexit() {
    extern "C" fn on_exit() {
        cleanup_all();
    }
    // SAFETY: registering a plain extern "C" fn with no captured state.
    unsafe {
        libc::atexit(on_exit);
    }
}

/// Kills every owned child (SIGTERM, then SIGKILL after a grace period) and
/// removes its directories.
pub fn cleanup_all() {
    let owned: Vec<Owned> = match OWNED.lock() {
        Ok(mut guard) => std::mem::take(&mut *guard),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    for mut o in owned {
        stop_child(&mut o.child, Duration::from_secs(5));
        for d in &o.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL; always reaps.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    send_signal(child.id(), libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[allow(unsafe_code)]
pub fn send_signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) on a pid we spawned; no memory is touched.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Spawns `cmd` so that it dies with this process, and hands ownership to the
/// exit hook together with `dirs` (removed after the child is gone).
/// Returns the child's pid.
pub fn spawn_owned(cmd: Command, dirs: Vec<PathBuf>) -> io::Result<u32> {
    let (tx, rx) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| io::Error::other("service spawner lock poisoned"))?
        .send((cmd, tx))
        .map_err(|_| io::Error::other("service spawner thread is gone"))?;
    let child = rx
        .recv()
        .map_err(|_| io::Error::other("service spawner thread is gone"))??;
    let pid = child.id();
    OWNED
        .lock()
        .map_err(|_| io::Error::other("owned-process lock poisoned"))?
        .push(Owned { child, dirs });
    Ok(pid)
}

/// Whether an owned child is still running; `Some(status)` once it exited.
pub fn exit_status(pid: u32) -> Option<std::process::ExitStatus> {
    let mut guard = OWNED.lock().ok()?;
    let o = guard.iter_mut().find(|o| o.child.id() == pid)?;
    o.child.try_wait().ok().flatten()
}

/// Stops one owned child now (used by tests that take a service away).
pub fn stop_owned(pid: u32) {
    let taken = OWNED.lock().ok().and_then(|mut g| {
        let i = g.iter().position(|o| o.child.id() == pid)?;
        Some(g.swap_remove(i))
    });
    if let Some(mut o) = taken {
        stop_child(&mut o.child, Duration::from_secs(5));
        for d in &o.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

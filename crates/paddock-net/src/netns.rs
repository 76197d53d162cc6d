//! Named network namespaces (`/run/netns/<name>`, as iproute2 keeps them)
//! and sockets opened inside one. A socket belongs to the namespace it was
//! made in for its whole life, so only its creation runs on a short-lived
//! thread that has entered the namespace; the caller's threads never move.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

/// Where named namespaces are mounted.
pub const NETNS_DIR: &str = "/run/netns";

pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn errno(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Runs `f` on a new thread inside the namespace at `ns`.
pub fn run_in<T: Send>(ns: &Path, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let file = File::open(ns)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(errno)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("thread in network namespace panicked")))
    })
}

/// Makes the named namespace if it does not exist. Idempotent.
pub fn ensure(name: &str) -> io::Result<PathBuf> {
    let p = path(name);
    if is_mounted(&p) {
        return Ok(p);
    }
    std::fs::create_dir_all(NETNS_DIR)?;
    File::create(&p)?;
    let target = p.clone();
    std::thread::scope(|s| {
        s.spawn(|| -> io::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(errno)?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(errno)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("netns thread panicked")))
    })?;
    tracing::info!(netns = name, "created network namespace");
    Ok(p)
}

fn is_mounted(p: &Path) -> bool {
    // A mounted namespace file is an nsfs inode: its device differs from /run's.
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(p), p.parent().map(std::fs::metadata)) {
        (Ok(f), Some(Ok(d))) => f.dev() != d.dev(),
        _ => false,
    }
}

/// Unmounts and removes the named namespace (it goes away with its last
/// socket or process). Idempotent.
pub fn remove(name: &str) -> io::Result<()> {
    let p = path(name);
    if !p.exists() {
        return Ok(());
    }
    if is_mounted(&p) {
        umount2(&p, MntFlags::MNT_DETACH).map_err(errno)?;
    }
    std::fs::remove_file(&p)?;
    tracing::info!(netns = name, "removed network namespace");
    Ok(())
}

/// Names of the namespaces that start with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

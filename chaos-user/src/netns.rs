//! Entering a named network namespace, as `ip netns exec` does.

use std::{fs::File, io, os::fd::AsRawFd, path::PathBuf};

use thiserror::Error;

/// Where iproute2 keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("invalid network namespace name '{0}'")]
    InvalidName(String),
    #[error(
        "network namespace '{name}' not found (no {path}; create it with `ip netns add {name}`)"
    )]
    NotFound { name: String, path: String },
    #[error("entering network namespace '{0}' needs CAP_SYS_ADMIN")]
    Permission(String),
    #[error("entering network namespace '{name}': {source}")]
    Io {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Moves the calling thread into namespace `name`. Call it before any other thread starts:
/// threads spawned later inherit it, threads already running do not.
pub fn enter(name: &str) -> Result<(), NetnsError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(NetnsError::InvalidName(name.to_owned()));
    }
    let path: PathBuf = [NETNS_RUN_DIR, name].iter().collect();
    let file = File::open(&path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => NetnsError::NotFound {
            name: name.to_owned(),
            path: path.display().to_string(),
        },
        _ => NetnsError::Io {
            name: name.to_owned(),
            source,
        },
    })?;
    // SAFETY: a valid open fd; setns only changes this thread's namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let source = io::Error::last_os_error();
        return Err(match source.raw_os_error() {
            Some(libc::EPERM) => NetnsError::Permission(name.to_owned()),
            // EINVAL: the file exists but is not a network namespace.
            _ => NetnsError::Io {
                name: name.to_owned(),
                source,
            },
        });
    }
    Ok(())
}

/// The index of interface `name` in the current namespace, if it exists.
pub fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

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
    enter_file(&file, name)
}

/// The index of interface `name` in the current namespace, if it exists.
pub fn if_index(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// Moves the calling thread into the network namespace open as `file` (a workload's, from
/// `crate::target`); as [`enter`], before any other thread starts.
pub fn enter_file(file: &File, what: &str) -> Result<(), NetnsError> {
    // SAFETY: a valid open fd; setns only changes this thread's namespace.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let source = io::Error::last_os_error();
        return Err(match source.raw_os_error() {
            Some(libc::EPERM) => NetnsError::Permission(what.to_owned()),
            _ => NetnsError::Io {
                name: what.to_owned(),
                source,
            },
        });
    }
    Ok(())
}

/// The interface of the current namespace's IPv4 default route (IPv6's if it has none): the
/// one a workload talks to the world through (`eth0` in nearly every container).
pub fn default_route_iface() -> io::Result<Option<String>> {
    use netlink_packet_route::{
        AddressFamily, RouteNetlinkMessage,
        route::{RouteAttribute, RouteMessage},
    };
    let mut rtnl = crate::rtnl::Rtnl::open()?;
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut request = RouteMessage::default();
        request.header.address_family = family;
        let routes = rtnl.dump(RouteNetlinkMessage::GetRoute(request))?;
        for message in routes {
            let RouteNetlinkMessage::NewRoute(route) = message else {
                continue;
            };
            if route.header.destination_prefix_length != 0 {
                continue;
            }
            let oif = route.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            });
            if let Some(name) = oif.and_then(if_name) {
                return Ok(Some(name));
            }
        }
    }
    Ok(None)
}

/// The name of interface `index` in the current namespace.
fn if_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: a buffer of IF_NAMESIZE bytes, as if_indextoname wants.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    name.to_str().ok().map(str::to_owned)
}
